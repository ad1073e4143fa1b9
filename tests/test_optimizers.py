"""mindpeft.optimizers.AdamW: torch.optim.AdamW's update, fused, in PyNative and compiled."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore.experimental import optim as ms_optim

from mindpeft import LoraConfig, get_peft_model
from mindpeft.optimizers import AdamW
from mindpeft.training import TrainStep, get_linear_schedule_with_warmup
from mindpeft.training.train_step import value_and_grad

KEEP = []  # compiled functions and optimizers stay alive (MindSpore's parse cache is keyed by id)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32),
            rng.standard_normal((5, 6)).astype(np.float32))


def _run(groups_of, settings, jit, steps=6, schedule=False):
    """Weights after ``steps`` updates of a least-squares problem in mindpeft and in torch."""
    w0, b0, x = _problem()
    w, b = ms.Parameter(ms.Tensor(w0), "w"), ms.Parameter(ms.Tensor(b0), "b")
    optimizer = AdamW(groups_of(w, b), **settings)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    torch_optimizer = torch.optim.AdamW(groups_of(tw, tb), **settings)
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, steps) if schedule else None
    torch_scheduler = (torch.optim.lr_scheduler.LambdaLR(
        torch_optimizer, lambda s: s / 2 if s < 2 else max(0.0, (steps - s) / (steps - 2))) if schedule else None)
    inputs = ms.Tensor(x)

    def loss_fn(data):
        return ((ms.ops.matmul(data, w) + b) ** 2).sum()

    grad_fn = value_and_grad(loss_fn, optimizer.parameters)

    def step(data):
        loss, grads = grad_fn(data)
        return ms.ops.depend(loss, optimizer(grads))

    step = ms.jit(step) if jit else step
    KEEP.extend([optimizer, step])
    for _ in range(steps):
        step(inputs)
        torch_optimizer.zero_grad()
        ((torch.tensor(x) @ tw + tb) ** 2).sum().backward()
        torch_optimizer.step()
        if schedule:
            scheduler.step()
            torch_scheduler.step()
    return (w.asnumpy(), b.asnumpy()), (tw.detach().numpy(), tb.detach().numpy())


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", ["plain", "groups", "maximize", "schedule"])
def test_adamw_matches_torch(case, jit):
    settings = {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}
    groups_of = lambda w, b: [w, b]  # noqa: E731
    if case == "groups":
        groups_of = lambda w, b: [{"params": [w], "weight_decay": 0.3}, {"params": [b], "lr": 0.05}]  # noqa: E731
    if case == "maximize":
        settings["maximize"] = True
    ours, theirs = _run(groups_of, settings, jit, schedule=case == "schedule")
    for mine, torch_value in zip(ours, theirs):
        np.testing.assert_allclose(mine, torch_value, atol=2e-6, rtol=1e-6)
    assert np.abs(ours[0] - _problem()[0]).max() > 0.05  # it moved


def test_adamw_state_and_schedules(tiny_model_dir):
    """Same state names as MindSpore's AdamW (checkpoints), lr as a Parameter schedules drive, step counted."""
    from mindpeft.models import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                           LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"]))
    params = model.trainable_params()
    ours, theirs = AdamW(params, lr=1e-3), ms_optim.AdamW(params, lr=1e-3)
    ours_names = {name for name, _ in ours.parameters_and_names()}
    their_names = {name for name, _ in theirs.parameters_and_names()} - {
        f"max_exp_avg_sq.{p.name}" for p in params}  # no AMSGrad moment
    assert ours_names == their_names
    scheduler = ms_optim.lr_scheduler.StepLR(ours, step_size=1, gamma=0.5)
    step = TrainStep(model, ours)
    KEEP.append(step)
    ids = ms.Tensor(np.arange(12).reshape(2, 6) % 50 + 3, ms.int32)
    losses = []
    for _ in range(3):
        losses.append(float(step(input_ids=ids, labels=ids)))
        scheduler.step()
    assert int(ours.state_step.asnumpy()) == 3
    assert float(ours.param_groups[0]["lr"].asnumpy()) == pytest.approx(1e-3 / 8)
    assert losses[-1] < losses[0]


def test_adamw_float16_parameters():
    """Half-precision parameters are updated in their dtype from float32 gradients."""
    w = ms.Parameter(ms.Tensor(np.ones((3, 3), np.float16)), "w")
    optimizer = AdamW([w], lr=0.01, weight_decay=0.0)
    optimizer((ms.Tensor(np.ones((3, 3), np.float32)),))
    assert w.dtype == ms.float16
    np.testing.assert_allclose(w.asnumpy().astype(np.float32), 0.99, atol=1e-3)


@pytest.mark.parametrize("settings, field", [({"lr": -1.0}, "lr=-1.0"), ({"betas": (0.9, 1.0)}, "betas=(0.9, 1.0)"),
                                             ({"eps": -1e-8}, "eps=-1e-08"), ({"weight_decay": -0.1}, "weight_decay"),
                                             ({"lr": "1e-3"}, "lr='1e-3'"), ({"amsgrad": True}, "amsgrad")])
def test_adamw_bad_settings(settings, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        AdamW([ms.Parameter(ms.Tensor(np.ones(2, np.float32)), "p")], **settings)
