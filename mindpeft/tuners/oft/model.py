"""``OFTModel``: injects OFT layers into a Cell model."""
from ...utils.constants import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING
from ...utils.other import replace_child
from ..tuners_utils import BaseTuner
from .layer import OFTLayer, dispatch_oft_layer


class OFTModel(BaseTuner):
    """Creates an orthogonal finetuning model from a base model (see :class:`OFTConfig`); BOFT reuses it."""

    prefix = "oft_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING
    layer_cls = OFTLayer
    dispatch = staticmethod(dispatch_oft_layer)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if isinstance(target, self.layer_cls):
            target.update_layer(adapter_name, config)
        else:
            replace_child(parent, target_name, self.dispatch(target, adapter_name, config))
