"""``LoHaModel``: injects LoHa layers into a Cell model."""
from mindspore import nn

from ...models.layers import Linear as LinearLayer
from ...utils.constants import TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING
from ..lycoris_utils import LycorisTuner
from .layer import Conv1d, Conv2d, Linear, LoHaLayer


class LoHaModel(LycorisTuner):
    """Creates a LoHa model from a base model (see :class:`LoHaConfig`)."""

    prefix = "hada_"
    layer_cls = LoHaLayer
    layers_mapping = {LinearLayer: Linear, nn.Dense: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d}
    target_module_mapping = TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING
