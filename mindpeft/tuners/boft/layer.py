"""BOFT layers: a butterfly product of permuted block-diagonal orthogonal factors rotates the input of Linear/Dense
and Conv2d layers, and ``boft_s`` scales their outputs, as HF peft 0.21 computes it.

``boft_R.<adapter>`` (factors, blocks, b, b) holds unconstrained matrices; each block is the exact Cayley transform
of their skew-symmetric part. Factor ``i`` is ``P_i D_i P_i^T`` with ``D_i`` block-diagonal and ``P_i`` the
butterfly permutation (HF's non-persistent ``boft_P`` buffer, not saved; here index arrays, applied by gathering).
HF peft builds more than one factor only where its CUDA extension compiles: elsewhere it silently sets
``boft_n_butterfly_factor`` to 1. mindpeft always builds the factors the config asks for, i.e. HF's results with the
extension.
"""
import math
import warnings

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.seed import _get_graph_seed

from ...models.layers import Conv1D, Linear as LinearLayer, _uniform_real, linear
from ..oft.layer import cayley, check_conv2d, dense_features
from ..tuners_utils import BaseTunerLayer, ParameterDict


def butterfly_permutation(features, blocks, half_block, factor):
    """HF peft's ``block_butterfly_perm``: within each group of ``features // blocks`` indices, the chunks of
    ``half_block`` at even positions first, then those at odd positions (the identity when ``factor`` is 0)."""
    if factor == 0:
        return np.arange(features)
    group = features // blocks
    chunks = group // half_block
    order = np.concatenate([np.arange(p * half_block, (p + 1) * half_block)
                            for p in list(range(0, chunks, 2)) + list(range(1, chunks, 2))])
    return np.concatenate([start + order for start in range(0, features, group)])


def fit_butterfly(features, block_size, block_num, factor, names):
    """``(block_size, block_num)`` with ``block_size * block_num == features`` from the one given, with HF peft's
    checks and messages; ``factor`` is ``boft_n_butterfly_factor - 1``, ``names`` how messages call ``features``."""
    name, lower_name = names
    if block_size == 0:
        if features % block_num != 0:
            raise ValueError(f"{name} ({features}) must be divisible by boft_block_num ({block_num})!")
        if factor != 0:
            if factor > int(math.log2(block_num)):
                raise ValueError(f"Invalid combination of boft_n_butterfly_factor ({factor + 1}) and boft_block_num "
                                 f"({block_num})!")
            if block_num % (2 ** factor) != 0:
                raise ValueError(f"boft_block_num ({block_num}) must be a multiple of 2 raised to the power of "
                                 f"boft_n_butterfly_factor ({factor + 1})!")
        block_size = features // block_num
    else:
        if features % block_size != 0:
            raise ValueError(f"{name} ({features}) must be divisible by boft_block_size ({block_size})!")
        span = block_size * 2 ** factor
        if factor != 0 and (features < span or features % span != 0):
            raise ValueError(f"Invalid combination of {lower_name} ({features}), boft_n_butterfly_factor "
                             f"({factor + 1}) and boft_block_size ({block_size})!")
        block_num = features // block_size
    if factor != 0:
        if block_num % 2 != 0:
            raise ValueError(f"boft_block_num ({block_num}) must be an even number!")
        if block_size % 2 != 0:
            raise ValueError(f"boft_block_size ({block_size}) must be an even number!")
    return block_size, block_num


class _Coin(nn.Cell):
    """A seeded uniform generator for BOFT's multiplicative dropout."""

    def __init__(self):
        super().__init__()
        self.uniform = _uniform_real(*_get_graph_seed(0, "boft_dropout"))

    def construct(self, shape):
        return self.uniform(shape)


