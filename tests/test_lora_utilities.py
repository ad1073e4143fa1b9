"""``inject_adapter_in_model``, ``get/set_peft_model_state_dict``, ``get_layer_status``/``get_model_status`` and
``create_loraplus_optimizer`` against HF peft's functions on twin models."""
import copy
import dataclasses

import mindspore as ms
import numpy as np
import peft
from peft.optimizers import create_loraplus_optimizer as hf_create_loraplus_optimizer
import pytest
import torch
from mindspore import Tensor, nn, ops
from mindspore.experimental import optim

from mindpeft import (IA3Config, LNTuningConfig, LoHaConfig, LoKrConfig, LoraConfig, PromptTuningConfig,
                      TrainableTokensConfig, get_layer_status, get_model_status, get_peft_model,
                      get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict)
from mindpeft.models.layers import Embedding, LayerNorm, Linear
from mindpeft.optimizers import create_loraplus_optimizer
from mindpeft.training import TrainStep
from conftest import max_diff

IDS = np.random.default_rng(0).integers(0, 20, (3, 5))
Y = np.random.default_rng(1).standard_normal((3, 5, 4)).astype(np.float32)


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.lin0 = torch.nn.Linear(8, 16)
        self.ln = torch.nn.LayerNorm(16)
        self.lin1 = torch.nn.Linear(16, 4)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, x):
        return self.lin1(self.ln(torch.relu(self.lin0(self.emb(x)))))


class MsNet(nn.Cell):
    def __init__(self, twin):
        super().__init__()
        self.emb = Embedding(20, 8)
        self.lin0 = Linear(8, 16)
        self.ln = LayerNorm(16)
        self.lin1 = Linear(16, 4)
        state = twin.state_dict()
        for name, param in self.parameters_and_names():
            param.set_data(Tensor(state[name].numpy()))

    def get_input_embeddings(self):
        return self.emb

    def construct(self, x):
        return self.lin1(self.ln(ops.relu(self.lin0(self.emb(x)))))


@pytest.fixture
def twin():
    torch.manual_seed(2)
    model = TorchNet().eval()
    with torch.no_grad():  # LayerNorm weights away from 1/0 so that LN tuning changes something
        model.ln.weight.normal_()
        model.ln.bias.normal_()
    return model


def _hf(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).numpy()


def _ms(model):
    return model(Tensor(IDS, ms.int32)).asnumpy()


def _numpy(state):
    return {k: v.detach().numpy() for k, v in state.items()}


