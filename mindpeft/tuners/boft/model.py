"""``BOFTModel``: injects BOFT layers into a Cell model."""
from ...utils.constants import TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING
from ..oft.model import OFTModel
from .layer import BOFTLayer, dispatch_boft_layer


class BOFTModel(OFTModel):
    """Creates a butterfly orthogonal finetuning model from a base model (see :class:`BOFTConfig`)."""

    prefix = "boft_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING
    layer_cls = BOFTLayer
    dispatch = staticmethod(dispatch_boft_layer)
