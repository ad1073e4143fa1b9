"""Quantized linear Cells holding bitsandbytes' storage: :class:`Linear8bitLt` (int8 + row absmax ``SCB``) and
:class:`Linear4bit` (packed NF4/FP4 codes + block absmax, optionally double-quantized).

``construct`` dequantizes the weight with classic ``ops`` (a table gather and block scaling, bit-identical to
:mod:`mindpeft.quantization.functional`) and runs one float MatMul; the backward dequantizes the weight again
instead of keeping it (bitsandbytes' ``MatMul4Bit`` does the same), so memory holds the quantized weights and one
layer's float weight at a time, in training too. Two things keep that true in a ``mindspore.jit`` graph on
MindSpore 2.10 CPU (measured): a tensor computed from Parameters alone is kept allocated for the graph's life, so
the codes and scales are made to depend on the layer's input (``ops.depend``) before dequantizing (double-quantized
scales, 4 bytes a block, are the exception: see :meth:`Linear4bit.block_scales`); and a
broadcasting multiply keeps two int64 index maps of its output, so the scales are broadcast explicitly first. In
a gradient-checkpointed block the layer is differentiated by MindSpore instead of the custom backward (see
``_DequantizingMatMul.without_custom_backward``): the recompute then dequantizes again. This is the
path on every device; Ascend's quantized matmul kernels (``WeightQuantBatchMatmul``) are not used here and not
tested.

The Parameters are named so the checkpoint keys follow from them (see :mod:`mindpeft.quantization.serialization`):
``weight`` (codes), ``weight_absmax``, ``weight_nested_absmax``, ``weight_nested_offset`` and ``SCB``.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..models.layers import broadcast_like, linear
from ..models.modeling_utils import write_parameter
from . import functional as F


def _frozen(array, name):
    return Parameter(Tensor(np.ascontiguousarray(array)), name=name, requires_grad=False)


def _scale_blocks(values, scales, blocksize, count):
    """The first ``count`` of the flat ``values`` times the scale of their block of ``blocksize``."""
    padding = scales.shape[0] * blocksize - values.shape[0]
    if padding:
        values = ops.cat([values, ops.zeros(padding, values.dtype)])
    scaled = _scale_rows(values.reshape(-1, blocksize), scales).reshape(-1)
    return scaled if scaled.shape[0] == count else scaled[:count]


def _scale_rows(rows, scales):
    """Each row of the 2-D ``rows`` times its entry of ``scales``, with the scales broadcast explicitly (see the
    module docstring)."""
    return rows * ops.broadcast_to(scales.reshape(-1, 1), rows.shape)


def _add_bias(out, bias):
    """``out + bias`` (``out`` 2-D) without a broadcasting add (see the module docstring)."""
    return out if bias is None else out + broadcast_like(bias.astype(out.dtype), out)


class _DequantizingMatMul(nn.Cell):
    """``x W^T`` (``x`` 2-D) for a weight given as its codes and scales. Its backward gives ``x`` the gradient
    ``dy W`` with ``W`` dequantized anew, and the codes and scales none."""

    def weight_from(self, codes, scales):
        """The float32 weight (out, in)."""
        raise NotImplementedError

    def _weight(self, codes, scales, anchor):
        """The weight in ``anchor``'s dtype, computed after ``anchor`` (see the module docstring)."""
        weight = self.weight_from(ops.depend(codes, anchor), ops.depend(scales, anchor))
        return weight if weight.dtype == anchor.dtype else weight.astype(anchor.dtype)

    def construct(self, x, codes, scales):
        return linear(x, self._weight(codes, scales, x))

    def bprop(self, x, codes, scales, out, dout):
        return ops.matmul(dout, self._weight(codes, scales, dout)), ops.zeros_like(codes), ops.zeros_like(scales)

    def without_custom_backward(self, x, codes, scales):
        """``construct`` differentiated by MindSpore, for recomputed (gradient-checkpointed) blocks: the recompute
        pass does not reach a custom backward's inputs, so the forward's input and output of every projection
        stayed allocated (measured: 144 MB a layer at hidden 1024 and 4 x 512 tokens, compiled); the plain backward
        uses the weight dequantized again in the recompute."""
        return linear(x, ops.stop_gradient(self._weight(codes, scales, x)))


class _Int8MatMul(_DequantizingMatMul):
    def weight_from(self, codes, scales):
        return _scale_rows(codes.astype(ms.float32), scales) * Tensor(F.INT8_SCALE)


