"""Shared pieces of the model forwards: input checks, attention, losses and HF-style outputs.

``construct`` returns a plain ``dict`` holding only the entries that were computed: graph mode (``mindspore.jit``)
differentiates plain dicts exactly but cuts gradients through custom output classes. Calling a model from Python
turns that dict into a :class:`ModelOutput` (``out.loss``, ``out["loss"]``, ``out[0]``); inside ``mindspore.jit``
read outputs by key.
"""
import functools
import math
import sys
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import mindspore as ms
from mindspore import Tensor, mint, nn, ops
from mindspore.ops.primitive import constexpr

NEG_INF = -1e9
_batch_matmul = ops.BatchMatMul()
_matmul = ops.MatMul()
_batch_matmul_nt = ops.BatchMatMul(transpose_b=True)


# ----- input checks -------------------------------------------------------------------------------------------------
# Shapes are constants in both modes, so shape checks run as ``constexpr`` functions: plain Python in PyNative and
# at compile time under ``mindspore.jit`` (the ValueError surfaces from the compile). Value checks (token ids,
# labels) need the data, so they run only in PyNative and are skipped while compiling.


def _jit_marker():
    return 0


@constexpr(check=False)
def _is_none(obj):
    return obj is None


def in_jit():
    """``True`` while ``mindspore.jit`` / graph mode compiles the caller, ``False`` in PyNative.

    Graph mode hands a constexpr function-valued arguments as ``None`` (the trick of MindSpore's own
    ``mindspore.graph.api._run_in_jit``, whose local import graph mode cannot parse).
    """
    return _is_none(_jit_marker)


def _fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _known(*dims):
    return all(d is not None and d >= 0 for d in dims)


@constexpr(check=False)
def _check_input_shapes(ids_shape, embeds_shape, mask_shape, position_shape, type_shape, past_length, max_positions,
                        position_offset, limit_name, prefix, length_limit):
    ids, embeds, mask = prefix + "input_ids", prefix + "inputs_embeds", prefix + "attention_mask"
    if ids_shape is None and embeds_shape is None:
        raise ValueError(f"You have to specify either {ids} or {embeds}")
    if ids_shape is not None and embeds_shape is not None:
        raise ValueError(f"You cannot specify both {ids} and {embeds} at the same time")
    if ids_shape is not None:
        if len(ids_shape) != 2:
            hint = f"; add a batch dimension, e.g. {ids}[None]" if len(ids_shape) == 1 else ""
            raise ValueError(f"{ids} must be 2-D (batch_size, sequence_length), got shape {_fmt_shape(ids_shape)}"
                             f"{hint}")
        batch, seq, name = ids_shape[0], ids_shape[1], ids
    else:
        if len(embeds_shape) != 3:
            hint = f"; add a batch dimension, e.g. {embeds}[None]" if len(embeds_shape) == 2 else ""
            raise ValueError(f"{embeds} must be 3-D (batch_size, sequence_length, hidden_size), got shape "
                             f"{_fmt_shape(embeds_shape)}{hint}")
        batch, seq, name = embeds_shape[0], embeds_shape[1], embeds
    if batch == 0 or seq == 0:
        raise ValueError(f"{name} is empty (shape {_fmt_shape(ids_shape or embeds_shape)}): a batch needs at least "
                         "one sequence of at least one token")
    if mask_shape is not None:
        expected = (batch, past_length + seq)
        if len(mask_shape) != 2 or (_known(*mask_shape, batch, seq) and tuple(mask_shape) != expected):
            covers = f" ({past_length} past/prefix + {seq} input positions)" if past_length else ""
            raise ValueError(f"{mask} has shape {_fmt_shape(mask_shape)} but {name} has shape "
                             f"{_fmt_shape(ids_shape or embeds_shape)}: expected {_fmt_shape(expected)}{covers}")
    if position_shape is not None and (len(position_shape) != 2 or (
            _known(*position_shape, batch, seq) and (position_shape[1] != seq or position_shape[0] not in (1, batch)))):
        raise ValueError(f"position_ids has shape {_fmt_shape(position_shape)}; expected ({batch}, {seq}) or "
                         f"(1, {seq}) to match {name}")
    if type_shape is not None and (len(type_shape) != 2 or (
            _known(*type_shape, batch, seq) and (type_shape[1] != seq or type_shape[0] not in (1, batch)))):
        raise ValueError(f"token_type_ids has shape {_fmt_shape(type_shape)}; expected ({batch}, {seq}) to match "
                         f"{name}")
    if length_limit and max_positions is not None and position_shape is None and _known(seq):
        needed = past_length + seq + position_offset
        if needed > max_positions:
            past = f" + {past_length} past/prefix" if past_length else ""
            raise ValueError(f"{name} has {seq} tokens{past} but the model has {max_positions} position embeddings "
                             f"({limit_name}={max_positions}); the longest input it takes is "
                             f"{max_positions - position_offset - past_length} tokens: truncate the input")


@constexpr(check=False)
def _check_mask_shape(mask_shape, expected, name, what):
    if len(mask_shape) != 2 or (_known(*mask_shape, *expected) and tuple(mask_shape) != tuple(expected)):
        raise ValueError(f"{name} has shape {_fmt_shape(mask_shape)} but {what} has {expected[0]} sequences of "
                         f"{expected[1]} positions: expected {_fmt_shape(expected)}")


def check_attention_mask(mask, batch, length, name, what):
    """Shape check (both modes): ``mask`` is ``None`` or ``(batch, length)``, the shape of ``what``."""
    if mask is not None:
        _check_mask_shape(_shape(mask), (batch, length), name, what)


def _shape(x):
    return None if x is None else tuple(x.shape)


def _out_of_range_values(x, low, high):
    """Sorted distinct values of ``x`` (a Tensor or array) outside ``[low, high)``."""
    a = x.asnumpy() if isinstance(x, Tensor) else np.asarray(x)
    bad = a[(a < low) | (a >= high)]
    return sorted({int(v) for v in np.unique(bad)})


def _describe(values, limit=10):
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > limit else "")


def check_ids_in_range(x, name, high, what):
    """PyNative only: raise a ValueError naming the values of ``x`` outside ``[0, high)``."""
    if x is None or in_jit():
        return
    if isinstance(x, Tensor) and x.dtype in (ms.float16, ms.float32, ms.float64, ms.bfloat16):
        raise ValueError(f"{name} must be integer ids, got a {x.dtype} tensor")
    bad = _out_of_range_values(x, 0, high)
    if bad:
        raise ValueError(f"{name} must be in [0, {high}) ({what}), got {_describe(bad)}")


def check_model_inputs(input_ids=None, inputs_embeds=None, attention_mask=None, past_length=0, vocab_size=None,
                       position_ids=None, max_positions=None, position_offset=0, limit_name="max_position_embeddings",
                       token_type_ids=None, type_vocab_size=None, prefix="", length_limit=True):
    """Checks at a model's forward entry, before any lookup: shapes (both modes) and values (PyNative only).

    Shapes: ``input_ids`` 2-D (``inputs_embeds`` 3-D), non-empty; ``attention_mask`` ``(batch, past_length + seq)``;
    ``position_ids``/``token_type_ids`` ``(batch or 1, seq)``; with ``max_positions``, ``length_limit`` and no
    ``position_ids``, ``past_length + seq + position_offset <= max_positions``. Values: ids in ``[0, vocab_size)``,
    position ids in ``[0, max_positions)``, token types in ``[0, type_vocab_size)``. ``prefix`` (``"decoder_"``)
    names the inputs. Cheap: shapes are Python tuples, the value checks read the (integer) inputs once.
    """
    _check_input_shapes(_shape(input_ids), _shape(inputs_embeds), _shape(attention_mask), _shape(position_ids),
                        _shape(token_type_ids), past_length, max_positions, position_offset, limit_name, prefix,
                        length_limit)
    if in_jit():
        return
    if vocab_size is not None:
        check_ids_in_range(input_ids, prefix + "input_ids", vocab_size, f"vocab_size={vocab_size}")
    if max_positions is not None:
        check_ids_in_range(position_ids, "position_ids", max_positions,
                           f"the model has {limit_name}={max_positions} position embeddings: shorten the input or "
                           "generate fewer tokens")
    if type_vocab_size is not None:
        check_ids_in_range(token_type_ids, "token_type_ids", type_vocab_size, f"type_vocab_size={type_vocab_size}")


def attention_bias(attention_mask, q_len, kv_len, causal):
    """Additive attention bias of shape (batch or 1, 1, q_len, kv_len), or ``None`` when nothing is masked.

    ``attention_mask`` (batch, kv_len) marks real tokens with 1; with ``causal`` query i sees keys up to
    ``i + kv_len - q_len`` (the cached prefix plus itself).
    """
    bias = None
    if causal:
        rows = ops.arange(q_len).view(q_len, 1) + (kv_len - q_len)
        cols = ops.arange(kv_len).view(1, kv_len)
        bias = ops.select(cols <= rows, ops.zeros((q_len, kv_len), ms.float32),
                          ops.full((q_len, kv_len), NEG_INF, dtype=ms.float32)).view(1, 1, q_len, kv_len)
    if attention_mask is not None:
        batch = attention_mask.shape[0]
        pad = (1.0 - attention_mask.astype(ms.float32)).view(batch, 1, 1, kv_len) * NEG_INF
        bias = pad if bias is None else bias + pad
    return bias


def as_float32(x):
    """``x`` in float32, without a cast op when it already is."""
    return x if x.dtype == ms.float32 else x.astype(ms.float32)


class _SoftmaxExplicitBroadcast(nn.Cell):
    """softmax over the last axis whose backward broadcasts explicitly (see :func:`attention_softmax`)."""

    def construct(self, x):
        return ops.softmax(x, -1)

    def bprop(self, x, out, dout):  # pylint: disable=unused-argument
        dot = (dout * out).sum(-1, keepdims=True)
        return (out * (dout - expand(dot, out.shape)),)


_softmax_explicit_broadcast = _SoftmaxExplicitBroadcast()


def attention_softmax(scores, recomputed=False):
    """softmax over the last axis of attention scores, in the form that keeps least memory in each mode.

    In a compiled CPU graph every broadcasting binary op keeps two int64 index maps of its output's size for the
    graph's life, and MindSpore's softmax backward subtracts a (..., 1) tensor from the scores (16 bytes a score,
    in every layer). Compiled, the softmax therefore gets a backward that broadcasts explicitly; inside a
    recomputed (gradient-checkpointed) block, whose recompute pass does not reach a custom backward's saved
    output, it is ``exp(log_softmax)`` instead, built from kernels with their own backward. PyNative keeps
    MindSpore's softmax.
    """
    if not in_jit():
        return ops.softmax(scores, -1)
    if recomputed:
        return ops.exp(ops.log_softmax(scores, -1))
    return _softmax_explicit_broadcast(scores)


_gradient_graph = {"compiling": False}


@contextmanager
def compiling_gradient_graph():
    """While a step that takes gradients compiles (``mindpeft.training``'s steps enter this): :func:`swap_axes`
    uses ``mint.transpose`` there for large tensors, and :func:`concat` its own backward."""
    previous = _gradient_graph["compiling"]
    _gradient_graph["compiling"] = True
    try:
        yield
    finally:
        _gradient_graph["compiling"] = previous


@constexpr
def _in_gradient_graph():
    return _gradient_graph["compiling"]


VIEW_SWAP_MIN_ELEMENTS = 1 << 18
MATMUL_SWAP_MAX_AXIS = 64
# Below this many elements compiled graphs keep MindSpore's own swap, broadcast and LayerNorm backward kernels: the
# replacements pay off on large tensors only, and add compile time.
REPLACE_KERNELS_MIN_ELEMENTS = 1 << 14
_batch_matmul_tn = ops.BatchMatMul(transpose_a=True)


def replaces_kernels(shape):
    """Whether a tensor of ``shape`` is large enough for the kernel replacements (``REPLACE_KERNELS_MIN_ELEMENTS``)."""
    return math.prod(shape) >= REPLACE_KERNELS_MIN_ELEMENTS


@constexpr
def _swap_kind(shape, first, second):
    """How :func:`swap_axes` swaps two axes of ``shape`` here: ``"matmul"``, ``"view"`` or ``"kernel"``."""
    if not _gradient_graph["compiling"]:
        return "kernel"
    first, second = sorted((first % len(shape), second % len(shape)))
    if second == first + 1 and min(shape[first], shape[second]) <= MATMUL_SWAP_MAX_AXIS and replaces_kernels(shape):
        return "matmul"
    return "view" if math.prod(shape) >= VIEW_SWAP_MIN_ELEMENTS else "kernel"


@constexpr
def _matmul_swap_shapes(shape, first, second):
    """(outer, a, c, inner) of ``shape`` viewed around its adjacent axes ``first``/``second``, and the swapped
    shape."""
    axis = min(first % len(shape), second % len(shape))
    swapped = shape[:axis] + (shape[axis + 1], shape[axis]) + shape[axis + 2:]
    return math.prod(shape[:axis]), shape[axis], shape[axis + 1], math.prod(shape[axis + 2:]), swapped


@functools.lru_cache(maxsize=64)
def _constant_tensor(kind, shape, dtype):
    if kind == "identity":
        return Tensor(np.broadcast_to(np.eye(shape[-1], dtype=np.float32), shape).copy(), dtype)
    return Tensor(np.ones(shape, np.float32), dtype)


@constexpr
def _identity(batch, size, dtype):
    """A (batch, size, size) identity, one object per shape and dtype (one constant in a compiled graph)."""
    return _constant_tensor("identity", (batch, size, size), dtype)


@constexpr
def ones_constant(shape, dtype):
    """A tensor of ones, one object per shape and dtype (one constant in a compiled graph)."""
    return _constant_tensor("ones", tuple(shape), dtype)


def _swap_adjacent_by_matmul(x, first, second):
    """``x.swapaxes(first, second)`` of adjacent axes as one or two batched products with an identity matrix
    (exact).

    The tensor is viewed as (outer, a, c, inner); a transposed operand of ``BatchMatMul`` moves the shorter of the
    two axes past the other in two steps, 4 * size * min(a, c) flops in all (one step when ``inner`` is 1)."""
    outer, a, c, inner, swapped = _matmul_swap_shapes(x.shape, first, second)
    if c <= a:  # (outer * a, c, inner) -> (outer * a, inner, c) -> (outer, c, a * inner)
        if inner > 1:
            x = _batch_matmul_tn(x.reshape(outer * a, c, inner), _identity(outer * a, c, x.dtype))
        x = _batch_matmul_nt(_identity(outer, c, x.dtype), x.reshape(outer, a * inner, c))
    else:  # (outer, a, c * inner) -> (outer, c * inner, a) -> (outer * c, a, inner)
        x = _batch_matmul_tn(x.reshape(outer, a, c * inner), _identity(outer, a, x.dtype))
        if inner > 1:
            x = _batch_matmul_nt(_identity(outer * c, a, x.dtype), x.reshape(outer * c, inner, a))
    return x.reshape(swapped)


def swap_axes(x, first=1, second=2):
    """``x.swapaxes(first, second)``, in compiled training steps without the ``Transpose`` kernel: on MindSpore
    2.10's CPU backend it keeps an int64 index map of the tensor's size for a compiled graph's life, in every layer,
    forward and backward (measured: 170 MB a layer at 4 x 512 x 2048), and ``mint.transpose``'s view is copied
    slowly by its consumer (GPT-2 small's LoRA step at 4 x 64: 1.27 -> 1.50 s). Adjacent axes one of which is at
    most ``MATMUL_SWAP_MAX_AXIS`` long (attention heads, image channels) in tensors of
    ``REPLACE_KERNELS_MIN_ELEMENTS`` or more are swapped by batched products with an identity matrix (smaller ones
    take less time to compile as views or kernels), which keep nothing and are exact (12 BERT-base attention blocks
    at 8 x 128, forward and backward: 0.45 s and 653 MiB, against 0.45 s and 1236 MiB with the kernel, 0.98 s and
    651 MiB with the view);
    other swaps of ``VIEW_SWAP_MIN_ELEMENTS`` or more use ``mint.transpose``. Forward graphs (evaluation,
    ``generate``) keep ``swapaxes``: a forward-only graph of eight or more GPT-2 layers built from the view op takes
    MindSpore 2.10's graph scheduler minutes (measured)."""
    if in_jit():
        kind = _swap_kind(x.shape, first, second)
        if kind == "matmul":
            return _swap_adjacent_by_matmul(x, first, second)
        if kind == "view":
            return mint.transpose(x, first, second)
    return x.swapaxes(first, second)


@constexpr
def _expand_plan(value_shape, value_dtype, shape):
    """(outer, repeats, inner) when ``value_shape``, right-aligned to ``shape``, repeats over one contiguous run of
    its axes (a float tensor), else ``None``."""
    if value_dtype not in (ms.float32, ms.float16) or len(value_shape) > len(shape) or not replaces_kernels(shape):
        return None
    padded = (1,) * (len(shape) - len(value_shape)) + tuple(value_shape)
    axes = [i for i, (size, target) in enumerate(zip(padded, shape)) if size != target]
    if not axes or any(padded[i] != 1 for i in axes) or axes[-1] - axes[0] + 1 != len(axes):
        return None
    return math.prod(shape[:axes[0]]), math.prod(shape[axes[0]:axes[-1] + 1]), math.prod(shape[axes[-1] + 1:])


