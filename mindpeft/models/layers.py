"""Basic Cells whose parameter names match PyTorch (``weight``/``bias``), so HF checkpoints load by key.

They use classic ``mindspore.ops`` that have CPU, GPU and Ascend kernels and compile under ``mindspore.jit``.
"""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.seed import _get_graph_seed
from mindspore.ops.primitive import constexpr
import mindspore as ms

from .model_outputs import NEG_INF, expand, in_jit, ones_constant, replaces_kernels


def init_param(shape, std=0.02, name=None, dtype=np.float32):
    """A Parameter drawn from N(0, std) (std=0 gives zeros), using numpy's global RNG."""
    data = np.zeros(shape, dtype) if std == 0 else np.random.normal(0.0, std, shape).astype(dtype)
    return Parameter(Tensor(data), name=name)


def uniform_param(shape, bound, name=None):
    """A Parameter drawn from U(-bound, bound), as torch's kaiming_uniform_(a=sqrt(5)) does for Linear."""
    return Parameter(Tensor(np.random.uniform(-bound, bound, shape).astype(np.float32)), name=name)


_matmul = ops.MatMul()
_batch_matmul = ops.BatchMatMul()
_matmul_nt = ops.MatMul(transpose_b=True)
_matmul_tn = ops.MatMul(transpose_a=True)


def add_bias(out, bias):
    """``out + bias`` for a 2-D ``out`` and a 1-D ``bias``, as ``BiasAdd``: in compiled graphs on CPU a broadcasting
    ``Add`` keeps two int64 index maps of its output's size (four times a float32 output) for the life of the graph
    (MindSpore 2.10), which made a GPT-2 forward hold 40 MB a layer at 4 x 64 tokens; ``BiasAdd`` does not."""
    return ops.bias_add(out, bias.astype(out.dtype) if bias.dtype != out.dtype else bias)


def broadcast_like(value, x):
    """``value`` broadcast to ``x``'s shape and computed after ``x``, as the same-shape operand of an element-wise op
    with ``x``. Two things measured in compiled graphs on CPU (MindSpore 2.10) make this worth it: a broadcasting
    binary op keeps two int64 index maps of its output's size (see :func:`add_bias`), and a tensor computed from
    Parameters and constants alone (a norm weight, rotary tables, a causal mask, broadcast to activation size) is
    kept for the graph's life instead of being freed after its last use."""
    return expand(ops.depend(value, x), x.shape)


def linear(x, weight, bias=None):
    """``x W^T + b`` for ``x`` of any rank, as one 2-D MatMul: on CPU ``ops.dense``/``ops.matmul`` on 3-D input and
    their gradients (explicit transposes, weight broadcasts) are about 2x slower. ``x`` is cast to the weight's
    dtype (MatMul takes one dtype): float16 models keep some weights in float32 (T5's ``wo``)."""
    if x.dtype != weight.dtype:
        x = x.astype(weight.dtype)
    out = _matmul_nt(x.view(-1, x.shape[-1]), weight)
    if bias is not None:
        out = add_bias(out, bias)
    return out.view(x.shape[:-1] + (weight.shape[0],))


def ones_param(shape, name=None):
    return Parameter(Tensor(np.ones(shape, np.float32)), name=name)


