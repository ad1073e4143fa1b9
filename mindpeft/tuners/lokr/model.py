"""``LoKrModel``: injects LoKr layers into a Cell model."""
from ...utils.constants import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING
from ..lycoris_utils import LycorisTuner
from .layer import LoKrLayer


class LoKrModel(LycorisTuner):
    """Creates a LoKr model from a base model (see :class:`LoKrConfig`)."""

    prefix = "lokr_"
    layer_cls = LoKrLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING
