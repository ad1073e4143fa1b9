"""OFT layers: a learned block-diagonal orthogonal matrix rotates the input of Linear/Dense and Conv2d layers (the
output of embeddings), as HF peft 0.21 computes it.

Each block is the Cayley transform ``(I - S)(I + S)^-1`` of a skew-symmetric ``S`` whose upper triangle is the
trainable ``oft_R.<adapter>.weight`` (HF's names and shapes). The inverse is ``ops.MatrixInverse`` (CPU, GPU and
Ascend kernels, differentiable under ``mindspore.jit``), or HF's truncated Neumann series when
``use_cayley_neumann`` (the default).
"""
import math
import warnings

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ...models.layers import Conv1D, Embedding as EmbeddingLayer, Linear as LinearLayer
from ...models.modeling_utils import write_parameter
from ..tuners_utils import BaseTunerLayer, base_weight, layer_features


def skew_symmetric_index(block_size):
    """Gather indices turning ``[v, -v, 0]`` (``v`` the b(b-1)/2 upper-triangle values in row-major order) into a
    flattened skew-symmetric b x b matrix."""
    rows, cols = np.triu_indices(block_size, 1)
    count = len(rows)
    index = np.full((block_size, block_size), 2 * count, np.int32)
    index[rows, cols] = np.arange(count)
    index[cols, rows] = count + np.arange(count)
    return Tensor(index.reshape(-1))


def skew_symmetric(vectors, index, block_size):
    """(n, b(b-1)/2) upper triangles -> (n, b, b) skew-symmetric matrices."""
    full = ops.concat((vectors, -vectors, ops.zeros_like(vectors[:, :1])), 1)
    return ops.gather(full, index, 1).reshape(vectors.shape[0], block_size, block_size)


def cayley(skew, neumann_terms=0):
    """``(I - S)(I + S)^-1`` for a batch of skew-symmetric ``S`` (n, b, b): exact when ``neumann_terms`` is 0,
    else HF peft's truncated Neumann series of that many terms (5: ``I + 2S + 2S^2 + 2S^3 + S^4``)."""
    size = skew.shape[-1]
    eye = ops.eye(size, size, skew.dtype)
    if neumann_terms == 0:
        return ops.matmul(eye - skew, ops.MatrixInverse()(eye + skew))
    result = eye + ops.zeros_like(skew)
    if neumann_terms > 1:
        result = result + 2.0 * skew
    if neumann_terms > 2:
        power = ops.matmul(skew, skew)
        result = result + 2.0 * power
        for _ in range(3, neumann_terms - 1):
            power = ops.matmul(power, skew)
            result = result + 2.0 * power
        result = result + ops.matmul(power, skew)
    return result


def block_diagonal(blocks, count):
    """numpy: the block-diagonal matrix of ``count`` blocks, ``blocks`` (count or 1 shared, b, b)."""
    blocks = np.broadcast_to(blocks, (count,) + blocks.shape[1:])
    size = blocks.shape[-1]
    matrix = np.zeros((count * size, count * size), blocks.dtype)
    for i, block in enumerate(blocks):
        matrix[i * size:(i + 1) * size, i * size:(i + 1) * size] = block
    return matrix


def _nearest_divisor(features, value):
    """HF peft's replacement for a block count/size that does not divide ``features``: the nearest divisor."""
    if value >= features:
        return features
    higher = value
    while higher <= features and features % higher != 0:
        higher += 1
    lower = value
    while lower > 1 and features % lower != 0:
        lower -= 1
    return lower if value - lower <= higher - value else higher


def fit_blocks(features, r, block_size):
    """``(r, block_size)`` with ``r * block_size == features`` from the one given; like HF peft, a value that does not
    divide ``features`` is replaced by the nearest divisor, with a warning."""
    if r == 0:
        if features % block_size != 0 or block_size > features:
            fitted = _nearest_divisor(features, block_size)
            warnings.warn(f"Invalid `oft_block_size` ({block_size})! Adjusted `oft_block_size` to ({fitted}).")
            block_size = fitted
        return features // block_size, block_size
    if features % r != 0 or r > features:
        fitted = _nearest_divisor(features, r)
        warnings.warn(f"Invalid `r` ({r})! Adjusted `r` to ({fitted}).")
        r = fitted
    return r, features // r


