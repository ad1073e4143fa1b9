"""LoRA (and DoRA) on quantized linear layers, HF peft's ``lora.Linear8bitLt`` / ``lora.Linear4bit``.

The forward is the plain LoRA layer's (the quantized base dequantizes inside its own ``construct``). DoRA takes
its weight norm from the dequantized weight. Merging dequantizes the base weight, adds the update and quantizes
the sum again (with HF peft's rounding warning); unmerging subtracts it the same way, so a merge/unmerge round trip
moves the base weight by up to one quantization step.
"""
import warnings

import numpy as np
from mindspore import Parameter, Tensor, ops

from ..models.modeling_utils import write_parameter
from ..tuners.lora.layer import LORA_LAYERS, Linear as LoraLinear
from .layers import Linear4bit, Linear8bitLt


class QuantizedLoraLinear(LoraLinear):
    """LoRA around :class:`~mindpeft.quantization.layers.Linear8bitLt` or
    :class:`~mindpeft.quantization.layers.Linear4bit`; the adapter weights (and file keys) are a plain LoRA
    linear layer's. ``float_class`` is the class it becomes when its base is dequantized."""

    float_class = LoraLinear

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        init = config.init_lora_weights
        if isinstance(init, str) and init not in ("gaussian", "orthogonal"):
            raise ValueError(f"init_lora_weights={init!r} computes the adapter from the base weight and rewrites it, "
                             f"but the base layer is {self.get_base_layer().bits}-bit quantized: initialise on the "
                             "float model and quantize the result (for LoftQ on a quantized model use "
                             "mindpeft.quantization.replace_lora_weights_loftq)")
        super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)

    def _finish_adapter(self, adapter_name):
        if self.use_dora[adapter_name]:
            weight = self._unmerged(self.get_base_layer().dequantize_numpy())
            norm = self._weight_norm(weight + self.dora_delta(adapter_name))
            self.lora_magnitude_vector[adapter_name] = Parameter(Tensor(norm.astype(np.float32)))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def _rewrite_base(self, adapter_name, merging, safe_merge=False):
        base = self.get_base_layer()
        action = "Merge" if merging else "Unmerge"
        warnings.warn(f"{action} lora module to {base.bits}-bit linear may get different generations due to "
                      "rounding errors.")
        weight = base.dequantize_numpy()
        weight = self._merged_weight(adapter_name, weight) if merging else self._unmerged_weight(adapter_name, weight)
        bias = self._bias_after(adapter_name, 1 if merging else -1)
        if safe_merge and not (np.isfinite(weight).all() and (bias is None or np.isfinite(bias).all())):
            self._dora_norms.pop(adapter_name, None)
            raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter_name} seems to be broken")
        base.quantize_weight(weight)
        if bias is not None:
            write_parameter(base.bias, bias)

    def merge(self, safe_merge=False, adapter_names=None):
        """Dequantize the base weight, add the adapters and quantize the result again."""
        for name in self.check_adapters_to_merge(adapter_names):
            self._rewrite_base(name, True, safe_merge)
            self.merged_adapters.append(name)

    def unmerge(self):
        """Dequantize the base weight, subtract the merged adapters and quantize the result again."""
        while self.merged_adapters:
            self._rewrite_base(self.merged_adapters.pop(), False)

    def _dora(self, name, x, result):
        """HF peft's DoRA forward (see :meth:`mindpeft.tuners.lora.layer.Linear._dora`), the norm taken of the
        dequantized base weight."""
        lora_a, lora_b, scaling = self.lora_A[name], self.lora_B[name], self.scaling[name]
        weight = self.base_layer.dequantized_weight() + scaling * ops.matmul(lora_b.weight, lora_a.weight)
        norm = ops.sqrt((weight * weight).sum(axis=1))
        magnitude = getattr(self.lora_magnitude_vector, name) / ops.stop_gradient(norm)
        dropout = self.lora_dropout[name]
        base_result = result
        if self.training and dropout.p > 0:
            x = dropout(x)
            base_result = self.base_layer(x)
        if self.base_layer.bias is not None:
            base_result = base_result - self.base_layer.bias
        return result + (magnitude - 1) * base_result + magnitude * lora_b(lora_a(x)) * scaling


LORA_LAYERS[Linear8bitLt] = QuantizedLoraLinear
LORA_LAYERS[Linear4bit] = QuantizedLoraLinear
