"""``FourierFTModel``: injects FourierFT layers into a Cell model."""
import re
import warnings

from mindspore import nn

from ...models.layers import Conv1D, Linear as LinearLayer
from ...utils.constants import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING
from ...utils.other import replace_child
from ..tuners_utils import BaseTuner, BaseTunerLayer
from .layer import FourierFTLinear


def pattern_value(pattern, key, default):
    """``pattern``'s value for the module ``key``: the first regex that ends ``key`` after a dot, else ``key``
    itself, else ``default`` (HF peft's rule for ``n_frequency_pattern``)."""
    match = next((p for p in pattern if re.match(rf".*\.{p}$", key)), key)
    return pattern.get(match, default)


class FourierFTModel(BaseTuner):
    """Creates a FourierFT model from a base model (see :class:`FourierFTConfig`)."""

    prefix = "fourierft_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        n_frequency = pattern_value(config.n_frequency_pattern, current_key, config.n_frequency)
        if isinstance(target, FourierFTLinear):
            target.update_layer(adapter_name, n_frequency, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (LinearLayer, nn.Dense, Conv1D)):
            raise TypeError(f"Target module {current_key!r} of type {type(base).__name__} is not supported. "
                            "Currently, only Linear/mindspore.nn.Dense and Conv1D layers are supported.")
        if isinstance(base, Conv1D) and not config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out "
                          "to True.")
            config.fan_in_fan_out = True
        elif not isinstance(base, Conv1D) and config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to True but the target module is a Linear layer. Setting "
                          "fan_in_fan_out to False.")
            config.fan_in_fan_out = False
        replace_child(parent, target_name, FourierFTLinear(target, adapter_name, n_frequency, config))
