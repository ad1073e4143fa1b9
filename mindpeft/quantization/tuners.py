"""IA3 and AdaLoRA on quantized linear layers (HF peft's ``ia3.Linear8bitLt/Linear4bit`` and
``adalora.SVDLinear8bitLt/SVDLinear4bit``): the float layers' forward around the quantized base, no merging
(HF peft refuses it too).

IA3 and AdaLoRA have no layer registry like LoRA's ``LORA_LAYERS``; :func:`_dispatch_quantized_first` puts these
classes in front of their dispatch functions (``mindpeft.tuners.ia3.model.dispatch_ia3_layer``,
``mindpeft.tuners.adalora.model.dispatch_adalora_layer``).
"""
from mindspore import nn

from ..tuners.adalora import model as adalora_model
from ..tuners.adalora.layer import SVDLinear
from ..tuners.ia3 import model as ia3_model
from ..tuners.ia3.layer import Linear as IA3Linear
from ..tuners.tuners_utils import ParameterDict
from .layers import QuantizedLinear


class QuantizedIA3Linear(IA3Linear):
    """IA3 around a quantized linear layer; ``ia3_l`` is (1, in) for feed-forward layers and (out, 1) otherwise."""

    float_class = IA3Linear

    def __init__(self, base_layer, adapter_name, is_feedforward, init_ia3_weights=True):
        nn.Cell.__init__(self)
        self._init_tuner_layer(base_layer)
        self.ia3_l = ParameterDict()
        self.is_feedforward = is_feedforward
        self.fan_in_fan_out = False
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.update_layer(adapter_name, init_ia3_weights)

    def merge(self, safe_merge=False, adapter_names=None):
        if self.check_adapters_to_merge(adapter_names):
            raise ValueError(f"Cannot merge ia3 layers when the model is loaded in {self.get_base_layer().bits}-bit "
                             "mode")


class QuantizedSVDLinear(SVDLinear):
    """AdaLoRA around a quantized linear layer: ``lora_A`` (r, in), ``lora_E`` (r, 1), ``lora_B`` (out, r)."""

    float_class = SVDLinear

    def __init__(self, base_layer, adapter_name, r, lora_alpha, lora_dropout=0.0, init_lora_weights=True):
        nn.Cell.__init__(self)
        self._init_tuner_layer(base_layer)
        self.r, self.lora_alpha, self.scaling = {}, {}, {}
        self.lora_dropout = nn.CellDict()
        self.lora_A, self.lora_B, self.lora_E = ParameterDict(), ParameterDict(), ParameterDict()
        self.ranknum = ParameterDict()
        self.fan_in_fan_out = False
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights)

    def merge(self, safe_merge=False, adapter_names=None):
        if self.check_adapters_to_merge(adapter_names):
            raise NotImplementedError(f"Merging AdaLoRA into a {self.get_base_layer().bits}-bit quantized layer is not "
                                      "supported (nor in HF peft); dequantize the model first "
                                      "(mindpeft.quantization.dequantize_model)")


def _ia3_layer(target, adapter_name, config, is_feedforward):
    config.fan_in_fan_out = False
    return QuantizedIA3Linear(target, adapter_name, is_feedforward, config.init_ia3_weights)


def _adalora_layer(target, adapter_name, config, r, lora_alpha):
    config.fan_in_fan_out = False
    return QuantizedSVDLinear(target, adapter_name, r, lora_alpha, config.lora_dropout, config.init_lora_weights)


def _dispatch_quantized_first(module, name, build):
    """Make ``module.<name>`` (a tuner's dispatch function) wrap quantized linear layers with ``build``."""
    original = getattr(module, name)
    if getattr(original, "quantized_layers_first", False):
        return

    def dispatch(target, adapter_name, config, *args):
        if isinstance(target, QuantizedLinear):
            return build(target, adapter_name, config, *args)
        return original(target, adapter_name, config, *args)

    dispatch.quantized_layers_first = True
    setattr(module, name, dispatch)


_dispatch_quantized_first(ia3_model, "dispatch_ia3_layer", _ia3_layer)
_dispatch_quantized_first(adalora_model, "dispatch_adalora_layer", _adalora_layer)
