"""IA3 layers: a learned vector rescales a linear layer's output, or its input for feed-forward layers."""
import numpy as np
from mindspore import Parameter, Tensor, nn

from ...models.layers import Conv1D, Linear as LinearLayer
from ...models.modeling_utils import write_parameter
from ..tuners_utils import BaseTunerLayer, ParameterDict, base_weight, layer_features


class IA3Layer(BaseTunerLayer):
    adapter_layer_names = ("ia3_l",)
    other_param_names = ()


class Linear(nn.Cell, IA3Layer):
    """IA3 around ``Linear``/``mindspore.nn.Dense``/``Conv1D``; ``ia3_l`` is (1, in) for feed-forward layers and
    (out, 1) otherwise, HF peft's shapes."""

    def __init__(self, base_layer, adapter_name, is_feedforward, fan_in_fan_out=False, init_ia3_weights=True):
        super().__init__()
        self._init_tuner_layer(base_layer)
        self.ia3_l = ParameterDict()
        self.is_feedforward = is_feedforward
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = layer_features(base_layer)
        self.update_layer(adapter_name, init_ia3_weights)

    def update_layer(self, adapter_name, init_ia3_weights):
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        values = np.ones(shape, np.float32) if init_ia3_weights else np.random.normal(0, 0.02, shape)
        self.ia3_l[adapter_name] = Parameter(Tensor(values.astype(np.float32)))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def _scaling(self, adapter_name):
        """The vector shaped to multiply the base weight."""
        vector = self.ia3_l[adapter_name].asnumpy()
        return vector.T if self.fan_in_fan_out else vector

    def merge(self, safe_merge=False, adapter_names=None):
        base = self.get_base_layer()
        weight = base_weight(base)
        for name in self.check_adapters_to_merge(adapter_names):
            merged = weight.asnumpy() * self._scaling(name)
            if safe_merge and not np.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
            write_parameter(weight, merged)
            if not self.is_feedforward and getattr(base, "bias", None) is not None:
                bias = base.bias
                write_parameter(bias, bias.asnumpy() * self.ia3_l[name].asnumpy().reshape(bias.shape))
            self.merged_adapters.append(name)

    def unmerge(self):
        base = self.get_base_layer()
        weight = base_weight(base)
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            write_parameter(weight, weight.asnumpy() / (self._scaling(name) + 1e-8))
            if not self.is_feedforward and getattr(base, "bias", None) is not None:
                bias = base.bias
                scale = self.ia3_l[name].asnumpy().reshape(bias.shape) + 1e-8
                write_parameter(bias, bias.asnumpy() / scale)

    def construct(self, x):
        if self.disable_adapters or self.merged_adapters or not self._active_in_layer:
            return self.base_layer(x)
        scaling = None
        for name in self._active_in_layer:
            vector = getattr(self.ia3_l, name).view(-1)
            scaling = vector if scaling is None else scaling * vector
        if self.is_feedforward:
            return self.base_layer(x * scaling.astype(x.dtype))
        result = self.base_layer(x)
        return result * scaling.astype(result.dtype)


def dispatch_ia3_layer(target, adapter_name, config, is_feedforward):
    if isinstance(target, Conv1D):
        config.fan_in_fan_out = True
        return Linear(target, adapter_name, is_feedforward, True, config.init_ia3_weights)
    if isinstance(target, (LinearLayer, nn.Dense)):
        config.fan_in_fan_out = False
        return Linear(target, adapter_name, is_feedforward, False, config.init_ia3_weights)
    raise ValueError(f"Target module {type(target).__name__} is not supported. Currently, only Linear/Dense and "
                     "Conv1D layers are supported.")
