"""``LoHaModel``: injects LoHa layers into a Cell model."""
from ...utils.constants import TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING
from ..lycoris_utils import LycorisTuner
from .layer import LoHaLayer


class LoHaModel(LycorisTuner):
    """Creates a LoHa model from a base model (see :class:`LoHaConfig`)."""

    prefix = "hada_"
    layer_cls = LoHaLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING
