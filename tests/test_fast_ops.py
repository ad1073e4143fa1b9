"""The CPU-fast building blocks (loss, GELUs, Conv1D, LayerNorm, attention softmax, axis swaps, broadcasts, runtime
setting) match PyTorch
in values and gradients."""
import contextlib
import os

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor

from mindpeft import models
from mindpeft.models import model_outputs
from mindpeft.models.layers import (ACTIVATIONS, Activation, Conv1D, LayerNorm, RMSNorm, RotaryEmbedding,
                                    apply_rotary_pos_emb, gelu_erf, gelu_tanh)
from mindpeft.models.model_outputs import (attention_softmax, compiling_gradient_graph, concat, cross_entropy,
                                           swap_axes)
from mindpeft.utils.runtime import HOST_BLOCKING_ENV, tune_cpu_runtime
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model


def _value_and_input_grad(fn, *inputs):
    return ms.value_and_grad(fn, grad_position=0)(*inputs)


@pytest.mark.parametrize("jit", [False, True])
def test_cross_entropy_matches_torch_with_ignored_rows(jit):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 50)).astype(np.float32) * 3
    labels = rng.integers(0, 50, 12).astype(np.int32)
    labels[[2, 7]] = -100

    def loss_fn(x, y):
        return cross_entropy(x, y)

    fn = ms.jit(loss_fn) if jit else loss_fn
    loss, grad = _value_and_input_grad(fn, Tensor(logits), Tensor(labels))
    t_logits = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(t_logits, torch.tensor(labels, dtype=torch.long), ignore_index=-100)
    expected.backward()
    assert abs(float(loss) - expected.item()) < 1e-5
    assert max_diff(grad, t_logits.grad) < 1e-6
    assert np.abs(grad.asnumpy()[[2, 7]]).max() == 0  # ignored rows get no gradient


def test_cross_entropy_custom_ignore_index_and_all_ignored_is_nan():
    logits = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4) / 5)
    got = float(cross_entropy(logits, Tensor(np.array([1, 4, 3], np.int32)), ignore_index=4))
    expected = torch.nn.functional.cross_entropy(torch.arange(12.0).reshape(3, 4) / 5, torch.tensor([1, 4, 3]),
                                                 ignore_index=4)
    assert abs(got - expected.item()) < 1e-5
    assert np.isnan(float(cross_entropy(logits, Tensor(np.full(3, -100, np.int32)))))


def _torch_rms_norm(x, weight, bias, eps):  # pylint: disable=unused-argument
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("norm_class,torch_norm", [
    (LayerNorm, lambda x, weight, bias, eps: torch.nn.functional.layer_norm(x, (48,), weight, bias, eps)),
    (RMSNorm, _torch_rms_norm)])
