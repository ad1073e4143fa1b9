"""Learning-rate schedules over mindspore.experimental.optim equal transformers' over torch optimizers."""
import numpy as np
import pytest
import torch
import transformers
import mindspore as ms
from mindspore import nn, ops
from mindspore.experimental import optim

from mindpeft import get_linear_schedule_with_warmup
from mindpeft.training import TrainStep, get_scheduler


_KEEP_ALIVE = []  # MindSpore caches compiled functions by name and id(): keep them alive, ids never reused


def _lrs_mindpeft(name, steps, warmup, total):
    optimizer = optim.AdamW(nn.Dense(2, 2).trainable_params(), lr=0.1)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(steps):
        lrs.append(float(scheduler.get_last_lr()[0]))
        scheduler.step()
    return lrs


def _lrs_transformers(name, steps, warmup, total):
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = transformers.get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("name", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_schedules_equal_transformers(name):
    ours, theirs = _lrs_mindpeft(name, 14, 3, 12), _lrs_transformers(name, 14, 3, 12)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-8)


def test_the_tutorial_call_and_bad_steps():
    optimizer = optim.AdamW(nn.Dense(2, 2).trainable_params(), lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=4)
    scheduler.step()
    assert abs(float(optimizer.param_groups[0]["lr"]) - 0.75e-3) < 1e-9
    with pytest.raises(ValueError, match="num_warmup_steps"):
        get_linear_schedule_with_warmup(optimizer, num_warmup_steps=5, num_training_steps=4)
    with pytest.raises(ValueError, match="num_training_steps"):
        get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=0)
    with pytest.raises(ValueError, match="lr_scheduler_type 'warmup_stable'"):
        get_scheduler("warmup_stable", optimizer)


def test_a_compiled_adamw_step_follows_the_schedule_like_torch():
    """``scheduler.step()`` between calls of a ``mindspore.jit`` step (hand-written, and TrainStep) changes the
    learning rate the compiled AdamW uses, without recompiling: the weights equal torch's AdamW under transformers'
    schedule after every step (warm-up, decay and the final lr of 0 included)."""
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    x, y = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    steps, warmup, total = 7, 2, 6

    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))
    optimizer = torch.optim.AdamW(linear.parameters(), lr=0.1, weight_decay=0.01)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    expected = []
    for _ in range(steps):
        optimizer.zero_grad()
        ((linear(torch.tensor(x)) - torch.tensor(y)) ** 2).mean().backward()
        optimizer.step()
        scheduler.step()
        expected.append(linear.weight.detach().numpy().copy())

    def run(build_step):
        dense = nn.Dense(3, 2, weight_init=ms.Tensor(weight), bias_init=ms.Tensor(bias))
        optimizer = optim.AdamW(dense.trainable_params(), lr=0.1, weight_decay=0.01)
        scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
        step = build_step(dense, optimizer)
        weights = []
        for _ in range(steps):
            step(x=ms.Tensor(x), y=ms.Tensor(y))
            scheduler.step()
            weights.append(dense.weight.asnumpy().copy())
        return weights

    def mse(dense):
        def loss_fn(x, y):
            return ((dense(x) - y) ** 2).mean()
        return loss_fn

    def hand_written(dense, optimizer):
        grad_fn = ms.value_and_grad(mse(dense), None, optimizer.parameters)

        @ms.jit
        def train_step(**batch):
            loss, grads = grad_fn(**batch)
            return ops.depend(loss, optimizer(grads))

        _KEEP_ALIVE.extend([grad_fn, train_step])
        return train_step

    def train_step(dense, optimizer):
        return TrainStep(dense, optimizer, loss_fn=mse(dense))

    for build in (hand_written, train_step):
        got = run(build)
        for i, (a, b) in enumerate(zip(got, expected)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{build.__name__}, step {i}")
        # lr 0 on the first step (warm-up starts at 0) and on the last (decayed to 0): no change there
        np.testing.assert_array_equal(got[0], weight)
        np.testing.assert_array_equal(got[-1], got[-2])
        assert np.abs(got[2] - got[1]).max() > 1e-3