def expand(value, shape):
    """``ops.broadcast_to(value, shape)``, as a product with a column of ones where ``value`` repeats over one run of
    axes (exact: one product a element). On MindSpore 2.10's CPU backend the ``BroadcastTo`` kernel and the
    ``ReduceSum`` of its gradient are slow (a row broadcast to 1024 x 768 and its gradient: 4.0 ms against 1.6 ms
    as a product, measured)."""
    plan = _expand_plan(value.shape, value.dtype, shape)
    if plan is None:
        return ops.broadcast_to(value, shape)
    outer, repeats, inner = plan
    if outer == 1:
        out = _matmul(ones_constant((repeats, 1), value.dtype), value.reshape(1, inner))
    elif inner == 1:
        out = _matmul(value.reshape(outer, 1), ones_constant((1, repeats), value.dtype))
    else:
        out = _batch_matmul(ones_constant((outer, repeats, 1), value.dtype), value.reshape(outer, 1, inner))
    return out.reshape(shape)


class _ConcatSlicingBackward(nn.Cell):
    """``ops.cat`` of two tensors over ``axis`` whose backward narrows the gradient to each one's part."""

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def construct(self, first, second):
        return ops.cat((first, second), axis=self.axis)

    def bprop(self, first, second, out, dout):  # pylint: disable=unused-argument
        size = first.shape[self.axis]
        return (ops.narrow(dout, self.axis, 0, size),
                ops.narrow(dout, self.axis, size, second.shape[self.axis]))


_concat_channels = _ConcatSlicingBackward(1)
_concat_sequence = _ConcatSlicingBackward(-2)


def concat(tensors, axis):
    """``ops.cat(tensors, axis)`` (``axis`` 1 or -2). In compiled training steps the backward narrows the gradient:
    MindSpore 2.10's own (``SplitWithSize``) is rebuilt on CPU with a warning when an input comes from a view op,
    as :func:`swap_axes`' large swaps there do (cached keys and values with a prefix, ViT's class token before the
    patches, Segformer's fused stages).
    A custom backward takes a fixed number of inputs, so more than two tensors are joined pairwise."""
    if not (in_jit() and _in_gradient_graph()):
        return ops.cat(tensors, axis=axis)
    if axis not in (1, -2):
        raise ValueError(f"concat: axis {axis} is not 1 or -2")
    pair = _concat_channels if axis == 1 else _concat_sequence
    joined = tensors[0]
    for tensor in tensors[1:]:
        joined = pair(joined, tensor)
    return joined


def scaled_dot_product_attention(query, key, value, bias, scale, dropout=None):
    """softmax(q k^T * scale + bias) v over (batch, heads, seq, head_dim) tensors; softmax in float32."""
    scores = _batch_matmul_nt(query, key)
    if scale != 1.0:
        scores = scores * scale
    scores = as_float32(scores)
    if bias is not None:  # same-shape Add, computed after the scores (see layers.broadcast_like)
        scores = scores + expand(ops.depend(bias, scores), scores.shape)
    # the block's cells, dropout included, are marked by Cell.recompute (gradient checkpointing)
    recomputed = dropout is not None and dropout._has_config_recompute  # pylint: disable=protected-access
    probs = attention_softmax(scores, recomputed)
    if value.dtype != ms.float32:
        probs = probs.astype(value.dtype)
    if dropout is not None:
        probs = dropout(probs)
    return _batch_matmul(probs, value)  # ops.matmul on 4-D input broadcasts: slower, and keeps more memory


def split_heads(x, num_heads, head_dim):
    """(batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)."""
    batch, seq = x.shape[0], x.shape[1]
    return swap_axes(x.view(batch, seq, num_heads, head_dim))


def merge_heads(x):
    """(batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim)."""
    batch, heads, seq, head_dim = x.shape
    return swap_axes(x).view(batch, seq, heads * head_dim)


class _LogSoftmaxRows(nn.Cell):
    """``log_softmax`` over the last axis of a 2-D tensor whose backward is element-wise ops and a product with a
    column of ones: MindSpore 2.10's CPU ``LogSoftmaxGrad`` took 97 ms on LLaMA's 512 x 32000 logits."""

    def construct(self, x):
        return ops.log_softmax(x, -1)

    def bprop(self, x, out, dout):  # pylint: disable=unused-argument
        rows, classes = out.shape
        total = _matmul(dout, ones_constant((classes, 1), out.dtype))
        scaled = _batch_matmul(total.reshape(rows, 1, 1), ops.exp(out).reshape(rows, 1, classes))
        return (dout - scaled.reshape(rows, classes),)


_log_softmax_rows = _LogSoftmaxRows()


def cross_entropy(logits, labels, ignore_index=-100):
    """Mean cross entropy of (rows, classes) ``logits`` over the rows whose label is not ``ignore_index``
    (NaN when every row is ignored, like PyTorch).

    Built on ``log_softmax`` and a gather: on CPU this is about 10x faster than ``ops.cross_entropy``, forward and
    backward.
    """
    _check_label_count(_shape(logits), _shape(labels))
    if not in_jit():
        _check_label_values(labels, logits.shape[-1], ignore_index)
    labels = labels.astype(ms.int32)
    valid = labels != ignore_index
    safe_labels = ops.select(valid, labels, ops.zeros_like(labels))
    log_probs = _log_softmax_rows(as_float32(logits))  # in PyNative too: the same rounding in both modes
    picked = ops.gather_elements(log_probs, 1, safe_labels.view(-1, 1)).view(-1)
    weights = valid.astype(ms.float32)
    return -(picked * weights).sum() / weights.sum()


@constexpr(check=False)
def _check_label_count(logits_shape, labels_shape):
    if len(logits_shape) != 2:
        raise ValueError(f"cross_entropy expects (rows, classes) logits, got shape {_fmt_shape(logits_shape)}")
    rows = 1
    for d in labels_shape:
        rows *= d
    if _known(logits_shape[0], rows) and rows != logits_shape[0]:
        raise ValueError(f"labels of shape {_fmt_shape(labels_shape)} hold {rows} labels but there are "
                         f"{logits_shape[0]} rows of logits to score")


def _check_label_values(labels, num_classes, ignore_index):
    a = labels.asnumpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if a.dtype.kind == "f" and (a != np.round(a)).any():
        fractional = sorted(set(a[a != np.round(a)].tolist()))
        raise ValueError(f"labels must be whole-number class indices, got {_describe(fractional)} (float labels "
                         "of multi-label classification are not supported)")
    bad = sorted({int(v) for v in np.unique(a[((a < 0) | (a >= num_classes)) & (a != ignore_index)])})
    if bad:
        raise ValueError(f"labels must be in [0, {num_classes}) or {ignore_index} (ignored), got {_describe(bad)}")


@constexpr(check=False)
def _check_token_labels(logits_shape, labels_shape, what):
    tokens = tuple(logits_shape[:-1])
    if len(labels_shape) != len(tokens) or (_known(*labels_shape, *tokens) and tuple(labels_shape) != tokens):
        raise ValueError(f"labels have shape {_fmt_shape(labels_shape)} but the {what} have shape "
                         f"{_fmt_shape(tokens)}: token-level labels need one label per token (-100 to ignore one)")


@constexpr(check=False)
def _check_sequence_labels(logits_shape, labels_shape):
    count = 1
    for d in labels_shape:
        count *= d
    if len(labels_shape) > 2 or (_known(count, logits_shape[0]) and count != logits_shape[0]):
        raise ValueError(f"labels have shape {_fmt_shape(labels_shape)} but the batch has {logits_shape[0]} "
                         "sequences: sequence classification needs one label per sequence")


def causal_lm_loss(logits, labels):
    """Next-token cross entropy; labels equal to -100 are ignored.

    The labels are shifted left (the last position gets -100) rather than the logits sliced, which would copy the
    (batch, seq, vocab) logits forward and backward.
    """
    _check_token_labels(_shape(logits), _shape(labels), "input tokens")
    batch, vocab = labels.shape[0], logits.shape[-1]
    ignored = ops.full((batch, 1), -100, dtype=labels.dtype)
    shift_labels = ops.concat((labels[:, 1:], ignored), 1)
    return cross_entropy(logits.view(-1, vocab), shift_labels.view(-1))


def token_loss(logits, labels):
    """Per-token cross entropy (seq2seq and token classification); labels equal to -100 are ignored."""
    _check_token_labels(_shape(logits), _shape(labels), "tokens scored")
    return cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


def sequence_classification_loss(logits, labels, num_labels):
    """MSE for one label (regression), cross entropy otherwise."""
    _check_sequence_labels(_shape(logits), _shape(labels))
    if num_labels == 1:
        return ops.mse_loss(logits.view(-1).astype(ms.float32), labels.view(-1).astype(ms.float32))
    return cross_entropy(logits.view(-1, num_labels), labels.view(-1))


def with_optional(out, **entries):
    """``out`` plus the ``entries`` that are not ``None``."""
    for key, value in entries.items():
        if value is not None:
            out[key] = value
    return out


# ----- HF-style output objects ---------------------------------------------------------------------------------------
# Measured on MindSpore 2.10 (ast ``mindspore.jit``): inside a compiled graph only plain dict/tuple/list outputs keep
# gradients. A dict subclass, dataclass, namedtuple or ``jit_class`` object built in a graph becomes a JIT Fallback
# (PyExecute) node and the gradient is silently cut to zero; attribute access on a graph dict does not compile
# ("'Dictionary' object has no attribute 'loss'"). So ``construct`` keeps returning a plain dict, and the dict is
# turned into a :class:`ModelOutput` only where Python runs it: in ``Cell.__call__`` (PyNative, or the result of a
# GRAPH_MODE Cell call), which graph mode never executes when it compiles a call to the Cell.


def _created_by_jit_fallback():
    """True when the caller runs inside a compiled graph through JIT Fallback (MindSpore's ``eval_script``)."""
    try:
        from mindspore.graph._parse import parser as _parser
        code = _parser.eval_script.__code__
    except (ImportError, AttributeError):
        return False
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


