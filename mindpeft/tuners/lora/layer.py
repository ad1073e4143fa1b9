"""LoRA layers: ``base(x) + B(A(dropout(x))) * scaling`` around linear, Conv1D and embedding layers."""
import math
import warnings

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ...models.layers import Conv1D, Dropout, Embedding as EmbeddingLayer, Linear as LinearLayer, linear
from ...models.modeling_utils import write_parameter
from ..tuners_utils import BaseTunerLayer, ParameterDict, base_weight, layer_features


def _param_from(array):
    return Parameter(Tensor(np.ascontiguousarray(array, dtype=np.float32)))


class LoraLayer(BaseTunerLayer):
    """State shared by the LoRA layers: ranks, alphas, scalings and dropouts keyed by adapter name."""

    adapter_layer_names = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout")

    def _init_lora(self, base_layer, fan_in_fan_out=False):
        self._init_tuner_layer(base_layer)
        self.r = {}
        self.lora_alpha = {}
        self.scaling = {}
        self.lora_dropout = nn.CellDict()
        self.lora_A = nn.CellDict()
        self.lora_B = nn.CellDict()
        self.lora_embedding_A = ParameterDict()
        self.lora_embedding_B = ParameterDict()
        self.fan_in_fan_out = fan_in_fan_out

    def _set_scaling(self, adapter_name, r, lora_alpha, use_rslora):
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r

    def set_scale(self, adapter_name, scale):
        """Multiply the adapter's base scaling ``alpha / r`` by ``scale``."""
        if adapter_name in self.scaling:
            self.scaling[adapter_name] = scale * self.lora_alpha[adapter_name] / self.r[adapter_name]

    def delta_weight(self, adapter_name):
        """The adapter's weight update as a numpy array shaped like the base weight."""
        raise NotImplementedError

    def merge(self, safe_merge=False, adapter_names=None):
        """Add the adapters' ``delta_weight`` into the base weight (checked for non-finite values if ``safe_merge``)."""
        weight = base_weight(self.get_base_layer())
        for name in self.check_adapters_to_merge(adapter_names):
            merged = weight.asnumpy() + self.delta_weight(name)
            if safe_merge and not np.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
            write_parameter(weight, merged)
            self.merged_adapters.append(name)

    def unmerge(self):
        """Subtract every merged adapter's ``delta_weight`` from the base weight."""
        weight = base_weight(self.get_base_layer())
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            restored = weight.asnumpy() - self.delta_weight(name)
            write_parameter(weight, restored)


class Linear(nn.Cell, LoraLayer):
    """LoRA around ``Linear``/``mindspore.nn.Dense`` (weight (out, in)) or GPT-2 ``Conv1D`` (weight (in, out),
    ``fan_in_fan_out=True``)."""

    def __init__(self, base_layer, adapter_name, r, lora_alpha, lora_dropout=0.0, fan_in_fan_out=False,
                 init_lora_weights=True, use_rslora=False):
        super().__init__()
        if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
            raise ValueError("LoRA cannot wrap a mindspore.nn.Dense that has an activation; split the activation "
                             "into its own Cell")
        self._init_lora(base_layer, fan_in_fan_out)
        self.in_features, self.out_features = layer_features(base_layer)
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora)

    def update_layer(self, adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora):
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.lora_dropout[adapter_name] = Dropout(lora_dropout)
        self.lora_A[adapter_name] = LinearLayer(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = LinearLayer(r, self.out_features, bias=False)
        self._set_scaling(adapter_name, r, lora_alpha, use_rslora)
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        self.set_adapter(self.active_adapters or (adapter_name,))

    def reset_lora_parameters(self, adapter_name, init_lora_weights):
        if init_lora_weights is False:
            return
        a = self.lora_A[adapter_name].weight
        if init_lora_weights == "gaussian":
            write_parameter(a, np.random.normal(0, 1.0 / self.r[adapter_name], a.shape))
        else:
            bound = 1.0 / math.sqrt(self.in_features)
            write_parameter(a, np.random.uniform(-bound, bound, a.shape))
        b = self.lora_B[adapter_name].weight
        write_parameter(b, np.zeros(b.shape, np.float32))

    def delta_weight(self, adapter_name):
        delta = self.lora_B[adapter_name].weight.asnumpy() @ self.lora_A[adapter_name].weight.asnumpy()
        delta = delta * self.scaling[adapter_name]
        return delta.T if self.fan_in_fan_out else delta

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        for name in self._active_in_layer:
            # Scaling the rank-r activations is cheaper than scaling the output.
            lora_out = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x)) * self.scaling[name])
            if lora_out.dtype != result.dtype:
                lora_out = lora_out.astype(result.dtype)
            result = result + lora_out
        return result


class Embedding(nn.Cell, LoraLayer):
    """LoRA around an embedding: ``lora_embedding_A`` (r, vocab) and ``lora_embedding_B`` (dim, r), HF's layout."""

    def __init__(self, base_layer, adapter_name, r, lora_alpha, lora_dropout=0.0, fan_in_fan_out=False,
                 init_lora_weights=True, use_rslora=False):
        super().__init__()
        self._init_lora(base_layer)
        self.num_embeddings, self.embedding_dim = base_weight(base_layer).shape
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora)

    def update_layer(self, adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora):
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.lora_dropout[adapter_name] = Dropout(lora_dropout)
        self.lora_embedding_A[adapter_name] = _param_from(np.random.normal(0, 1, (r, self.num_embeddings)))
        self.lora_embedding_B[adapter_name] = _param_from(np.random.normal(0, 1, (self.embedding_dim, r)))
        self._set_scaling(adapter_name, r, lora_alpha, use_rslora)
        if init_lora_weights is not False:
            a = self.lora_embedding_A[adapter_name]
            write_parameter(a, np.zeros(a.shape, np.float32))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def delta_weight(self, adapter_name):
        b = self.lora_embedding_B[adapter_name].asnumpy()
        a = self.lora_embedding_A[adapter_name].asnumpy()
        return (b @ a).T * self.scaling[adapter_name]

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        for name in self._active_in_layer:
            after_a = ops.gather(getattr(self.lora_embedding_A, name).T, x, 0)
            lora_out = linear(after_a * self.scaling[name], getattr(self.lora_embedding_B, name))
            result = result + lora_out.astype(result.dtype)
        return result


def dispatch_lora_layer(target, adapter_name, lora_config, r, lora_alpha):
    """The LoRA layer for ``target``; a clear error for layer types LoRA cannot wrap."""
    kwargs = dict(lora_dropout=lora_config.lora_dropout, init_lora_weights=lora_config.init_lora_weights,
                  use_rslora=lora_config.use_rslora)
    if isinstance(target, (EmbeddingLayer, nn.Embedding)):
        return Embedding(target, adapter_name, r, lora_alpha, **kwargs)
    if isinstance(target, Conv1D):
        lora_config.fan_in_fan_out = True  # Conv1D stores (in, out) weights; set silently, as documented
        return Linear(target, adapter_name, r, lora_alpha, fan_in_fan_out=True, **kwargs)
    if isinstance(target, (LinearLayer, nn.Dense)):
        if lora_config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to True but the target module is a Linear layer with (out, in) "
                          "weights. Setting fan_in_fan_out to False.")
            lora_config.fan_in_fan_out = False
        return Linear(target, adapter_name, r, lora_alpha, **kwargs)
    raise ValueError(f"Target module {type(target).__name__} is not supported. Currently, only Linear/Dense, "
                     "Embedding and Conv1D layers are supported.")