class BOFTLayer(nn.Cell, BaseTunerLayer):
    """A BOFT adapter around a layer: ``boft_R``/``boft_s`` per adapter (HF's names and shapes). Subclasses give the
    base layer's sizes, the shape of ``boft_s`` and how the rotation and scale enter the forward pass."""

    adapter_layer_names = ("boft_R", "boft_s")
    other_param_names = ("boft_block_size", "boft_block_num", "boft_dropout", "boft_P")
    feature_names = ("in_features", "in_features")

    def __init__(self, base_layer, adapter_name, config):
        super().__init__()
        self._init_tuner_layer(base_layer)
        self.in_features, self.out_features, self.rotated_features = self.features(base_layer)
        self.boft_R, self.boft_s = ParameterDict(), ParameterDict()
        self.boft_block_size, self.boft_block_num, self.boft_dropout, self.boft_P = {}, {}, {}, {}
        self.update_layer(adapter_name, config)

    def features(self, base_layer):
        """``(in_features, out_features, rotated features)`` of the base layer."""
        raise NotImplementedError

    def scale_shape(self):
        raise NotImplementedError

    def update_layer(self, adapter_name, config):
        factor = config.boft_n_butterfly_factor - 1
        features = self.rotated_features
        block_size, block_num = fit_butterfly(features, config.boft_block_size, config.boft_block_num, factor,
                                              self.feature_names)
        permutations = [butterfly_permutation(features, block_num // 2 ** i, block_size // 2, factor)
                        for i in range(factor + 1)]
        rotation_shape = (factor + 1, block_num, block_size, block_size)
        if config.init_weights:
            rotation, scale = np.zeros(rotation_shape), np.ones(self.scale_shape())
        else:
            rotation = np.random.normal(0.0, 0.1, rotation_shape)
            scale = np.random.normal(1.0, 0.1, self.scale_shape())
        self.boft_R[adapter_name] = Parameter(Tensor(rotation.astype(np.float32)))
        self.boft_s[adapter_name] = Parameter(Tensor(scale.astype(np.float32)))
        self.boft_P[adapter_name] = Tensor(np.stack(permutations).astype(np.int32))
        self.boft_block_size[adapter_name] = block_size
        self.boft_block_num[adapter_name] = block_num
        self.boft_dropout[adapter_name] = config.boft_dropout
        if config.boft_dropout > 0 and not hasattr(self, "coin"):
            self.coin = _Coin()  # only when needed: creating one advances MindSpore's graph seed
        self.set_adapter(self.active_adapters or (adapter_name,))

    def _drop_blocks(self, blocks, p):
        """HF's multiplicative dropout: ``int(p * blocks)`` random blocks of one random factor become the identity."""
        factors, count, size, _ = blocks.shape
        dropped = int(p * count)
        if dropped == 0:
            return blocks
        factor_draw = self.coin((factors,))
        block_draw = self.coin((count,))
        threshold = ops.sort(block_draw)[0][dropped - 1]
        mask = ((factor_draw == factor_draw.max()).astype(blocks.dtype).reshape(factors, 1, 1, 1)
                * (block_draw <= threshold).astype(blocks.dtype).reshape(1, count, 1, 1))
        return (1.0 - mask) * blocks + mask * ops.eye(size, size, blocks.dtype)

    def butterfly_matrix(self, adapter_name, dropout=False):
        """The adapter's orthogonal matrix (rotated features x rotated features), as MindSpore ops."""
        weight = getattr(self.boft_R, adapter_name)
        factors, count, size, _ = weight.shape
        flat = weight.reshape(-1, size, size)
        blocks = cayley(0.5 * (flat - flat.swapaxes(1, 2))).reshape(factors, count, size, size)
        if dropout and self.boft_dropout[adapter_name] > 0:
            blocks = self._drop_blocks(blocks, self.boft_dropout[adapter_name])
        eye = ops.eye(count, count, blocks.dtype).reshape(1, count, 1, count, 1)
        diagonal = (blocks.reshape(factors, count, size, 1, size) * eye).reshape(factors, count * size, count * size)
        permutation = self.boft_P[adapter_name]
        matrix = ops.gather(ops.gather(diagonal[0], permutation[0], 0), permutation[0], 1)
        for i in range(1, factors):
            factor = ops.gather(ops.gather(diagonal[i], permutation[i], 0), permutation[i], 1)
            matrix = ops.matmul(factor, matrix)
        return matrix

    def rotation_and_scale(self):
        """The active adapters' combined rotation (later adapters applied after earlier ones) and output scale."""
        names = self._active_in_layer
        rotation = self.butterfly_matrix(names[0], self.training)
        scale = getattr(self.boft_s, names[0])
        for name in names[1:]:
            rotation = ops.matmul(self.butterfly_matrix(name, self.training), rotation)
            scale = getattr(self.boft_s, name) * scale
        return rotation, scale.reshape(-1)

    def get_delta_weight(self, adapter_name):
        """numpy ``(rotation, scale)``: the adapter's orthogonal matrix and its output scale as a column (out, 1)."""
        matrix = self.butterfly_matrix(adapter_name).asnumpy()
        return matrix, getattr(self.boft_s, adapter_name).asnumpy().reshape(-1, 1)

    def _merge_into(self, value, adapter_name):
        """The base weight rotated and scaled by the adapter."""
        matrix, scale = self.get_delta_weight(adapter_name)
        return ((value.reshape(value.shape[0], -1) @ matrix.T) * scale).reshape(value.shape)

    def _unmerge_from(self, value, adapter_name):
        """The inverse of :meth:`_merge_into` (the rotation's inverse is its transpose)."""
        matrix, scale = self.get_delta_weight(adapter_name)
        return ((value.reshape(value.shape[0], -1) @ matrix) / scale).reshape(value.shape)


class Linear(BOFTLayer):
    """BOFT around ``Linear``/``mindspore.nn.Dense``: ``(base(x M) - bias) * s + bias``, ``boft_s`` (out, 1)."""

    def features(self, base_layer):
        in_features, out_features = dense_features(base_layer, "BOFT")
        self.has_bias = getattr(base_layer, "bias", None) is not None
        return in_features, out_features, in_features

    def scale_shape(self):
        return self.out_features, 1

    def construct(self, x):
        if self.disable_adapters or self.merged_adapters or not self._active_in_layer:
            return self.base_layer(x)
        rotation, scale = self.rotation_and_scale()
        dtype = x.dtype
        result = self.base_layer(linear(x.astype(rotation.dtype), rotation.swapaxes(0, 1)).astype(dtype))
        scale = scale.astype(result.dtype)
        if self.has_bias:
            bias = self.base_layer.bias
            return (result - bias) * scale + bias
        return result * scale


class Conv2d(BOFTLayer):
    """BOFT around ``mindspore.nn.Conv2d``: the convolution with the rotated, scaled kernel ``(W M^T) * s``
    (``W`` viewed as (out, in * k * k)), ``boft_s`` (1, out)."""

    feature_names = ("Convolutional kernel dimension", "convolutional kernel dimension")

    def features(self, base_layer):
        kernel = check_conv2d(base_layer, "BOFT")
        channels = base_layer.in_channels
        return channels, base_layer.out_channels, channels * kernel * kernel

    def scale_shape(self):
        return 1, self.out_features

    def construct(self, x):
        if self.disable_adapters or self.merged_adapters or not self._active_in_layer:
            return self.base_layer(x)
        rotation, scale = self.rotation_and_scale()
        base = self.base_layer
        weight = base.weight
        flat = ops.matmul(weight.reshape(self.out_features, -1).astype(rotation.dtype), rotation.swapaxes(0, 1))
        rotated = (flat * scale.reshape(-1, 1)).reshape(weight.shape).astype(weight.dtype)
        result = base.conv2d(x.astype(weight.dtype), rotated)
        if base.has_bias:
            result = base.bias_add(result, base.bias)
        return result.astype(x.dtype)


def dispatch_boft_layer(target, adapter_name, config):
    """The BOFT layer for ``target``; a clear error for layer types BOFT cannot wrap (GPT-2's Conv1D, as in HF)."""
    if isinstance(target, nn.Conv2d):
        return Conv2d(target, adapter_name, config)
    if isinstance(target, (LinearLayer, nn.Dense)) and not isinstance(target, Conv1D):
        if config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to True but the target module is a Linear layer with (out, in) "
                          "weights. Setting fan_in_fan_out to False.")
            config.fan_in_fan_out = False
        return Linear(target, adapter_name, config)
    raise TypeError(f"Target module {type(target).__name__} is not supported. Currently, only Linear/Dense and Conv2d "
                    "layers are supported by BOFT.")