class ModelOutput(OrderedDict):
    """HF ``transformers.ModelOutput`` semantics over a model's output dict.

    ``out.loss``, ``out["loss"]`` and ``out[0]`` (integer index or slice over the entries that are not ``None``),
    ``keys()/values()/items()``, ``to_tuple()``, ``in``, ``len`` and iteration over the keys. Subclasses list their
    ``_fields`` in transformers' order; entries are stored in that order (extra keys after them), ``None`` entries
    are left out, and a missing field reads as ``None`` through its attribute, like transformers' dataclasses.

    Built by :func:`to_model_output` from the plain dict a ``construct`` returns; never build one inside
    ``construct`` or a ``mindspore.jit`` function (graph mode would cut its gradients, so that raises).
    """

    _fields = ()

    def __init__(self, *args, **kwargs):
        if _created_by_jit_fallback():
            raise TypeError(
                f"{type(self).__name__} cannot be created inside mindspore.jit / graph mode: MindSpore compiles it "
                "as a JIT Fallback object and silently cuts the gradients through it. Return a plain dict from "
                "construct; mindpeft models turn it into a ModelOutput outside the graph (Cell.__call__). Inside "
                "jitted code, read outputs by key: outputs[\"loss\"].")
        super().__init__()
        entries = dict(*args, **kwargs)
        for key in self._fields:
            if entries.get(key) is not None:
                OrderedDict.__setitem__(self, key, entries[key])
        for key, value in entries.items():
            if value is not None and key not in self._fields:
                OrderedDict.__setitem__(self, key, value)

    def __getattr__(self, name):
        # Only reached when normal attribute lookup fails.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            if name in type(self)._fields:
                return None
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}; it holds "
                                 f"{list(self.keys())}") from None

    def __setattr__(self, name, value):
        if name in type(self)._fields or name in self:
            self[name] = value
        else:
            super().__setattr__(name, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __setitem__(self, key, value):
        if value is None:
            if key in self:
                OrderedDict.__delitem__(self, key)
            return
        OrderedDict.__setitem__(self, key, value)

    def _refuse(self, name):
        raise Exception(f"You cannot use ``{name}`` on a {type(self).__name__} instance.")

    def __delitem__(self, *args, **kwargs):
        self._refuse("__delitem__")

    def setdefault(self, *args, **kwargs):
        self._refuse("setdefault")

    def pop(self, *args, **kwargs):
        self._refuse("pop")

    def update(self, *args, **kwargs):
        self._refuse("update")

    def __reduce__(self):
        return type(self), (dict(self),)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"

    def to_tuple(self):
        """The entries that are not ``None``, in order."""
        return tuple(self.values())


def _output_class(name, fields, doc):
    return type(name, (ModelOutput,), {"_fields": tuple(fields), "__doc__": doc, "__module__": __name__})


_DEC = ("decoder_hidden_states", "decoder_attentions", "cross_attentions", "encoder_last_hidden_state",
        "encoder_hidden_states", "encoder_attentions")
BaseModelOutput = _output_class("BaseModelOutput", ("last_hidden_state", "hidden_states", "attentions"),
                                "Backbone output.")
BaseModelOutputWithPast = _output_class(
    "BaseModelOutputWithPast", ("last_hidden_state", "past_key_values", "hidden_states", "attentions"),
    "Decoder backbone output with its key/value cache.")
BaseModelOutputWithPastAndCrossAttentions = _output_class(
    "BaseModelOutputWithPastAndCrossAttentions",
    ("last_hidden_state", "past_key_values", "hidden_states", "attentions", "cross_attentions"),
    "Decoder backbone output with its key/value cache (GPT-2, T5 stacks).")
BaseModelOutputWithPoolingAndCrossAttentions = _output_class(
    "BaseModelOutputWithPoolingAndCrossAttentions",
    ("last_hidden_state", "pooler_output", "hidden_states", "past_key_values", "attentions", "cross_attentions"),
    "Encoder backbone output with the pooled first token (BERT, RoBERTa).")
CausalLMOutputWithPast = _output_class(
    "CausalLMOutputWithPast", ("loss", "logits", "past_key_values", "hidden_states", "attentions"),
    "Causal language model output.")
CausalLMOutputWithCrossAttentions = _output_class(
    "CausalLMOutputWithCrossAttentions",
    ("loss", "logits", "past_key_values", "hidden_states", "attentions", "cross_attentions"),
    "Causal language model output (GPT-2).")
SequenceClassifierOutput = _output_class("SequenceClassifierOutput", ("loss", "logits", "hidden_states", "attentions"),
                                         "Sequence classification output.")
SequenceClassifierOutputWithPast = _output_class(
    "SequenceClassifierOutputWithPast", ("loss", "logits", "past_key_values", "hidden_states", "attentions"),
    "Sequence classification output of a decoder.")
TokenClassifierOutput = _output_class("TokenClassifierOutput", ("loss", "logits", "hidden_states", "attentions"),
                                      "Token classification output.")
MaskedLMOutput = _output_class("MaskedLMOutput", ("loss", "logits", "hidden_states", "attentions"),
                               "Masked language model output.")
QuestionAnsweringModelOutput = _output_class(
    "QuestionAnsweringModelOutput", ("loss", "start_logits", "end_logits", "hidden_states", "attentions"),
    "Extractive question answering output.")
Seq2SeqModelOutput = _output_class("Seq2SeqModelOutput", ("last_hidden_state", "past_key_values") + _DEC,
                                   "Encoder-decoder backbone output.")
Seq2SeqLMOutput = _output_class("Seq2SeqLMOutput", ("loss", "logits", "past_key_values") + _DEC,
                                "Encoder-decoder language model output.")


def infer_output_class(keys):
    """The transformers output class whose fields order ``keys`` like transformers does."""
    keys = set(keys)
    if "start_logits" in keys:
        return QuestionAnsweringModelOutput
    if "encoder_last_hidden_state" in keys:
        return Seq2SeqLMOutput if "logits" in keys else Seq2SeqModelOutput
    if "logits" in keys:
        return CausalLMOutputWithPast
    if "pooler_output" in keys:
        return BaseModelOutputWithPoolingAndCrossAttentions
    if "last_hidden_state" in keys:
        return BaseModelOutputWithPastAndCrossAttentions
    return ModelOutput


def to_model_output(out, output_class=None):
    """``out`` as a :class:`ModelOutput` when it is a plain ``dict`` (``output_class`` or one inferred from its
    keys); anything else (tuples, Tensors, ModelOutputs) unchanged. Call it outside compiled graphs only."""
    if type(out) is not dict:
        return out
    return (output_class or infer_output_class(out))(out)


class ModelOutputMixin:
    """Put first in a Cell's bases: calling the Cell returns a :class:`ModelOutput` where ``construct`` returns a
    plain dict (``class PreTrainedModel(ModelOutputMixin, nn.Cell)``).

    Graph mode compiles a call to the Cell straight into ``construct`` and never runs ``__call__``, so compiled
    code keeps the plain dict and its exact gradients; read it by key there (``outputs["loss"]``).
    ``output_class`` (a class attribute) names the class; ``None`` infers it from the keys.
    """

    output_class = None

    def __call__(self, *args, **kwargs):
        return to_model_output(super().__call__(*args, **kwargs), self.output_class)