def test_norms_match_torch_with_gradients(jit, norm_class, torch_norm, monkeypatch):
    """Compiled, LayerNorm's and RMSNorm's backwards are built from element-wise ops and products with ones that
    recompute the row statistics from the input (weight and bias gradients included)."""
    monkeypatch.setattr(model_outputs, "REPLACE_KERNELS_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 5, 48)) * 3 + 1).astype(np.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)
    norm = norm_class(48, eps=1e-5)
    params = [p for p in (norm.weight, getattr(norm, "bias", None)) if p is not None]
    for param in params:
        param.set_data(Tensor(rng.normal(size=48).astype(np.float32)))

    def loss_fn(t):
        return (norm(t) * Tensor(weights)).sum()

    fn = ms.jit(loss_fn) if jit else loss_fn
    loss, (dx, grads) = ms.value_and_grad(fn, grad_position=0, weights=params)(Tensor(x))
    t_x = torch.tensor(x, requires_grad=True)
    t_params = [torch.tensor(p.asnumpy(), requires_grad=True) for p in params]
    expected = (torch_norm(t_x, *t_params, *([None] * (2 - len(params))), 1e-5) * torch.tensor(weights)).sum()
    expected.backward()
    assert abs(float(loss) - expected.item()) < 1e-4
    assert max_diff(dx, t_x.grad) < 1e-5
    for grad, t_param in zip(grads, t_params):
        assert max_diff(grad, t_param.grad) < 1e-5


@pytest.mark.parametrize("ms_fn,approximate", [(gelu_erf, "none"), (gelu_tanh, "tanh")])
def test_elementwise_gelus_match_torch(ms_fn, approximate):
    x = np.linspace(-6, 6, 241).astype(np.float32)

    def summed(t):
        return ms_fn(t).sum()

    value = ms_fn(Tensor(x)).asnumpy()
    _, grad = _value_and_input_grad(summed, Tensor(x))
    t_x = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.gelu(t_x, approximate=approximate)
    expected.sum().backward()
    assert max_diff(value, expected.detach()) < 1e-5
    assert max_diff(grad, t_x.grad) < 1e-5


TORCH_ACTIVATIONS = {"gelu": torch.nn.functional.gelu,
                     "gelu_new": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
                     "gelu_pytorch_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
                     "gelu_fast": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
                     "relu": torch.relu, "silu": torch.nn.functional.silu, "swish": torch.nn.functional.silu,
                     "tanh": torch.tanh}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("jit", [False, True])
def test_activations_and_gated_activations_match_torch_with_gradients(name, jit):
    """``act(x)`` and ``act.gated(gate, up)``: compiled, their backward recomputes the derivative from the inputs
    (keeping neither ``act(x)`` nor the element-wise intermediates); PyNative differentiates the functions."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-6, 6, 241), rng.normal(size=47) * 2]).astype(np.float32).reshape(2, 4, 36)
    up = rng.normal(size=x.shape).astype(np.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)
    act = Activation(name)

    def plain(t, u):  # pylint: disable=unused-argument
        return (act(t) * Tensor(weights)).sum()

    def gated(t, u):
        return (act.gated(t, u) * Tensor(weights)).sum()

    torch_act = TORCH_ACTIVATIONS[name]
    for fn, torch_fn in ((plain, lambda t, u: torch_act(t)), (gated, lambda t, u: torch_act(t) * u)):
        compiled = ms.jit(fn) if jit else fn
        loss, (dx, dup) = ms.value_and_grad(compiled, grad_position=(0, 1))(Tensor(x), Tensor(up))
        t_x, t_up = torch.tensor(x, requires_grad=True), torch.tensor(up, requires_grad=True)
        expected = (torch_fn(t_x, t_up) * torch.tensor(weights)).sum()
        expected.backward()
        assert abs(float(loss) - expected.item()) < 1e-4, fn.__name__
        assert max_diff(dx, t_x.grad) < 1e-5, fn.__name__
        assert max_diff(dup, np.zeros_like(up) if t_up.grad is None else t_up.grad) < 1e-5, fn.__name__


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("position_rows", [2, 1])
def test_rotary_embedding_matches_torch_with_gradients(jit, position_rows):
    """Compiled, the rotation's backward is built from the cos/sin tables alone (it is linear in its input); the
    tables have a row per sequence or one for all."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 8)).astype(np.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]], np.int32)[:position_rows]
    cos, sin = RotaryEmbedding(8)(Tensor(positions))

    def loss_fn(t):
        return (apply_rotary_pos_emb(t, cos, sin) * Tensor(weights)).sum()

    fn = ms.jit(loss_fn) if jit else loss_fn
    loss, dx = _value_and_input_grad(fn, Tensor(x))
    t_x = torch.tensor(x, requires_grad=True)
    t_cos, t_sin = torch.tensor(cos.asnumpy()), torch.tensor(sin.asnumpy())
    rotated = torch.cat([-t_x[..., 4:], t_x[..., :4]], -1)
    expected = ((t_x * t_cos + rotated * t_sin) * torch.tensor(weights)).sum()
    expected.backward()
    assert abs(float(loss) - expected.item()) < 1e-4
    assert max_diff(dx, t_x.grad) < 1e-5


@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8), (2, 2, 3, 8)])
def test_conv1d_keeps_leading_dims(shape):
    layer = Conv1D(6, 8)
    layer.bias.set_data(Tensor(np.arange(6, dtype=np.float32)))
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    got = layer(Tensor(x)).asnumpy()
    assert got.shape == shape[:-1] + (6,)
    assert max_diff(got, x @ layer.weight.asnumpy() + np.arange(6)) < 1e-5


def test_question_answering_loss_matches_transformers(tiny_model_dir):
    path = tiny_model_dir("bert", "qa")
    ids = rand_ids((3, 9))
    start, end = np.array([1, 4, 30]), np.array([2, 8, 5])  # 30 is past the sequence: clamped, then ignored
    ref = torch_model(path, "bert", "qa")
    with torch.no_grad():
        expected = ref(torch_ids(ids), start_positions=torch_ids(start), end_positions=torch_ids(end)).loss
    got = models.BertForQuestionAnswering.from_pretrained(path)(ms_ids(ids), start_positions=ms_ids(start),
                                                                end_positions=ms_ids(end))["loss"]
    assert abs(float(got) - expected.item()) < 1e-5


