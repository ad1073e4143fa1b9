"""``LoKrModel``: injects LoKr layers into a Cell model."""
from mindspore import nn

from ...models.layers import Linear as LinearLayer
from ...utils.constants import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING
from ..lycoris_utils import LycorisTuner
from .layer import Conv1d, Conv2d, Linear, LoKrLayer


class LoKrModel(LycorisTuner):
    """Creates a LoKr model from a base model (see :class:`LoKrConfig`)."""

    prefix = "lokr_"
    layer_cls = LoKrLayer
    layers_mapping = {LinearLayer: Linear, nn.Dense: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d}
    target_module_mapping = TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING
