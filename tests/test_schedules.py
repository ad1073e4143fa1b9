"""Learning-rate schedules over mindspore.experimental.optim equal transformers' over torch optimizers."""
import numpy as np
import pytest
import torch
import transformers
from mindspore import nn
from mindspore.experimental import optim

from mindpeft import get_linear_schedule_with_warmup
from mindpeft.training import get_scheduler


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
