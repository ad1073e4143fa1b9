"""``HRAModel``: injects HRA layers into a Cell model."""
from mindspore import nn

from ...models.layers import Linear as LinearLayer
from ...utils.constants import TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING
from ...utils.other import replace_child
from ..tuners_utils import BaseTuner, BaseTunerLayer
from .layer import HRAConv2d, HRALayer, HRALinear


class HRAModel(BaseTuner):
    """Creates an HRA model from a base model (see :class:`HRAConfig`)."""

    prefix = "hra_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_HRA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if isinstance(target, HRALayer):
            target.update_layer(adapter_name, config.r, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, (LinearLayer, nn.Dense)):
            layer = HRALinear(target, adapter_name, config.r, config)
        elif isinstance(base, nn.Conv2d):
            layer = HRAConv2d(target, adapter_name, config.r, config)
        else:
            raise TypeError(f"Target module {current_key!r} of type {type(base).__name__} is not supported. "
                            "Currently, only Linear/mindspore.nn.Dense and mindspore.nn.Conv2d layers are supported.")
        replace_child(parent, target_name, layer)
