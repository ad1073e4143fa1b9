"""LoRA layers, ``base(x) + B(A(dropout(x))) * scaling``, around linear, Conv1D, embedding, convolution and
multi-head attention layers, with HF peft's variants DoRA (``use_dora``) and ``lora_bias``, its initialisations
(:mod:`.initialization`) and mixed adapter batches (:mod:`.mixed_batch`). LoRA on bare Parameters is
:class:`.param_wrapper.ParamWrapper`.

Which LoRA layer wraps which layer type is the registry :data:`LORA_LAYERS`; ``LoraConfig._register_custom_module``
adds mappings of one's own, consulted first.
"""
import math
import warnings
from types import MappingProxyType

import numpy as np
from mindspore import Parameter, Tensor, mint, nn, ops
from mindspore.ops.function.nn_func import multi_head_attention_forward

from ...config import is_integer
from ...models.layers import Conv1D, Dropout, Embedding as EmbeddingLayer, Linear as LinearLayer, linear
from ...models.modeling_utils import write_parameter
from ...utils.other import row_mask
from ..tuners_utils import BaseTunerLayer, ParameterDict, base_weight, layer_features
from .initialization import init_from_base_weight, mutates_base_weight, orthogonal_factors


def _param_from(array):
    return Parameter(Tensor(np.ascontiguousarray(array, dtype=np.float32)))


def _row_norm(weight):
    """L2 norm of each row of a 2-D tensor."""
    return ops.sqrt((weight * weight).sum(axis=1))


class LoraLayer(BaseTunerLayer):
    """State shared by the LoRA layers (ranks, alphas, scalings, dropouts keyed by adapter name) and merging.

    Merging adds ``delta_weight`` into the base weight. For a DoRA adapter the merged weight is
    ``m / ||W + delta|| * (W + delta)``, with ``m`` the ``lora_magnitude_vector`` and the norm taken per output
    feature (along ``dora_axis`` of the base weight) of the unmerged weight; a ``lora_bias`` adapter also adds
    ``lora_B``'s bias times the scaling into the base bias.
    """

    adapter_layer_names = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "use_dora", "use_rslora", "lora_bias")
    # Read-only defaults for the LoRA layers that have no variants (AdaLoRA's SVDLinear).
    use_dora = lora_bias = use_rslora = MappingProxyType({})
    dora_axis = 0  # the base weight's axis of output features
    # Mixed adapter batches (see .mixed_batch): layers that can serve them, and while one runs, the holder of the
    # per-row adapter numbers and the (number, name) pairs of this layer's adapters.
    supports_mixed_batch = False
    _mixed_rows = None
    _mixed_adapters = ()

    def _init_lora(self, base_layer):
        self._init_tuner_layer(base_layer)
        self.r, self.lora_alpha, self.scaling = {}, {}, {}
        self.use_dora, self.use_rslora, self.lora_bias = {}, {}, {}
        self.lora_dropout = nn.CellDict()
        self.lora_A = nn.CellDict()
        self.lora_B = nn.CellDict()
        self.lora_embedding_A = ParameterDict()
        self.lora_embedding_B = ParameterDict()
        self.lora_magnitude_vector = ParameterDict()
        self._dora_norms = {}  # weight norms of the merged DoRA adapters, to unmerge them

    def _add_adapter_settings(self, adapter_name, r, lora_alpha, config):
        if not is_integer(r) or r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.use_rslora[adapter_name] = config.use_rslora
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if config.use_rslora else lora_alpha / r
        self.use_dora[adapter_name] = config.use_dora
        self.lora_bias[adapter_name] = config.lora_bias
        self.lora_dropout[adapter_name] = Dropout(config.lora_dropout)
        if config.lora_bias and getattr(self.get_base_layer(), "bias", None) is None:
            warnings.warn(f"`lora_bias=True` was passed but the targeted layer of type "
                          f"{type(self.get_base_layer()).__name__} has no bias. This means that merging LoRA "
                          "weights won't be possible.")

    def _finish_adapter(self, adapter_name):
        """DoRA's magnitude starts as the norm of the adapted weight, so the adapter starts as plain LoRA."""
        if self.use_dora[adapter_name]:
            weight = self._unmerged(self._merge_target().asnumpy())
            norm = self._weight_norm(weight + self.dora_delta(adapter_name))
            self.lora_magnitude_vector[adapter_name] = _param_from(norm.reshape(self._magnitude_shape()))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def _magnitude_shape(self):
        return (-1,)

    def reset_lora_parameters(self, adapter_name, init_lora_weights):
        """Initialise linear factors. ``True``: A Kaiming-uniform, B zero (the adapter starts as the identity);
        ``'gaussian'``: A ~ N(0, 1/r), B zero; ``'pissa'``, ``'pissa_niter_<n>'``, ``'olora'``: from the base
        weight, which keeps the rest; ``'orthogonal'``: B A = 0 from orthogonal halves; ``False``: both random
        (``Linear``'s default initialisation)."""
        lora_b = self.lora_B[adapter_name]
        if mutates_base_weight(init_lora_weights):
            self._init_from_base_weight(adapter_name, init_lora_weights)
            return
        if init_lora_weights == "orthogonal":
            a, b = orthogonal_factors(self.in_features, self.out_features, self.r[adapter_name])
            write_parameter(self.lora_A[adapter_name].weight, a)
            write_parameter(lora_b.weight, b)
            return
        if init_lora_weights is False:
            if lora_b.bias is not None:
                bound = 1.0 / math.sqrt(self.r[adapter_name])
                write_parameter(lora_b.bias, np.random.uniform(-bound, bound, lora_b.bias.shape))
            return
        a = self.lora_A[adapter_name].weight
        if init_lora_weights == "gaussian":
            write_parameter(a, np.random.normal(0, 1.0 / self.r[adapter_name], a.shape))
        else:
            bound = 1.0 / math.sqrt(self.in_features)
            write_parameter(a, np.random.uniform(-bound, bound, a.shape))
        for param in (lora_b.weight, lora_b.bias):
            if param is not None:
                write_parameter(param, np.zeros(param.shape, np.float32))

    def _init_from_base_weight(self, adapter_name, init):
        """PiSSA / OLoRA: the factors from the base weight (read as (out, in)), which is replaced by the residual."""
        weight = self._merge_target()
        fan_in_fan_out = getattr(self, "fan_in_fan_out", False)
        value = weight.asnumpy().T if fan_in_fan_out else weight.asnumpy()
        a, b, residual = init_from_base_weight(init, value, self.r[adapter_name], self.scaling[adapter_name])
        write_parameter(self.lora_A[adapter_name].weight, a)
        write_parameter(self.lora_B[adapter_name].weight, b)
        write_parameter(weight, residual.T if fan_in_fan_out else residual)

    def mixed_batch_adapters(self):
        """The adapters this layer applies per row in a mixed adapter batch (DoRA adapters are refused there)."""
        return [name for name in self.adapter_names() if not self.use_dora.get(name, False)]

    def _check_mixed_batch(self, adapter_names):
        """HF peft's refusals of ``adapter_names`` (mixed adapter batches) for this layer."""
        if not self.supports_mixed_batch:
            raise TypeError(f"lora.{type(self).__name__} does not support mixed adapter batches.")
        if self.merged:
            raise ValueError("Cannot pass `adapter_names` when there are merged adapters, please call "
                             "`unmerge_adapter` first.")
        if any(self.use_dora.get(name, False) for name in adapter_names if name != "__base__"):
            raise ValueError("Cannot pass `adapter_names` when DoRA is enabled.")

    def _mixed_batch_forward(self, x, result):
        """A mixed adapter batch: every adapter's ``B(A(dropout(x))) * scaling`` added to the rows that use it."""
        rows = self._mixed_rows.rows[: result.shape[0]]
        for index, name in self._mixed_adapters:
            adapter_dtype = self.lora_A[name].weight.dtype
            x_a = x if x.dtype == adapter_dtype else x.astype(adapter_dtype)
            lora_out = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x_a))) * self.scaling[name]
            result = result + lora_out.astype(result.dtype) * row_mask(rows, index, result)
        return result

    def set_scale(self, adapter_name, scale):
        """Set the adapter's scaling to ``scale`` times its initial one (``alpha / r``, or ``alpha / sqrt(r)``)."""
        if adapter_name in self.scaling:
            r = self.r[adapter_name]
            rank = math.sqrt(r) if self.use_rslora.get(adapter_name, False) else r
            self.scaling[adapter_name] = scale * self.lora_alpha[adapter_name] / rank

    def delta_weight(self, adapter_name):
        """The adapter's (plain LoRA) weight update as a numpy array shaped like the base weight."""
        raise NotImplementedError

    def dora_delta(self, adapter_name):
        """The update DoRA's weight norm is taken of (``delta_weight`` unless a layer computes it otherwise)."""
        return self.delta_weight(adapter_name)

    def adapted_weight(self, weight):
        """``weight`` plus the active adapters' updates, as a tensor (for layers that use their weight directly)."""
        if self.disable_adapters or self.merged_adapters:
            return weight
        for name in self._active_in_layer:
            update = ops.matmul(self.lora_B[name].weight, self.lora_A[name].weight) * self.scaling[name]
            weight = weight + update.astype(weight.dtype)
        return weight

    def _merge_target(self):
        """The Parameter merging writes into."""
        return base_weight(self.get_base_layer())

    def _weight_norm(self, weight):
        """Norm (numpy) of the slices of ``weight`` that belong to each output feature."""
        rows = np.moveaxis(weight, self.dora_axis, 0).astype(np.float64)
        return np.sqrt((rows.reshape(rows.shape[0], -1) ** 2).sum(1))

    def _dora_scale(self, adapter_name, norm, ndim):
        shape = [1] * ndim
        shape[self.dora_axis] = -1
        return (self.lora_magnitude_vector[adapter_name].asnumpy().reshape(-1) / norm).reshape(shape)

    def _merged_weight(self, adapter_name, weight):
        delta = self.delta_weight(adapter_name)
        if not self.use_dora.get(adapter_name, False):
            return weight + delta
        norm = self._weight_norm(self._unmerged(weight) + delta)
        self._dora_norms[adapter_name] = norm
        return self._dora_scale(adapter_name, norm, weight.ndim) * (weight + delta)

    def _unmerged_weight(self, adapter_name, weight, keep_norm=False):
        delta = self.delta_weight(adapter_name)
        if not self.use_dora.get(adapter_name, False):
            return weight - delta
        norms = self._dora_norms
        norm = norms[adapter_name] if keep_norm else norms.pop(adapter_name)
        return weight / self._dora_scale(adapter_name, norm, weight.ndim) - delta

    def _unmerged(self, weight):
        """``weight`` (numpy) without the merged adapters."""
        for name in reversed(self.merged_adapters):
            weight = self._unmerged_weight(name, weight, keep_norm=True)
        return weight

    def _bias_after(self, adapter_name, sign):
        """The base bias with ``lora_B``'s bias (times the scaling) added (``sign=1``) or taken out; ``None`` when
        the adapter has no ``lora_bias``."""
        if not self.lora_bias.get(adapter_name, False):
            return None
        bias = getattr(self.get_base_layer(), "bias", None)
        if bias is None:
            raise RuntimeError("Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.")
        return bias.asnumpy() + sign * self.scaling[adapter_name] * self.lora_B[adapter_name].bias.asnumpy()

    def merge(self, safe_merge=False, adapter_names=None):
        """Merge the adapters into the base weight (and bias); ``safe_merge`` refuses non-finite results."""
        weight = self._merge_target()
        for name in self.check_adapters_to_merge(adapter_names):
            merged = self._merged_weight(name, weight.asnumpy())
            bias = self._bias_after(name, 1)
            if safe_merge and not (np.isfinite(merged).all() and (bias is None or np.isfinite(bias).all())):
                self._dora_norms.pop(name, None)
                raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
            write_parameter(weight, merged)
            if bias is not None:
                write_parameter(self.get_base_layer().bias, bias)
            self.merged_adapters.append(name)

    def unmerge(self):
        """Take every merged adapter out of the base weight (and bias) again."""
        weight = self._merge_target()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            write_parameter(weight, self._unmerged_weight(name, weight.asnumpy()))
            bias = self._bias_after(name, -1)
            if bias is not None:
                write_parameter(self.get_base_layer().bias, bias)