class Linear(nn.Cell):
    """``y = x W^T + b`` with ``weight`` of shape (out_features, in_features), like ``torch.nn.Linear``."""

    def __init__(self, in_features, out_features, bias=True, std=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        if std is None:
            self.weight = uniform_param((out_features, in_features), 1.0 / math.sqrt(in_features), "weight")
        else:
            self.weight = init_param((out_features, in_features), std, "weight")
        self.bias = Parameter(Tensor(np.zeros(out_features, np.float32)), name="bias") if bias else None

    def construct(self, x):
        return linear(x, self.weight, self.bias)

    def extend_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv1D(nn.Cell):
    """GPT-2's transposed linear layer: ``weight`` of shape (in_features, out_features), ``y = x W + b``."""

    def __init__(self, out_features, in_features, std=0.02):
        super().__init__()
        self.nf = out_features
        self.nx = in_features
        self.weight = init_param((in_features, out_features), std, "weight")
        self.bias = Parameter(Tensor(np.zeros(out_features, np.float32)), name="bias")

    def construct(self, x):
        # One 2-D MatMul: ops.matmul on 3-D input broadcasts the weight over the batch first (slow on CPU).
        if x.dtype != self.weight.dtype:
            x = x.astype(self.weight.dtype)
        return add_bias(_matmul(x.view(-1, self.nx), self.weight), self.bias).view(x.shape[:-1] + (self.nf,))

    def extend_repr(self):
        return f"nf={self.nf}, nx={self.nx}"


class Embedding(nn.Cell):
    """Lookup table with ``weight`` of shape (num_embeddings, embedding_dim)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, std=0.02):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.weight = init_param((num_embeddings, embedding_dim), std, "weight")

    def construct(self, input_ids):
        return ops.gather(self.weight, input_ids, 0)

    def extend_repr(self):
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"


class _LayerNormRowsBackward(nn.Cell):
    """``LayerNorm`` over the last axis of a float32 input whose backward is built from element-wise ops and products
    with a column of ones (row means and row broadcasts), recomputing the row statistics: MindSpore 2.10's CPU
    ``LayerNormGrad`` takes 14 ms on 1024 x 768 (torch: 0.35 ms), this about a third of it."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x, weight, bias):
        return self.norm(x, weight, bias)[0]

    def bprop(self, x, weight, bias, out, dout):  # pylint: disable=unused-argument
        size = x.shape[-1]
        x = ops.depend(x, dout).reshape(-1, size)  # else the statistics are computed in the forward pass and kept
        dout = dout.reshape(x.shape)
        column = ones_constant((size, 1), x.dtype)
        centred = x - expand(_matmul(x, column) * (1.0 / size), x.shape)
        rstd = ops.rsqrt(_matmul(centred * centred, column) * (1.0 / size) + self.eps)
        rstd_rows = expand(rstd, x.shape)
        normed = centred * rstd_rows
        scaled = dout * expand(ops.depend(weight, dout), x.shape)
        mean_scaled = _matmul(scaled, column) * (1.0 / size)
        mean_projection = _matmul(scaled * normed, column) * (1.0 / size)
        dx = rstd_rows * scaled - expand(rstd * mean_scaled, x.shape) - normed * expand(rstd * mean_projection, x.shape)
        row = ones_constant((x.shape[0], 1), x.dtype)
        return (dx.reshape(out.shape), _matmul_tn(row, dout * normed).reshape(size),
                _matmul_tn(row, dout).reshape(size))


@constexpr
def _rows_backward_applies(shape, dtype, weight_dtype):
    return dtype == ms.float32 and weight_dtype == ms.float32 and replaces_kernels(shape)


class LayerNorm(nn.Cell):
    """Layer normalisation over the last dimension with ``weight``/``bias``. Compiled in float32 on
    ``REPLACE_KERNELS_MIN_ELEMENTS`` or more, its backward is :class:`_LayerNormRowsBackward`'s."""

    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.normalized_shape = (hidden_size,)
        self.eps = eps
        self.weight = ones_param(hidden_size, "weight")
        self.bias = Parameter(Tensor(np.zeros(hidden_size, np.float32)), name="bias")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.rows_backward = _LayerNormRowsBackward(eps)

    def construct(self, x):
        if in_jit() and _rows_backward_applies(x.shape, x.dtype, self.weight.dtype):
            return self.rows_backward(x, self.weight, self.bias)
        return self.norm(x, self.weight, self.bias)[0]


class _RMSNormRowsBackward(nn.Cell):
    """RMS norm over the last axis of a float32 input whose backward recomputes the row scale from the input.
    Differentiated op by op the forward keeps four tensors of the input's size (the input, the broadcast scale, the
    broadcast weight and the normalised input; torch keeps two). Row means and broadcasts are products with columns
    of ones (not :func:`~mindpeft.models.model_outputs.expand`: see :class:`_RotaryFromTables`)."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def construct(self, x, weight):
        size = x.shape[-1]
        rows = x.reshape(-1, size)
        normed = rows * _repeat_columns(_inverse_rms(rows, self.eps), size)
        return (_repeat_rows(weight, rows.shape[0]) * normed).reshape(x.shape)

    def bprop(self, x, weight, out, dout):  # pylint: disable=unused-argument
        size = x.shape[-1]
        x = ops.depend(x, dout).reshape(-1, size)  # else the row scale is computed in the forward pass and kept
        dout = dout.reshape(x.shape)
        rstd = _inverse_rms(x, self.eps)
        rstd_rows = _repeat_columns(rstd, size)
        normed = x * rstd_rows
        scaled = dout * _repeat_rows(ops.depend(weight, dout), x.shape[0])
        mean_projection = _matmul(scaled * normed, ones_constant((size, 1), x.dtype)) * (1.0 / size)
        dx = rstd_rows * scaled - normed * _repeat_columns(rstd * mean_projection, size)
        row = ones_constant((x.shape[0], 1), x.dtype)
        return dx.reshape(out.shape), _matmul_tn(row, dout * normed).reshape(size)


def _inverse_rms(rows, eps):
    """1 / sqrt(mean(x^2) + eps) of each row of a 2-D tensor, as a (rows, 1) column."""
    size = rows.shape[-1]
    return ops.rsqrt(_matmul(rows * rows, ones_constant((size, 1), rows.dtype)) * (1.0 / size) + eps)


def _repeat_columns(column, size):
    """(rows, 1) -> (rows, size)."""
    return _matmul(column, ones_constant((1, size), column.dtype))


def _repeat_rows(vector, count):
    """(size,) -> (count, size)."""
    return _matmul(ones_constant((count, 1), vector.dtype), vector.reshape(1, -1))


def rms_norm(x, weight, eps):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last axis, computed in float32 and cast back."""
    dtype = x.dtype
    h = x.astype(ms.float32)
    variance = ops.mean(h * h, -1, keep_dims=True)
    h = h * expand(ops.rsqrt(variance + eps), h.shape)  # same-shape products (see add_bias)
    h = h.astype(dtype)
    return broadcast_like(weight, h) * h


class RMSNorm(nn.Cell):
    """Root-mean-square norm without mean centring or bias (T5 and LLaMA), computed in float32. Compiled in float32
    on ``REPLACE_KERNELS_MIN_ELEMENTS`` or more, its backward is :class:`_RMSNormRowsBackward`'s."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = ones_param(hidden_size, "weight")
        self.rows_backward = _RMSNormRowsBackward(eps)

    def construct(self, x):
        if in_jit() and _rows_backward_applies(x.shape, x.dtype, self.weight.dtype):
            return self.rows_backward(x, self.weight)
        return rms_norm(x, self.weight, self.eps)


def rotate_half(x):
    half = x.shape[-1] // 2
    return ops.cat([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary_pos_emb(x, cos, sin):
    """``x * cos + rotate_half(x) * sin`` with the (batch, 1, seq, head_dim) tables broadcast over the heads.
    Compiled, its backward is :class:`_RotaryFromTables`'s."""
    if in_jit():
        return _ROTARY_FROM_TABLES(x, cos, sin)
    return rotary(x, cos, sin)


def rotary(x, cos, sin):
    cos, sin = broadcast_like(cos, x), broadcast_like(sin, x)
    return x * cos + rotate_half(x) * sin


def rotate_half_transposed(x):
    """The transpose of :func:`rotate_half` (its gradient): ``[x2, -x1]`` for halves ``[x1, x2]``."""
    half = x.shape[-1] // 2
    return ops.cat([x[..., half:], -x[..., :half]], axis=-1)


def _over_heads(table, x):
    """A (batch or 1, 1, seq, dim) table repeated to the (batch, heads, seq, dim) shape of ``x``, as a batched
    product with a column of ones (exact; no branch: see :class:`_RotaryFromTables`)."""
    rows = table.shape[0]
    ones = ones_constant((rows, x.shape[0] // rows * x.shape[1], 1), table.dtype)
    return _batch_matmul(ones, table.reshape(rows, 1, -1)).reshape(x.shape)


class _RotaryFromTables(nn.Cell):
    """Rotary embedding whose backward keeps only the cos/sin tables: rotating is linear in ``x``, so its gradient
    is ``dout * cos + rotate_half^T(dout * sin)``. Differentiated op by op, the forward keeps the tables broadcast
    to the input's size and ``rotate_half(x)`` (torch keeps ``rotate_half(x)``). The tables get no gradient (they
    come from position ids). (Its forward repeats the tables itself: a function with an ``if`` in the forward of
    a Cell with a backward of its own, :func:`~mindpeft.models.model_outputs.expand` included, does not compile
    when the gradient is taken outside ``mindspore.jit``: "The pointer[func_graph->get_return()] is null",
    MindSpore 2.10.)"""

    def construct(self, x, cos, sin):
        return x * _over_heads(cos, x) + rotate_half(x) * _over_heads(sin, x)

    def bprop(self, x, cos, sin, out, dout):  # pylint: disable=unused-argument
        dx = dout * _over_heads(cos, dout) + rotate_half_transposed(dout * _over_heads(sin, dout))
        # float16 inputs times the float32 tables give float32: the gradient goes back in the input's dtype
        return dx.astype(x.dtype), ops.zeros_like(cos), ops.zeros_like(sin)


_ROTARY_FROM_TABLES = _RotaryFromTables()


class RotaryEmbedding(nn.Cell):
    """cos/sin tables of rotary position embedding (LLaMA, Qwen2, Mistral) for given position ids, shaped
    (batch, 1, seq, head_dim); ``factor`` divides the frequencies (linear RoPE scaling)."""

    def __init__(self, head_dim, theta=10000.0, factor=1.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        self.inv_freq = Tensor((inv_freq / factor).astype(np.float32))

    def construct(self, position_ids):
        freqs = position_ids.astype(ms.float32).expand_dims(-1) * self.inv_freq
        emb = ops.cat([freqs, freqs], axis=-1).expand_dims(1)
        return ops.cos(emb), ops.sin(emb)


def repeat_kv(x, n_rep):
    """(batch, kv_heads, seq, dim) -> (batch, kv_heads * n_rep, seq, dim) for grouped-query attention."""
    if n_rep == 1:
        return x
    batch, heads, seq, dim = x.shape
    return expand(x.expand_dims(2), (batch, heads, n_rep, seq, dim)).reshape(batch, heads * n_rep, seq, dim)


def sliding_window_bias(q_len, kv_len, window):
    """Additive bias (1, 1, q_len, kv_len) hiding the keys ``window`` or more positions before each query (query i
    sits at key position ``i + kv_len - q_len``): sliding-window attention of Mistral and Qwen2, added to the causal
    bias."""
    rows = ops.arange(q_len).view(q_len, 1) + (kv_len - q_len)
    cols = ops.arange(kv_len).view(1, kv_len)
    return ops.select(cols > rows - window, ops.zeros((q_len, kv_len), ms.float32),
                      ops.full((q_len, kv_len), NEG_INF, dtype=ms.float32)).view(1, 1, q_len, kv_len)


def _uniform_real(seed0, seed1):
    """A seeded ``UniformReal`` primitive. MindSpore 2.10 marks it deprecated in favour of ``mint.rand``, which has
    no CPU kernel, and would log so at every run; the notice is recorded as given instead."""
    try:
        from mindspore.common import _decorator

        _decorator.DEPRECATE_SET.add("UniformReal2.10.0")
    except (ImportError, AttributeError):
        pass
    return ops.UniformReal(seed=seed0, seed2=seed1)


class Dropout(nn.Cell):
    """Dropout that is the identity when ``p == 0`` or outside training mode.

    Each instance draws its mask from its own seeded uniform generator, seeded from ``mindspore.set_seed`` (via
    :func:`mindpeft.set_seed`) and the order in which Cells are created, so runs repeat exactly; :meth:`reseed`
    starts a new stream. ``mindspore.nn.Dropout`` is not used: measured on MindSpore 2.10 CPU, its kernel gives
    different masks from run to run with the same seed whenever the machine is busy.
    """

    def __init__(self, p=0.0):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.uniform = _uniform_real(*_get_graph_seed(0, "dropout")) if self.p > 0 else None

    def reseed(self, seed0, seed1):
        """Draw the following masks from a new stream (compiled graphs holding this Cell must be rebuilt)."""
        if self.p > 0:
            self.uniform = _uniform_real(seed0, seed1)

    def construct(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = (self.uniform(x.shape) >= self.p).astype(x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


def gelu_erf(x):
    """Exact GELU, ``x * Phi(x)``, from elementwise ops (faster than the GeLU kernel on CPU, forward and backward)."""
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    """The tanh approximation of GELU (GPT-2's ``gelu_new``) from elementwise ops, about 4x faster than the GeLU
    kernel on CPU. Written as ``x * sigmoid(2u)``, equal to ``0.5 x (1 + tanh(u))``: MindSpore's CPU tanh is off by
    up to 1e-4."""
    return x * ops.sigmoid((2.0 * GELU_TANH_SCALE) * (x + 0.044715 * x * x * x))


def tanh(x):
    """tanh as ``2 sigmoid(2x) - 1``: MindSpore's CPU tanh kernel is off by up to 1e-4 (around |x| = 5, on 8+
    elements), this form by at most 2e-6, gradient included. About 5x slower than the kernel on large tensors; the
    models use it on pooled (batch, hidden) features."""
    return 2.0 * ops.sigmoid(2.0 * x) - 1.0


def gelu_erf_derivative(x):
    """Phi(x) + x phi(x)."""
    return (0.5 * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))
            + x * ops.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi)))


def gelu_tanh_derivative(x):
    """s + x s (1 - s) 2c (1 + 3 * 0.044715 x^2), with s = sigmoid(2c (x + 0.044715 x^3))."""
    square = x * x
    s = ops.sigmoid((2.0 * GELU_TANH_SCALE) * (x + 0.044715 * square * x))
    return s + x * s * (1.0 - s) * (2.0 * GELU_TANH_SCALE) * (1.0 + (3.0 * 0.044715) * square)


_relu = ops.ReLU()


def relu(x):
    return _relu(x)


def silu(x):
    return ops.silu(x)


def relu_derivative(x):
    return (x > 0).astype(x.dtype)


def silu_derivative(x):
    """s (1 + x (1 - s)), with s = sigmoid(x)."""
    s = ops.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def tanh_derivative(x):
    t = tanh(x)
    return 1.0 - t * t


# the activation functions HF configs name, with their derivatives (ReLU through its primitive: ``ops.relu`` in a
# custom backward does not compile, "The pointer[func_graph->get_return()] is null", MindSpore 2.10)
ACTIVATIONS = {"gelu": (gelu_erf, gelu_erf_derivative), "gelu_new": (gelu_tanh, gelu_tanh_derivative),
               "gelu_pytorch_tanh": (gelu_tanh, gelu_tanh_derivative), "gelu_fast": (gelu_tanh, gelu_tanh_derivative),
               "relu": (relu, relu_derivative), "silu": (silu, silu_derivative), "swish": (silu, silu_derivative),
               "tanh": (tanh, tanh_derivative)}


class Activation(nn.Cell):
    """The activation function HF configs name (``hidden_act``/``activation_function``) as a Cell: ``act(x)``, and
    ``act.gated(gate, up)`` for ``act(gate) * up`` (LLaMA's and T5's gated MLPs).

    Compiled, their backward keeps only the inputs and recomputes the derivative from them. Differentiated op by
    op, the element-wise GELUs keep three tensors of the input's size (``0.5 x``, ``1 + erf(.)`` and the erf input;
    the tanh form ``x``, ``x^2`` and the sigmoid), where torch keeps one (measured: 294 MiB of a 991 MiB BERT-base
    LoRA step at 8 x 128), and a gated MLP keeps ``act(gate)`` besides ``gate`` and ``up``. PyNative differentiates
    the functions as written (the tests compare the two)."""

    SUPPORTED = tuple(ACTIVATIONS)

    def __init__(self, name):
        super().__init__()
        if name not in ACTIVATIONS:
            raise ValueError(f"Unsupported activation function {name!r}; supported: {list(self.SUPPORTED)}")
        self.act_name = name
        self.function, derivative = ACTIVATIONS[name]
        self.from_input = _ActivationFromInput(self.function, derivative)
        self.gated_from_inputs = _GatedActivationFromInputs(self.function, derivative)

    def construct(self, x):
        if in_jit():
            return self.from_input(x)
        return self.function(x)

    def gated(self, gate, up):
        """``act(gate) * up``."""
        if in_jit():
            return self.gated_from_inputs(gate, up)
        return self.function(gate) * up


class _ActivationFromInput(nn.Cell):
    def __init__(self, function, derivative):
        super().__init__()
        self.function, self.derivative = function, derivative

    def construct(self, x):
        return self.function(x)

    def bprop(self, x, out, dout):  # pylint: disable=unused-argument
        x = ops.depend(x, dout)  # else the derivative is computed in the forward pass and kept
        return (dout * self.derivative(x),)


class _GatedActivationFromInputs(nn.Cell):
    def __init__(self, function, derivative):
        super().__init__()
        self.function, self.derivative = function, derivative

    def construct(self, gate, up):
        return self.function(gate) * up

    def bprop(self, gate, up, out, dout):  # pylint: disable=unused-argument
        gate = ops.depend(gate, dout)
        return dout * up * self.derivative(gate), dout * self.function(gate)