def test_cpu_runtime_runs_graphs_host_blocking_unless_the_user_chose(monkeypatch):
    assert ms.get_context("device_target") == "CPU"
    assert os.environ[HOST_BLOCKING_ENV] == "1"  # set when mindpeft was imported
    monkeypatch.setenv(HOST_BLOCKING_ENV, "0")
    tune_cpu_runtime()
    assert os.environ[HOST_BLOCKING_ENV] == "0"
    monkeypatch.delenv(HOST_BLOCKING_ENV)
    tune_cpu_runtime()
    assert os.environ[HOST_BLOCKING_ENV] == "1"


@pytest.mark.parametrize("jit,recomputed", [(False, False), (True, False), (True, True)])
def test_attention_softmax_matches_torch_in_each_form(jit, recomputed):
    """PyNative softmax, the compiled explicit-broadcast backward and the recomputed exp(log_softmax): equal values
    and gradients (exp(log_softmax) to 1e-5: its exp rounds once more)."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 5, 7)).astype(np.float32) * 4
    weights = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)

    def loss_fn(x):
        return (attention_softmax(x, recomputed) * Tensor(weights)).sum()

    fn = ms.jit(loss_fn) if jit else loss_fn
    loss, grad = _value_and_input_grad(fn, Tensor(scores))
    t_scores = torch.tensor(scores, requires_grad=True)
    expected = (torch.softmax(t_scores, -1) * torch.tensor(weights)).sum()
    expected.backward()
    assert abs(float(loss) - expected.item()) < 1e-5
    assert max_diff(grad, t_scores.grad) < (1e-5 if recomputed else 1e-6)


@pytest.mark.parametrize("shape,axes", [((2, 3, 4, 5), (1, 2)), ((2, 4, 3, 5), (1, 2)), ((2, 3, 4, 5), (2, 3)),
                                        ((3, 5, 4), (-1, -2)), ((3, 4, 5), (2, 1)), ((6, 2, 3), (0, 1))])
@pytest.mark.parametrize("jit,gradient_graph,path", [(False, False, "kernel"), (True, False, "kernel"),
                                                     (True, True, "matmul"), (True, True, "view")])
def test_swap_axes_matches_numpy_with_gradient(shape, axes, jit, gradient_graph, path, monkeypatch):
    """swapaxes; in graphs compiled by the training steps, products with an identity matrix (an axis of at most
    MATMUL_SWAP_MAX_AXIS) or mint.transpose (tensors of at least VIEW_SWAP_MIN_ELEMENTS, here all): exact values
    and gradients."""
    monkeypatch.setattr(model_outputs, "VIEW_SWAP_MIN_ELEMENTS", 0)
    monkeypatch.setattr(model_outputs, "REPLACE_KERNELS_MIN_ELEMENTS", 0)
    if path == "view":
        monkeypatch.setattr(model_outputs, "MATMUL_SWAP_MAX_AXIS", 0)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    expected = x.swapaxes(*axes)
    weights = np.random.default_rng(0).normal(size=expected.shape).astype(np.float32)

    first, second = axes

    def swap(t):
        return swap_axes(t, first, second) * 1.0

    def loss_fn(t):
        return (swap_axes(t, first, second) * Tensor(weights)).sum()

    with compiling_gradient_graph() if gradient_graph else contextlib.nullcontext():
        assert model_outputs._swap_kind(shape, *axes) == path  # pylint: disable=protected-access
        swapped = (ms.jit(swap) if jit else swap)(Tensor(x))
        _, grad = _value_and_input_grad(ms.jit(loss_fn) if jit else loss_fn, Tensor(x))
    np.testing.assert_array_equal(swapped.asnumpy(), expected)
    np.testing.assert_array_equal(grad.asnumpy(), weights.swapaxes(*axes))


def test_swap_axes_in_half_precision_is_exact(monkeypatch):
    monkeypatch.setattr(model_outputs, "REPLACE_KERNELS_MIN_ELEMENTS", 0)
    x = np.random.default_rng(1).normal(size=(2, 6, 3, 4)).astype(np.float16)
    def swap(t):
        return swap_axes(t) * 1.0

    with compiling_gradient_graph():
        swapped = ms.jit(swap)(Tensor(x))
    assert swapped.dtype == ms.float16
    np.testing.assert_array_equal(swapped.asnumpy(), x.swapaxes(1, 2))


@pytest.mark.parametrize("axis", [1, -2])
@pytest.mark.parametrize("jit,gradient_graph", [(False, False), (True, False), (True, True)])
def test_concat_of_head_swapped_tensors_matches_numpy_with_gradients(jit, gradient_graph, axis, monkeypatch):
    """concat's slicing backward in training steps' graphs, with a view input (a cached prefix before new keys)
    and three tensors (joined pairwise there)."""
    monkeypatch.setattr(model_outputs, "VIEW_SWAP_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(0)
    prefix = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    x = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    joined = np.concatenate([prefix, x.swapaxes(1, 2), 2 * prefix], axis)
    weights = rng.normal(size=joined.shape).astype(np.float32)

    def loss_fn(p, t):
        return (concat((p, swap_axes(t), p * 2.0), axis) * Tensor(weights)).sum()

    fn = ms.jit(loss_fn) if jit else loss_fn
    np.testing.assert_array_equal(concat((Tensor(prefix), swap_axes(Tensor(x)), Tensor(2 * prefix)), axis).asnumpy(),
                                  joined)
    with compiling_gradient_graph() if gradient_graph else contextlib.nullcontext():
        loss, grads = ms.value_and_grad(fn, grad_position=(0, 1))(Tensor(prefix), Tensor(x))
    assert abs(float(loss) - float((joined * weights).sum())) < 1e-4
    first, middle, last = np.split(weights, [prefix.shape[axis], 2 * prefix.shape[axis]], axis)
    np.testing.assert_allclose(grads[0].asnumpy(), first + 2 * last, atol=1e-5)
    np.testing.assert_allclose(grads[1].asnumpy(), middle.swapaxes(1, 2), atol=1e-6)


def test_swap_axes_paths():
    """Training steps' graphs swap short axes (attention heads) by products with an identity, other large tensors
    through the view op, small ones with the Transpose kernel; other graphs always with the kernel."""
    kind = model_outputs._swap_kind  # pylint: disable=protected-access
    with compiling_gradient_graph():
        assert kind((4, 512, 32, 64), 1, 2) == kind((4, 32, 512, 64), 1, 2) == "matmul"
        assert kind((4, 512, 128, 128), 1, 2) == "view"  # both axes longer than MATMUL_SWAP_MAX_AXIS
        assert kind((4, 100, 100, 4), 1, 2) == "kernel"  # under VIEW_SWAP_MIN_ELEMENTS
        assert kind((2, 7, 4, 16), 1, 2) == "kernel"  # under REPLACE_KERNELS_MIN_ELEMENTS
        assert kind((4, 512, 32, 64), 1, 3) == "view"  # not adjacent
    assert kind((4, 512, 32, 64), 1, 2) == "kernel"


@pytest.mark.parametrize("value_shape,shape", [((5,), (2, 3, 5)), ((2, 3, 1), (2, 3, 5)), ((2, 1, 1, 5), (2, 3, 4, 5)),
                                               ((1, 1, 4, 5), (2, 3, 4, 5)), ((2, 1, 4, 1), (2, 3, 4, 5))])
def test_expand_matches_broadcast_to_with_gradient(value_shape, shape, monkeypatch):
    """Broadcasts as products with ones (leading, trailing and middle runs of repeated axes) are exact; a shape
    repeated over two separate runs keeps ops.broadcast_to."""
    monkeypatch.setattr(model_outputs, "REPLACE_KERNELS_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(0)
    value = rng.normal(size=value_shape).astype(np.float32)
    weights = rng.normal(size=shape).astype(np.float32)

    def expanded(v):
        return model_outputs.expand(v, shape) * 1.0

    def loss_fn(v):
        return (model_outputs.expand(v, shape) * Tensor(weights)).sum()

    np.testing.assert_array_equal(ms.jit(expanded)(Tensor(value)).asnumpy(), np.broadcast_to(value, shape))
    _, grad = _value_and_input_grad(ms.jit(loss_fn), Tensor(value))
    padded = (1,) * (len(shape) - len(value_shape)) + value_shape
    repeated = tuple(i for i, size in enumerate(padded) if size != shape[i])
    np.testing.assert_allclose(grad.asnumpy(), weights.sum(axis=repeated, keepdims=True).reshape(value_shape),
                               rtol=1e-5, atol=1e-5)


def test_expand_paths():
    plan = model_outputs._expand_plan  # pylint: disable=protected-access
    assert plan((4, 1), ms.float32, (4, 4096)) == (4, 4096, 1)
    assert plan((4, 1), ms.float32, (4, 4095)) is None  # under REPLACE_KERNELS_MIN_ELEMENTS
    assert plan((2, 1, 1, 80), ms.float16, (2, 3, 40, 80)) == (2, 120, 80)
    assert plan((50,), ms.float32, (20, 30, 50)) == (1, 600, 50)
    assert plan((2, 1, 40, 1), ms.float32, (2, 3, 40, 80)) is None  # two runs
    assert plan((200, 1), ms.int32, (200, 300)) is None