def _resolve_fan_in_fan_out(base_layer, config):
    """GPT-2's Conv1D stores (in, out) weights, other linear layers (out, in): the config follows the layer."""
    if isinstance(base_layer, Conv1D):
        config.fan_in_fan_out = True  # set silently, as documented
        return True
    if config.fan_in_fan_out:
        warnings.warn("fan_in_fan_out is set to True but the target module is a Linear layer with (out, in) "
                      "weights. Setting fan_in_fan_out to False.")
        config.fan_in_fan_out = False
    return False


class Linear(nn.Cell, LoraLayer):
    """LoRA around ``Linear``, ``mindspore.nn.Dense``, ``mindspore.mint.nn.Linear`` (weight (out, in)) or GPT-2's
    ``Conv1D`` (weight (in, out), ``fan_in_fan_out``).

    Also the template of a custom LoRA layer (see ``LoraConfig._register_custom_module``): it is built as
    ``cls(base_layer, adapter_name, config=config, r=r, lora_alpha=lora_alpha)`` and further adapters are added with
    ``update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)``.
    """

    supports_mixed_batch = True

    def __init__(self, base_layer, adapter_name, config, r=8, lora_alpha=8, **kwargs):
        super().__init__()
        if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
            raise ValueError("LoRA cannot wrap a mindspore.nn.Dense that has an activation; split the activation "
                             "into its own Cell")
        self._init_lora(base_layer)
        self.fan_in_fan_out = _resolve_fan_in_fan_out(base_layer, config)
        self.dora_axis = 1 if self.fan_in_fan_out else 0
        self.in_features, self.out_features = (layer_features(base_layer)
                                               or (base_layer.in_features, base_layer.out_features))
        self.update_layer(adapter_name, r, lora_alpha, config)

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        self._add_adapter_settings(adapter_name, r, lora_alpha, config)
        self.lora_A[adapter_name] = LinearLayer(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = LinearLayer(r, self.out_features, bias=config.lora_bias)
        if config.init_lora_weights == "loftq":
            from ...quantization.loftq import loftq_init_layer  # (the quantization package imports LoRA's layers)
            loftq_init_layer(self, adapter_name, config.loftq_config)
        else:
            self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._finish_adapter(adapter_name)

    def delta_weight(self, adapter_name):
        delta = self.lora_B[adapter_name].weight.asnumpy() @ self.lora_A[adapter_name].weight.asnumpy()
        delta = delta * self.scaling[adapter_name]
        return delta.T if self.fan_in_fan_out else delta

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        if self._mixed_rows is not None:
            return self._mixed_batch_forward(x, result)
        for name in self._active_in_layer:
            if self.use_dora[name]:
                result = self._dora(name, x, result)
            else:
                adapter_dtype = self.lora_A[name].weight.dtype  # float32 adapters on a float16 base: cast, as HF
                x_a = x if x.dtype == adapter_dtype else x.astype(adapter_dtype)
                after_a = self.lora_A[name](self.lora_dropout[name](x_a))
                if self.lora_bias[name]:  # the bias is scaled too
                    lora_out = self.lora_B[name](after_a) * self.scaling[name]
                else:  # scaling the rank-r activations is cheaper than scaling the output
                    lora_out = self.lora_B[name](after_a * self.scaling[name])
                if lora_out.dtype != result.dtype:
                    lora_out = lora_out.astype(result.dtype)
                result = result + lora_out
        return result

    def _dora(self, name, x, result):
        """HF peft's DoRA forward: ``m / ||W + s B A||`` (the norm held constant, no gradient) rescales the base
        output without its bias and the LoRA output."""
        lora_a, lora_b, scaling = self.lora_A[name], self.lora_B[name], self.scaling[name]
        weight = self.base_layer.weight
        if self.fan_in_fan_out:
            weight = weight.T
        norm = _row_norm(weight + scaling * ops.matmul(lora_b.weight, lora_a.weight))
        magnitude = getattr(self.lora_magnitude_vector, name) / ops.stop_gradient(norm)
        dropout = self.lora_dropout[name]
        base_result = result
        if self.training and dropout.p > 0:  # the base output of the dropped-out input
            x = dropout(x)
            base_result = self.base_layer(x)
        if self.base_layer.bias is not None:
            base_result = base_result - self.base_layer.bias
        return result + (magnitude - 1) * base_result + magnitude * lora_b(lora_a(x)) * scaling


class Embedding(nn.Cell, LoraLayer):
    """LoRA around an embedding (``Embedding``, ``mindspore.nn.Embedding``, ``mindspore.mint.nn.Embedding``):
    ``lora_embedding_A`` (r, vocab) and ``lora_embedding_B`` (dim, r), HF's layout; no dropout, as in HF peft."""

    dora_axis = 1
    supports_mixed_batch = True

    def __init__(self, base_layer, adapter_name, config, r=8, lora_alpha=8, **kwargs):
        super().__init__()
        self._init_lora(base_layer)
        self.weight_name = "weight" if hasattr(base_layer, "weight") else "embedding_table"
        self.num_embeddings, self.embedding_dim = base_weight(base_layer).shape
        self.update_layer(adapter_name, r, lora_alpha, config)

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        if config.lora_bias:
            raise ValueError(f"lora_bias={config.lora_bias} is not supported for {type(self).__name__}.")
        if config.init_lora_weights == "loftq":
            raise ValueError("init_lora_weights='loftq' initialises linear layers only; exclude the embedding "
                             f"{type(self.base_layer).__name__} from target_modules")
        self._add_adapter_settings(adapter_name, r, lora_alpha, config)
        self.lora_embedding_A[adapter_name] = _param_from(np.random.normal(0, 1, (r, self.num_embeddings)))
        self.lora_embedding_B[adapter_name] = _param_from(np.random.normal(0, 1, (self.embedding_dim, r)))
        if config.init_lora_weights is not False:  # A = 0: the adapter starts as the identity
            a = self.lora_embedding_A[adapter_name]
            write_parameter(a, np.zeros(a.shape, np.float32))
        self._finish_adapter(adapter_name)

    def delta_weight(self, adapter_name):
        b = self.lora_embedding_B[adapter_name].asnumpy()
        a = self.lora_embedding_A[adapter_name].asnumpy()
        return (b @ a).T * self.scaling[adapter_name]

    def _mixed_batch_forward(self, x, result):
        rows = self._mixed_rows.rows[: result.shape[0]]
        for index, name in self._mixed_adapters:
            lora_a, lora_b = getattr(self.lora_embedding_A, name), getattr(self.lora_embedding_B, name)
            lora_out = linear(ops.gather(lora_a.T, x, 0) * self.scaling[name], lora_b)
            result = result + lora_out.astype(result.dtype) * row_mask(rows, index, result)
        return result

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        if self._mixed_rows is not None:
            return self._mixed_batch_forward(x, result)
        for name in self._active_in_layer:
            lora_a, lora_b = getattr(self.lora_embedding_A, name), getattr(self.lora_embedding_B, name)
            after_a = ops.gather(lora_a.T, x, 0)
            if self.use_dora[name]:  # HF peft's DoRA: everything so far rescaled by m / ||W^T + s B A||
                weight = getattr(self.base_layer, self.weight_name)
                norm = _row_norm(weight.T + self.scaling[name] * ops.matmul(lora_b, lora_a))
                magnitude = getattr(self.lora_magnitude_vector, name) / ops.stop_gradient(norm)
                result = magnitude * result + magnitude * linear(after_a, lora_b) * self.scaling[name]
            else:
                result = result + linear(after_a * self.scaling[name], lora_b).astype(result.dtype)
        return result


def _conv_geometry(layer):
    """``(dims, kernel, stride, pad_mode, padding)`` of a MindSpore convolution in the primitives' terms; 1-D
    padding as ``(left, right)``."""
    if isinstance(layer, (mint.nn.Conv1d, mint.nn.Conv2d, mint.nn.Conv3d)):
        dims = len(layer.kernel_size)
        if isinstance(layer.padding, str):
            pad_mode, padding = layer.padding, 0
        else:
            pad_mode, padding = "pad", tuple(p for p in layer.padding for _ in range(2))
    else:  # mindspore.nn.ConvNd; nn.Conv1d runs as a 2-D convolution with a height-1 kernel
        dims = 1 if isinstance(layer, nn.Conv1d) else len(layer.kernel_size)
        pad_mode, padding = layer.pad_mode, layer.padding
        if dims == 1:
            padding = (padding, padding) if isinstance(padding, int) else tuple(padding)[-2:]
    return dims, tuple(layer.kernel_size)[-dims:], tuple(layer.stride)[-dims:], pad_mode, padding


class ConvFactor(nn.Cell):
    """A LoRA factor of a convolution (``lora_A``/``lora_B`` of :class:`ConvNd`): ``weight`` in torch's layout
    (out, in / groups, *kernel) and an optional ``bias``, run by the classic convolution primitives (1-D as 2-D)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=None, pad_mode="valid", padding=0, groups=1,
                 bias=False):
        super().__init__()
        dims = len(kernel_size)
        stride = stride or (1,) * dims
        fan_in = in_channels // groups * math.prod(kernel_size)
        bound = 1.0 / math.sqrt(fan_in)  # torch's default initialisation of a convolution
        self.weight = _param_from(np.random.uniform(-bound, bound, (out_channels, in_channels // groups,
                                                                     *kernel_size)))
        self.bias = _param_from(np.random.uniform(-bound, bound, out_channels)) if bias else None
        self.one_d = dims == 1
        if dims == 1:
            kernel_size, stride = (1,) + tuple(kernel_size), (1,) + tuple(stride)
            padding = (0, 0) + tuple(padding) if pad_mode == "pad" else 0
        primitive = ops.Conv3D if dims == 3 else ops.Conv2D
        self.conv = primitive(out_channels, tuple(kernel_size), pad_mode=pad_mode, pad=padding, stride=tuple(stride),
                              group=groups)

    def construct(self, x):
        if self.one_d:
            out = self.conv(x.expand_dims(2), self.weight.expand_dims(2)).squeeze(2)
        else:
            out = self.conv(x, self.weight)
        if self.bias is not None:
            out = out + self.bias.reshape((1, -1) + (1,) * (out.ndim - 2))
        return out


class ConvNd(nn.Cell, LoraLayer):
    """LoRA around a convolution (``mindspore.nn.Conv1d/2d/3d``, ``mindspore.mint.nn.Conv1d/2d/3d``), HF peft's
    Conv1d/Conv2d/Conv3d: ``lora_A`` convolves with the base layer's kernel, stride and padding, ``lora_B`` is a
    1x1 convolution with its groups (the rank must be divisible by them; such layers cannot be merged).
    The factors' weights have torch's layout, so files match HF's also for ``nn.Conv1d`` (whose own weight MindSpore
    keeps as (out, in, 1, k)).
    """

    supports_mixed_batch = True

    def __init__(self, base_layer, adapter_name, config, r=8, lora_alpha=8, **kwargs):
        super().__init__()
        self.groups = getattr(base_layer, "groups", getattr(base_layer, "group", 1))
        if self.groups > 1:
            warnings.warn("LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.")
        if r % self.groups != 0:
            raise ValueError(f"Targeting a {type(base_layer).__name__} with groups={self.groups} and rank {r}. "
                             "Currently, support is limited to conv layers where the rank is divisible by groups. "
                             "Either choose a different rank or do not target this specific layer.")
        self._init_lora(base_layer)
        self.in_features, self.out_features = base_layer.in_channels, base_layer.out_channels
        self.dims, self.kernel_size, self.stride, self.pad_mode, self.padding = _conv_geometry(base_layer)
        self.update_layer(adapter_name, r, lora_alpha, config)

    def _magnitude_shape(self):
        return (1, -1) + (1,) * self.dims

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        init = config.init_lora_weights
        if isinstance(init, str) and init != "gaussian":  # HF peft's PiSSA/OLoRA/orthogonal are for linear layers
            raise ValueError(f"Unknown initialization init_lora_weights={init!r}")
        self._add_adapter_settings(adapter_name, r, lora_alpha, config)
        self.lora_A[adapter_name] = ConvFactor(self.in_features, r, self.kernel_size, self.stride, self.pad_mode,
                                               self.padding)
        self.lora_B[adapter_name] = ConvFactor(r, self.out_features, (1,) * self.dims, groups=self.groups,
                                               bias=config.lora_bias)
        if init is not False:
            a = self.lora_A[adapter_name].weight
            if init == "gaussian":
                write_parameter(a, np.random.normal(0, 1.0 / r, a.shape))
            for param in (self.lora_B[adapter_name].weight, self.lora_B[adapter_name].bias):
                if param is not None:
                    write_parameter(param, np.zeros(param.shape, np.float32))
        self._finish_adapter(adapter_name)

    def dora_delta(self, adapter_name):
        """``scaling * B A`` with the factors flattened to matrices, as HF peft's DoRA computes it (the true update
        when groups == 1), shaped like the base weight."""
        r = self.r[adapter_name]
        b = self.lora_B[adapter_name].weight.asnumpy().reshape(-1, r)
        a = self.lora_A[adapter_name].weight.asnumpy().reshape(r, -1)
        return (b @ a).reshape(self._merge_target().shape) * self.scaling[adapter_name]

    def delta_weight(self, adapter_name):
        if self.groups > 1:
            raise NotImplementedError(f"Merging is not supported for {type(self.get_base_layer()).__name__} layers "
                                      "with groups > 1!")
        return self.dora_delta(adapter_name)

    def merge(self, safe_merge=False, adapter_names=None):
        if self.groups > 1:  # lora_A sees every input channel, a grouped base weight only its group's
            raise NotImplementedError(f"Merging is not supported for {type(self.get_base_layer()).__name__} layers "
                                      "with groups > 1!")
        super().merge(safe_merge, adapter_names)

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        if self._mixed_rows is not None:
            return self._mixed_batch_forward(x, result)
        for name in self._active_in_layer:
            if self.use_dora[name]:
                result = self._dora(name, x, result)
            else:
                lora_out = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]
                result = result + lora_out.astype(result.dtype)
        return result

    def _dora(self, name, x, result):
        """HF peft's DoRA forward for convolutions (see :meth:`Linear._dora`), the norm per output channel."""
        lora_a, lora_b, scaling, r = self.lora_A[name], self.lora_B[name], self.scaling[name], self.r[name]
        weight = self.base_layer.weight.reshape(self.out_features, -1)
        update = ops.matmul(lora_b.weight.reshape(-1, r), lora_a.weight.reshape(r, -1))
        norm = _row_norm(weight + scaling * update.reshape(self.out_features, -1))
        magnitude = getattr(self.lora_magnitude_vector, name)
        magnitude = magnitude / ops.stop_gradient(norm).reshape(magnitude.shape)
        dropout = self.lora_dropout[name]
        base_result = result
        if self.training and dropout.p > 0:
            x = dropout(x)
            base_result = self.base_layer(x)
        if self.base_layer.bias is not None:
            base_result = base_result - self.base_layer.bias.reshape(magnitude.shape)
        return result + (magnitude - 1) * base_result + magnitude * lora_b(lora_a(x)) * scaling