def _randomise(state, seed):
    """Non-trivial adapter values (default inits are often the identity)."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.standard_normal(v.shape) * 0.5).astype(np.float32) for k, v in state.items()}


# (ours, HF's, kwargs): every method that injects layers, with and without the PeftModel wrapper
METHODS = [
    (LoraConfig, peft.LoraConfig, dict(target_modules=["emb", "lin0"], r=2, modules_to_save=["lin1"])),
    (LoHaConfig, peft.LoHaConfig, dict(target_modules=["lin0", "lin1"], r=2)),
    (LoKrConfig, peft.LoKrConfig, dict(target_modules=["lin0"], r=2)),
    (IA3Config, peft.IA3Config, dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"])),
    (LNTuningConfig, peft.LNTuningConfig, dict(target_modules=["ln"])),
    (TrainableTokensConfig, peft.TrainableTokensConfig, dict(token_indices=[1, 4, 7])),
]


@pytest.mark.parametrize("ours_cls,hf_cls,kwargs", METHODS, ids=[m[0].__name__ for m in METHODS])
def test_inject_adapter_in_model_and_state_dicts_match_hf(twin, ours_cls, hf_cls, kwargs):
    hf = peft.inject_adapter_in_model(hf_cls(**kwargs), copy.deepcopy(twin))
    hf_state = _randomise(_numpy(peft.get_peft_model_state_dict(hf)), seed=3)
    peft.set_peft_model_state_dict(hf, {k: torch.tensor(v) for k, v in hf_state.items()})
    expected = _hf(hf)
    assert max_diff(expected, _hf(twin)) > 1e-3

    ours = inject_adapter_in_model(ours_cls(**kwargs), MsNet(twin))
    assert isinstance(ours, MsNet) and set(ours.peft_config) == {"default"}
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    assert all(p.name == n for n, p in ours.parameters_and_names())
    state = get_peft_model_state_dict(ours)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in hf_state.items()}
    assert set_peft_model_state_dict(ours, hf_state) == []
    assert max_diff(_ms(ours), expected) < 1e-5
    assert all(np.array_equal(v, hf_state[k]) for k, v in get_peft_model_state_dict(ours).items())

    wrapped = get_peft_model(MsNet(twin), ours_cls(**kwargs))  # the same keys under the PeftModel prefix
    hf_wrapped = peft.get_peft_model(copy.deepcopy(twin), hf_cls(**kwargs))
    assert set(get_peft_model_state_dict(wrapped, adapter_name="default")) == set(
        peft.get_peft_model_state_dict(hf_wrapped))


def test_state_dict_options_and_refusals(twin):
    model = get_peft_model(MsNet(twin), LoraConfig(target_modules=["lin0"], r=2))
    names = dict(model.parameters_and_names())
    given = {k: np.full(p.shape, 0.5, np.float32) for k, p in names.items()}
    state = get_peft_model_state_dict(model, given)  # values from a given {model key: array}
    assert set(state) == {"base_model.model.lin0.lora_A.weight", "base_model.model.lin0.lora_B.weight"}
    assert all((v == 0.5).all() for v in state.values())
    assert get_peft_model_state_dict(model, "default").keys() == state.keys()  # mindpeft's earlier argument order
    wrong = {**state, "base_model.model.lin0.lora_A.weight": np.zeros((3, 8), np.float32)}
    with pytest.raises(ValueError, match=r"Shape mismatch for 'base_model.model.lin0.lora_A.weight'"):
        set_peft_model_state_dict(model, wrong)
    with pytest.warns(UserWarning, match="Skipped \\(ignore_mismatched_sizes=True\\)"):
        set_peft_model_state_dict(model, wrong, ignore_mismatched_sizes=True)
    assert (model.base_model.model.lin0.lora_B["default"].weight.asnumpy() == 0.5).all()
    with pytest.raises(ValueError, match="does not support prompt learning and adaption prompt"):
        inject_adapter_in_model(PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"), MsNet(twin))


def _status_fields(status):
    """The dataclass as a dict; the base model's class name is the twin's (``MsNet`` / ``TorchNet``)."""
    fields = dataclasses.asdict(status)
    if fields.get("base_model_type") in ("MsNet", "TorchNet"):
        fields["base_model_type"] = "twin"
    return fields


def test_layer_and_model_status_match_hf(twin):
    configs = [dict(target_modules=["emb", "lin0"], r=2, modules_to_save=["lin1"]),
               dict(target_modules=["lin0"], r=3)]
    hf = peft.get_peft_model(copy.deepcopy(twin), peft.LoraConfig(**configs[0]))
    ours = get_peft_model(MsNet(twin), LoraConfig(**configs[0]))
    hf.add_adapter("other", peft.LoraConfig(**configs[1]))
    ours.add_adapter("other", LoraConfig(**configs[1]))

    def same(unlike=()):
        def drop(fields):
            return {k: v for k, v in fields.items() if k not in unlike}

        theirs = [drop(_status_fields(s)) for s in peft.get_layer_status(hf)]
        assert [drop(_status_fields(s)) for s in ours.get_layer_status()] == theirs
        assert [drop(_status_fields(s)) for s in get_layer_status(ours)] == theirs
        assert drop(_status_fields(ours.get_model_status())) == drop(_status_fields(peft.get_model_status(hf)))

    same()
    for model in (hf, ours):
        model.base_model.set_adapter(["default", "other"])
    same()
    for model in (hf, ours):
        model.base_model.model.lin0.merge(adapter_names=["default"])  # not on emb: "irregular"
    same()
    assert get_model_status(ours).merged_adapters == "irregular"
    for model in (hf, ours):
        model.base_model.model.lin0.unmerge()
        model.base_model.disable_adapter_layers()
    # HF peft also freezes the adapters when disabling them (and unfreezes the active ones when enabling); mindpeft
    # leaves requires_grad alone, and the status reports it as it is
    same(unlike=("requires_grad", "trainable_params"))
    assert get_model_status(ours).enabled is False
    assert get_model_status(ours).requires_grad == {"default": True, "other": True}

    plain_hf = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["lin0"]), copy.deepcopy(twin))
    plain = inject_adapter_in_model(LoraConfig(target_modules=["lin0"]), MsNet(twin))
    assert _status_fields(get_model_status(plain)) == _status_fields(peft.get_model_status(plain_hf))
    with pytest.raises(ValueError, match="No adapter layers found in the model"):
        get_layer_status(MsNet(twin))


def _hf_groups(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [({names[id(p)] for p in g["params"]}, g["lr"], g["weight_decay"]) for g in optimizer.param_groups
            if g["params"]]


@pytest.mark.parametrize("optimizer_cls", [optim.AdamW, nn.AdamWeightDecay])
def test_loraplus_groups_match_hf(twin, optimizer_cls):
    config = dict(target_modules=["emb", "lin0"], r=2, modules_to_save=["ln", "lin1"])
    settings = dict(lr=1e-3, loraplus_lr_ratio=16, loraplus_lr_embedding=1e-5, loraplus_weight_decay=0.1)
    hf = peft.get_peft_model(copy.deepcopy(twin), peft.LoraConfig(**config))
    expected = _hf_groups(hf_create_loraplus_optimizer(hf, torch.optim.AdamW, **settings), hf)
    assert [lr for _, lr, _ in expected] == [1e-3, 1e-5, 1.6e-2, 1.6e-2]
    ours = get_peft_model(MsNet(twin), LoraConfig(**config))
    optimizer = create_loraplus_optimizer(ours, optimizer_cls, **settings)
    if optimizer_cls is optim.AdamW:
        groups = [({p.name for p in g["params"]}, float(g["lr"]), g["weight_decay"]) for g in optimizer.param_groups]
    else:
        merged = {}  # nn optimizers keep one lr and weight decay per Parameter
        for param, lr, decay in zip(optimizer.parameters, optimizer.learning_rate, optimizer.weight_decay):
            merged.setdefault((float(lr.asnumpy()), float(decay.asnumpy())), set()).add(param.name)
        groups = [(names, lr, decay) for (lr, decay), names in merged.items()]
    key = lambda g: sorted(g[0])  # noqa: E731
    assert [(n, pytest.approx(lr), pytest.approx(d)) for n, lr, d in sorted(groups, key=key)] == \
        sorted(expected, key=key)


@pytest.mark.parametrize("optimizer_cls", [optim.SGD, nn.SGD])
def test_loraplus_step_under_jit_equals_pynative_and_scales_lora_b(twin, optimizer_cls):
    runs = []
    for jit in (True, False):
        np.random.seed(0)  # the same random LoRA factors in both runs
        model = get_peft_model(MsNet(twin), LoraConfig(target_modules=["emb", "lin0"], r=2,
                                                       init_lora_weights=False))
        model.set_train(False)
        optimizer = create_loraplus_optimizer(model, optimizer_cls, lr=0.1, loraplus_lr_ratio=4,
                                              loraplus_lr_embedding=0.01)

        def loss_fn(x, y):
            return ((model(x) - y) ** 2).mean()

        before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
        step = TrainStep(model, optimizer, loss_fn=loss_fn, jit=jit, return_grads=True)
        _, grads = step(x=Tensor(IDS, ms.int32), y=Tensor(Y))
        rates = {}
        for param, grad in zip(optimizer.parameters, grads):
            moved = before[param.name] - param.asnumpy()
            rates[param.name] = float(np.sum(moved * grad.asnumpy()) / np.sum(grad.asnumpy() ** 2))
        runs.append({p.name: p.asnumpy() for p in model.trainable_params()})
        assert rates == {
            "base_model.model.emb.lora_embedding_A.default": pytest.approx(0.01, rel=1e-4),
            "base_model.model.emb.lora_embedding_B.default": pytest.approx(0.01, rel=1e-4),
            "base_model.model.lin0.lora_A.default.weight": pytest.approx(0.1, rel=1e-4),
            "base_model.model.lin0.lora_B.default.weight": pytest.approx(0.4, rel=1e-4)}
    assert max(np.abs(runs[0][k] - runs[1][k]).max() for k in runs[0]) < 1e-6