class _FourBitMatMul(_DequantizingMatMul):
    def __init__(self, code, shape, blocksize):
        super().__init__()
        high, low = np.divmod(np.arange(256), 16)
        self.code_pairs = Tensor(np.stack([code[high], code[low]], axis=1))  # byte -> its two values
        self.weight_shape = shape
        self.blocksize = blocksize

    def weight_from(self, codes, scales):
        count = self.weight_shape[0] * self.weight_shape[1]
        if count % self.blocksize == 0:  # whole blocks: gather straight into (blocks, pairs, 2), one scaling
            pairs = ops.gather(self.code_pairs, codes.reshape(-1, self.blocksize // 2).astype(ms.int32), 0)
            return _scale_rows(pairs.reshape(-1, self.blocksize), scales).reshape(self.weight_shape)
        values = ops.gather(self.code_pairs, codes.reshape(-1).astype(ms.int32), 0).reshape(-1)
        return _scale_blocks(values, scales, self.blocksize, count).reshape(self.weight_shape)


class QuantizedLinear(nn.Cell):
    """Shared part of the quantized linear layers: ``y = x W^T + b`` with ``W`` dequantized in ``construct``.

    ``from_conv1d``: the layer replaces GPT-2's ``Conv1D``, whose checkpoint weights are (in, out); they are
    transposed before quantizing, as transformers does.
    """

    bits = None

    def __init__(self, in_features, out_features, bias=True, from_conv1d=False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.from_conv1d = from_conv1d
        self.bias = Parameter(Tensor(np.zeros(out_features, np.float32)), name="bias") if bias else None

    @property
    def shape(self):
        return self.out_features, self.in_features

    def quantize_weight(self, weight):
        """Quantize the float ``weight`` (out, in) into this layer's storage."""
        raise NotImplementedError

    def dequantize_numpy(self):
        """The dequantized float32 weight (out, in) as a numpy array (bit-identical to ``construct``'s)."""
        raise NotImplementedError

    def dequantized_weight(self, dtype=ms.float32):
        """The dequantized weight (out, in) as a tensor of ``dtype`` (usable in ``construct``)."""
        raise NotImplementedError

    def storage(self):
        """``{name: Parameter}`` of the quantized weight's storage (the bias not included)."""
        raise NotImplementedError

    def _project(self, x2d, codes, scales):
        """``x2d W^T`` through ``self.matmul``; in a block ``Cell.recompute`` marked, without its custom backward."""
        if self._has_config_recompute:  # pylint: disable=protected-access
            return self.matmul.without_custom_backward(x2d, codes, scales)
        return self.matmul(x2d, codes, scales)

    def extend_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Linear8bitLt(QuantizedLinear):
    """int8 weight ``weight`` (out, in) and float32 row absmax ``SCB`` (out,): ``W = weight * SCB / 127``.

    The forward runs in the input's dtype with the dequantized weight (weight-only quantization: unlike
    bitsandbytes' LLM.int8 matmul the activations stay in float).
    """

    bits = 8

    def __init__(self, in_features, out_features, bias=True, from_conv1d=False):
        super().__init__(in_features, out_features, bias, from_conv1d)
        self.weight = _frozen(np.zeros((out_features, in_features), np.int8), "weight")
        self.SCB = _frozen(np.zeros(out_features, np.float32), "SCB")
        self.matmul = _Int8MatMul()

    def quantize_weight(self, weight):
        codes, row_absmax = F.quantize_int8(weight)
        write_parameter(self.weight, codes)
        write_parameter(self.SCB, row_absmax)

    def dequantize_numpy(self):
        return F.dequantize_int8(self.weight.asnumpy(), self.SCB.asnumpy())

    def dequantized_weight(self, dtype=ms.float32):
        return self.matmul.weight_from(self.weight, self.SCB).astype(dtype)

    def storage(self):
        return {"weight": self.weight, "SCB": self.SCB}

    def construct(self, x):
        out = _add_bias(self._project(x.reshape(-1, self.in_features), self.weight, self.SCB), self.bias)
        return out.reshape(x.shape[:-1] + (self.out_features,))


class Linear4bit(QuantizedLinear):
    """Packed 4-bit codes ``weight`` (ceil(n / 2), 1) uint8, two a byte, high nibble first, and one absmax per block
    of ``blocksize`` values: ``weight_absmax`` float32, or with ``compress_statistics`` uint8 codes of the 8-bit
    dynamic map scaled by ``weight_nested_absmax`` (one per 256 blocks) plus ``weight_nested_offset``.

    The forward casts the input to ``compute_dtype``, multiplies by the weight dequantized to it, and casts the
    result back (bitsandbytes' ``Linear4bit``).
    """

    bits = 4

    def __init__(self, in_features, out_features, bias=True, from_conv1d=False, quant_type="nf4",
                 compress_statistics=False, compute_dtype=ms.float32, blocksize=F.BLOCKSIZE):
        super().__init__(in_features, out_features, bias, from_conv1d)
        if quant_type not in F.CODES:
            raise ValueError(f"quant_type={quant_type!r} is not supported; use 'nf4' or 'fp4'")
        self.quant_type = quant_type
        self.compress_statistics = compress_statistics
        self.compute_dtype = compute_dtype
        self.blocksize = blocksize
        self.weight_dtype = "float32"  # the float dtype the weight was quantized from (bitsandbytes' quant state)
        self.numel = in_features * out_features
        self.n_blocks = math.ceil(self.numel / blocksize)
        self.matmul = _FourBitMatMul(F.CODES[quant_type], self.shape, blocksize)
        self.weight = _frozen(np.zeros(((self.numel + 1) // 2, 1), np.uint8), "weight")
        if compress_statistics:
            self.nested_code = Tensor(F.DYNAMIC_MAP)
            self.weight_absmax = _frozen(np.zeros(self.n_blocks, np.uint8), "weight_absmax")
            nested_blocks = math.ceil(self.n_blocks / F.NESTED_BLOCKSIZE)
            self.weight_nested_absmax = _frozen(np.zeros(nested_blocks, np.float32), "weight_nested_absmax")
            self.weight_nested_offset = _frozen(np.zeros(1, np.float32), "weight_nested_offset")
        else:
            self.weight_absmax = _frozen(np.zeros(self.n_blocks, np.float32), "weight_absmax")

    def quantize_weight(self, weight):
        state = F.quantize_4bit(weight, self.quant_type, self.blocksize, self.compress_statistics)
        write_parameter(self.weight, state["weight"])
        write_parameter(self.weight_absmax, state["absmax"])
        if self.compress_statistics:
            write_parameter(self.weight_nested_absmax, state["nested_absmax"])
            write_parameter(self.weight_nested_offset, np.reshape(state["nested_offset"], 1))

    def _nested(self):
        if not self.compress_statistics:
            return {}
        return {"nested_absmax": self.weight_nested_absmax.asnumpy(),
                "nested_offset": self.weight_nested_offset.asnumpy()[0]}

    def dequantize_numpy(self):
        return F.dequantize_4bit(self.weight.asnumpy(), self.weight_absmax.asnumpy(), self.shape, self.quant_type,
                                 self.blocksize, **self._nested())

    def block_scales(self):
        """The float32 absmax of each block (tensor). Double-quantized scales are computed from the Parameters
        alone, so a compiled graph keeps them and their few intermediate steps (4 bytes a block each) for its life:
        anchored after each layer's input instead, those steps stayed allocated too, and more of them (measured:
        14 MB a layer more on the 1.1B LLaMA, compiled and checkpointed)."""
        if not self.compress_statistics:
            return self.weight_absmax
        values = ops.gather(self.nested_code, self.weight_absmax.astype(ms.int32), 0)
        scaled = _scale_blocks(values, self.weight_nested_absmax, F.NESTED_BLOCKSIZE, self.n_blocks)
        return ops.stop_gradient(scaled + ops.broadcast_to(self.weight_nested_offset, scaled.shape))

    def dequantized_weight(self, dtype=ms.float32):
        return self.matmul.weight_from(self.weight, self.block_scales()).astype(dtype)

    def storage(self):
        names = ["weight", "weight_absmax"] + (["weight_nested_absmax", "weight_nested_offset"]
                                               if self.compress_statistics else [])
        return {name: getattr(self, name) for name in names}

    def construct(self, x):
        x2d = x.reshape(-1, self.in_features).astype(self.compute_dtype)
        out = _add_bias(self._project(x2d, self.weight, self.block_scales()), self.bias)
        return out.reshape(x.shape[:-1] + (self.out_features,)).astype(x.dtype)

    def extend_repr(self):
        return (f"{super().extend_repr()}, quant_type={self.quant_type}, "
                f"compress_statistics={self.compress_statistics}, compute_dtype={self.compute_dtype}")