def _check_mha_init(config):
    if config.init_lora_weights not in (True, False, "gaussian"):
        raise ValueError(f"init_lora_weights={config.init_lora_weights!r} is not supported for MultiheadAttention: "
                         "its packed in_proj_weight is no single linear weight to initialise from")


class MultiheadAttention(nn.Cell, LoraLayer):
    """LoRA around ``mindspore.nn.MultiheadAttention`` (query, key and value of the same size), HF peft's layout:
    ``lora_A`` (r, E) and ``lora_B`` (3E, r) update the packed ``in_proj_weight``, and ``out_proj`` is replaced by a
    LoRA :class:`Linear` (keys ``<name>.base_layer.out_proj.lora_A...``). The attention runs with the updated
    weights; each update counts once (HF peft 0.21 adds the ``out_proj`` one twice, huggingface/peft#3774).
    """

    def __init__(self, base_layer, adapter_name, config, r=8, lora_alpha=8, **kwargs):
        name = type(self).__name__
        if not base_layer._qkv_same_embed_dim:
            raise ValueError(f"Only same embed for query/key/value is supported as of now for {name}.")
        if config.use_dora:
            raise ValueError(f"{name} does not support DoRA (yet), please set use_dora to False")
        if config.lora_bias:
            raise ValueError(f"{name} does not support lora_bias=True, please set lora_bias to False")
        _check_mha_init(config)
        super().__init__()
        self._init_lora(base_layer)
        self.in_features, self.out_features = base_layer.embed_dim, 3 * base_layer.embed_dim
        base_layer.out_proj = Linear(base_layer.out_proj, adapter_name, config, r, lora_alpha)
        self._update_in_proj(adapter_name, r, lora_alpha, config)

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        _check_mha_init(config)
        self._update_in_proj(adapter_name, r, lora_alpha, config)
        self.base_layer.out_proj.update_layer(adapter_name, r, lora_alpha, config)

    def _update_in_proj(self, adapter_name, r, lora_alpha, config):
        self._add_adapter_settings(adapter_name, r, lora_alpha, config)
        self.lora_A[adapter_name] = LinearLayer(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = LinearLayer(r, self.out_features, bias=False)
        self.reset_lora_parameters(adapter_name, config.init_lora_weights)
        self._finish_adapter(adapter_name)

    def _merge_target(self):
        return self.base_layer.in_proj_weight

    def delta_weight(self, adapter_name):
        return self.lora_B[adapter_name].weight.asnumpy() @ self.lora_A[adapter_name].weight.asnumpy() * \
            self.scaling[adapter_name]

    def release_out_proj(self, merge, safe_merge=False, adapter_names=None):
        """Put the plain ``out_proj`` back into the base layer, its adapters merged first if ``merge``."""
        out_proj = self.base_layer.out_proj
        if merge:
            out_proj.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        self.base_layer.out_proj = out_proj.get_base_layer()

    def construct(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                  average_attn_weights=True):
        base, out_proj = self.base_layer, self.base_layer.out_proj
        batch_first = base.batch_first and query.ndim == 3
        if batch_first:
            query, key, value = query.swapaxes(1, 0), key.swapaxes(1, 0), value.swapaxes(1, 0)
        attn_output, attn_weights = multi_head_attention_forward(
            query, key, value, base.embed_dim, base.num_heads, self.adapted_weight(base.in_proj_weight),
            base.in_proj_bias, base.bias_k, base.bias_v, base.add_zero_attn, base.dropout,
            out_proj.adapted_weight(out_proj.base_layer.weight), out_proj.base_layer.bias, training=self.training,
            key_padding_mask=key_padding_mask, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
            dtype=base.dtype)
        if batch_first:
            attn_output = attn_output.swapaxes(1, 0)
        if need_weights:
            return attn_output, attn_weights
        return (attn_output,)


# Base layer class -> LoRA layer class; the first ``isinstance`` match wins. LoraConfig._register_custom_module adds
# mappings that are consulted before these.
LORA_LAYERS = {
    Conv1D: Linear, LinearLayer: Linear, nn.Dense: Linear, mint.nn.Linear: Linear,
    EmbeddingLayer: Embedding, nn.Embedding: Embedding, mint.nn.Embedding: Embedding,
    nn.Conv1d: ConvNd, nn.Conv2d: ConvNd, nn.Conv3d: ConvNd,
    mint.nn.Conv1d: ConvNd, mint.nn.Conv2d: ConvNd, mint.nn.Conv3d: ConvNd,
    nn.MultiheadAttention: MultiheadAttention,
}


def dispatch_lora_layer(target, adapter_name, lora_config, r, lora_alpha):
    """The LoRA layer for ``target`` (custom mappings first, then :data:`LORA_LAYERS`); a clear error for layer types
    LoRA cannot wrap."""
    mappings = list((lora_config._custom_modules or {}).items()) + list(LORA_LAYERS.items())
    for layer_cls, lora_cls in mappings:
        if isinstance(target, layer_cls):
            return lora_cls(target, adapter_name, config=lora_config, r=r, lora_alpha=lora_alpha)
    raise ValueError(f"Target module {type(target).__name__} is not supported. Currently, only Linear/Dense, "
                     "Embedding, Conv1D, Conv1d/Conv2d/Conv3d and MultiheadAttention layers are supported; map other "
                     "layer types to LoRA layers of your own with LoraConfig._register_custom_module.")