class OFTRotation(nn.Cell):
    """HF's ``OFTRotationModule``: ``weight`` (r, or 1 with ``block_share``, by b(b-1)/2) parameterizes the blocks;
    ``construct`` rotates the last axis of its input (``features = blocks * block_size`` wide)."""

    def __init__(self, r, block_size, features, config):
        super().__init__()
        rows = 1 if config.block_share else r
        self.weight = Parameter(Tensor(np.zeros((rows, block_size * (block_size - 1) // 2), np.float32)))
        self.block_size = block_size
        self.blocks = features // block_size
        self.index = skew_symmetric_index(block_size)
        self.coft = config.coft
        self.eps = config.eps / math.sqrt(rows)
        self.neumann_terms = config.num_cayley_neumann_terms if config.use_cayley_neumann else 0

    def project(self, vectors):
        """COFT: scale each block's generator down to Frobenius norm ``eps`` where it is larger."""
        norm = ops.sqrt(2.0 * (vectors * vectors).sum(axis=1, keepdims=True))
        return ops.where(norm <= self.eps, vectors, self.eps * vectors / ops.maximum(norm, 1e-30))

    def rotation_blocks(self):
        """The orthogonal blocks (rows, b, b); with ``coft`` the weight is first projected in place, as in HF."""
        if self.coft:
            ops.assign(self.weight, ops.stop_gradient(self.project(self.weight)))
        return cayley(skew_symmetric(self.weight, self.index, self.block_size), self.neumann_terms)

    def matrix(self):
        """numpy: the full block-diagonal rotation (features x features)."""
        return block_diagonal(self.rotation_blocks().asnumpy(), self.blocks)

    def construct(self, x):
        shape = x.shape
        rotation = self.rotation_blocks()
        blocks = x.astype(rotation.dtype).reshape(-1, self.blocks, self.block_size).swapaxes(0, 1)
        return ops.matmul(blocks, rotation).swapaxes(0, 1).reshape(shape)


class OFTLayer(nn.Cell, BaseTunerLayer):
    """An OFT adapter around a layer: one :class:`OFTRotation` per adapter in ``oft_R`` (``oft_embedding_R`` for
    embeddings). Subclasses give the base layer's sizes (``features``) and how a rotation enters its weight."""

    adapter_layer_names = ("oft_R",)
    other_param_names = ("r", "oft_block_size")

    def __init__(self, base_layer, adapter_name, config):
        super().__init__()
        self._init_tuner_layer(base_layer)
        self.in_features, self.out_features, self.rotated_features = self.features(base_layer)
        setattr(self, self.adapter_layer_names[0], nn.CellDict())
        self.r, self.oft_block_size = {}, {}
        self.update_layer(adapter_name, config)

    def features(self, base_layer):
        """``(in_features, out_features, rotated features)`` of the base layer."""
        raise NotImplementedError

    @property
    def rotations(self):
        return getattr(self, self.adapter_layer_names[0])

    def update_layer(self, adapter_name, config):
        r, block_size = fit_blocks(self.rotated_features, config.r, config.oft_block_size)
        rotation = OFTRotation(r, block_size, self.rotated_features, config)
        if not config.init_weights:
            write_parameter(rotation.weight, np.random.normal(0.0, 0.1, rotation.weight.shape))
        self.rotations[adapter_name] = rotation
        self.r[adapter_name] = r
        self.oft_block_size[adapter_name] = block_size
        self.set_adapter(self.active_adapters or (adapter_name,))

    def get_delta_weight(self, adapter_name):
        """numpy: the adapter's block-diagonal orthogonal matrix (HF peft's name for it)."""
        return self.rotations[adapter_name].matrix()

    def rotate_weight(self, weight, matrix):
        """The base weight, viewed 2-D as (out, rotated features), after the rotation ``matrix``."""
        return weight @ matrix.T

    def _merge_into(self, value, adapter_name):
        """The base weight rotated by the adapter (HF peft's order when several are merged)."""
        return self._rotated(value, self.get_delta_weight(adapter_name))

    def _unmerge_from(self, value, adapter_name):
        """The inverse rotation (the Neumann series is not exactly orthogonal: a true inverse, not the transpose)."""
        return self._rotated(value, np.linalg.inv(self.get_delta_weight(adapter_name).astype(np.float64)))

    def _rotated(self, value, matrix):
        return self.rotate_weight(value.reshape(value.shape[0], -1), matrix).reshape(value.shape)

    def construct(self, x):
        if self.disable_adapters or self.merged_adapters:
            return self.base_layer(x)
        dtype = x.dtype
        for name in self._active_in_layer:
            x = self.oft_R[name](x)
        return self.base_layer(x.astype(dtype))


def dense_features(base_layer, method):
    """``(in_features, out_features)`` of a ``Linear``/``mindspore.nn.Dense`` layer ``method`` can wrap."""
    if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
        raise ValueError(f"{method} cannot wrap a mindspore.nn.Dense that has an activation; split the activation "
                         "into its own Cell")
    return layer_features(base_layer)


class Linear(OFTLayer):
    """OFT around ``Linear``/``mindspore.nn.Dense`` (weight (out, in)): ``base(x R)``."""

    def features(self, base_layer):
        in_features, out_features = dense_features(base_layer, "OFT")
        return in_features, out_features, in_features


def check_conv2d(base_layer, method):
    """The kernel size of a ``mindspore.nn.Conv2d`` HF peft's OFT/BOFT handle (square kernel, no dilation, one
    group); a clear error otherwise."""
    height, width = base_layer.kernel_size
    if height != width:
        raise ValueError(f"{method} supports square Conv2d kernels only (HF peft uses kernel_size[0] for both sides), "
                         f"got kernel_size {base_layer.kernel_size}")
    if any(d > 1 for d in base_layer.dilation):
        raise ValueError(f"Conv2d with dilation > 1 is not supported by {method} (got {base_layer.dilation}).")
    if base_layer.group > 1:
        raise ValueError(f"{method} does not support Conv2d layers with groups > 1 (got group={base_layer.group}).")
    return height


class Conv2d(OFTLayer):
    """OFT around ``mindspore.nn.Conv2d``: HF peft 0.21 rotates every kernel-sized input patch and folds the patches
    back (summing overlaps) before the convolution. For kernels larger than 1x1 on inputs larger than the kernel,
    that forward differs from the merged weight (``W R^T``) and is not the identity at initialization; mindpeft
    reproduces HF's numbers."""

    def features(self, base_layer):
        self.kernel = check_conv2d(base_layer, "OFT")
        channels = base_layer.in_channels
        return channels, base_layer.out_channels, channels * self.kernel * self.kernel

    def _unfold(self, x):
        """(B, C, H, W) -> (B * H' * W', C * k * k) stride-1 patches, channel-major like ``torch.Tensor.unfold``."""
        batch, channels, height, width = x.shape
        k = self.kernel
        out_h, out_w = height - k + 1, width - k + 1
        shifted = []
        for i in range(k):
            for j in range(k):
                shifted.append(x[:, :, i:i + out_h, j:j + out_w])
        patches = ops.stack(shifted, 2).reshape(batch, channels, k, k, out_h, out_w)
        return patches.transpose(0, 4, 5, 1, 2, 3).reshape(batch * out_h * out_w, channels * k * k)

    def _fold(self, patches, shape):
        """HF peft's fold: the (B, C, H', W', k, k) patches are read as (B, C * k * k, H' * W') without reordering,
        then overlapping positions are summed (``torch.nn.functional.fold``)."""
        batch, channels, height, width = shape
        k = self.kernel
        out_h, out_w = height - k + 1, width - k + 1
        cols = patches.reshape(batch, out_h, out_w, channels, k, k).transpose(0, 3, 1, 2, 4, 5)
        cols = cols.reshape(batch, channels, k, k, out_h, out_w)
        summed = []
        for i in range(k):
            for j in range(k):
                summed.append(ops.pad(cols[:, :, i, j], (j, k - 1 - j, i, k - 1 - i)))
        return ops.stack(summed).sum(0)

    def construct(self, x):
        if self.disable_adapters or self.merged_adapters:
            return self.base_layer(x)
        dtype = x.dtype
        for name in self._active_in_layer:
            x = self._fold(self.oft_R[name](self._unfold(x)), x.shape)
        return self.base_layer(x.astype(dtype))


class Embedding(OFTLayer):
    """OFT around an embedding (weight (num_embeddings, dim)): the looked-up vectors are rotated, ``E R``; the
    rotations live in ``oft_embedding_R``, HF's name."""

    adapter_layer_names = ("oft_embedding_R",)

    def features(self, base_layer):
        num_embeddings, dim = base_weight(base_layer).shape
        return dim, num_embeddings, dim

    def rotate_weight(self, weight, matrix):
        return weight @ matrix

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        dtype = result.dtype
        for name in self._active_in_layer:
            result = self.oft_embedding_R[name](result)
        return result.astype(dtype)


def dispatch_oft_layer(target, adapter_name, config):
    """The OFT layer for ``target``; a clear error for layer types OFT cannot wrap (GPT-2's Conv1D, as in HF)."""
    if isinstance(target, (EmbeddingLayer, nn.Embedding)):
        return Embedding(target, adapter_name, config)
    if isinstance(target, nn.Conv2d):
        return Conv2d(target, adapter_name, config)
    if isinstance(target, (LinearLayer, nn.Dense)) and not isinstance(target, Conv1D):
        if config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to True but the target module is a Linear layer with (out, in) "
                          "weights. Setting fan_in_fan_out to False.")
            config.fan_in_fan_out = False
        return Linear(target, adapter_name, config)
    raise TypeError(f"Target module {type(target).__name__} is not supported. Currently, only Linear/Dense, Conv2d "
                    "and Embedding layers are supported by OFT.")
