"""LoRA on bare Parameters (``target_parameters``, HF peft's ``ParamWrapper``) against HF peft: stacked expert weights
(experts, in, out), a transposed stack (``is_transposed``), a 2-D Parameter, two Parameters of one Cell (nested
wrappers); adapters both ways, file keys, trainable counts, merging, several adapters, jit training steps, errors.
Also the LoraConfig fields ``target_parameters`` and ``trainable_token_indices``."""
import copy
import os

import numpy as np
import peft
import pytest
import torch
from mindspore import Parameter, Tensor, nn, ops
from mindspore.experimental import optim
from safetensors.numpy import load_file

import mindpeft
from mindpeft import LoraConfig, PeftModel, get_peft_model
from mindpeft.models.layers import Linear as LinearLayer
from mindpeft.models.modeling_utils import write_parameter
from mindpeft.training import TrainStep
from mindpeft.tuners.lora import ParamWrapper
from conftest import max_diff

tnn = torch.nn
E, D, H, OUT = 3, 6, 5, 4
TARGETS = ["experts.gate_up_proj", "experts.down_proj", "transposed.proj", "mix.mat"]


class TorchExperts(tnn.Module):
    """Every expert on every row, summed: ``sum_e (relu(x G_e) * x U_e) D_e``; G, U from (experts, D, 2H)."""

    def __init__(self):
        super().__init__()
        self.gate_up_proj = tnn.Parameter(torch.randn(E, D, 2 * H) * 0.4)
        self.down_proj = tnn.Parameter(torch.randn(E, H, D) * 0.4)

    def forward(self, x):
        gate, up = (x[None] @ self.gate_up_proj).chunk(2, -1)
        return ((torch.relu(gate) * up) @ self.down_proj).sum(0)


class TorchTransposed(tnn.Module):
    is_transposed = True  # (experts, out, in)

    def __init__(self):
        super().__init__()
        self.proj = tnn.Parameter(torch.randn(E, OUT, D) * 0.4)

    def forward(self, x):
        return (x[None] @ self.proj.transpose(1, 2)).sum(0)


class TorchMix(tnn.Module):
    def __init__(self):
        super().__init__()
        self.mat = tnn.Parameter(torch.randn(3, OUT) * 0.4)  # (out, in)

    def forward(self, x):
        return x @ self.mat.T


class TorchNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.experts, self.transposed, self.mix = TorchExperts(), TorchTransposed(), TorchMix()
        self.head = tnn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.mix(self.transposed(self.experts(x)))))


def _zeros(*shape):
    return Parameter(Tensor(np.zeros(shape, np.float32)))


class MsExperts(nn.Cell):
    def __init__(self):
        super().__init__()
        self.gate_up_proj, self.down_proj = _zeros(E, D, 2 * H), _zeros(E, H, D)

    def construct(self, x):
        gate, up = ops.split(ops.matmul(x.expand_dims(0), self.gate_up_proj), H, axis=-1)
        return ops.matmul(ops.relu(gate) * up, self.down_proj).sum(0)


class MsTransposed(nn.Cell):
    is_transposed = True

    def __init__(self):
        super().__init__()
        self.proj = _zeros(E, OUT, D)

    def construct(self, x):
        return ops.matmul(x.expand_dims(0), self.proj.swapaxes(1, 2)).sum(0)


class MsMix(nn.Cell):
    def __init__(self):
        super().__init__()
        self.mat = _zeros(3, OUT)

    def construct(self, x):
        return ops.matmul(x, self.mat.T)


class MsNet(nn.Cell):
    def __init__(self, twin):
        super().__init__()
        self.experts, self.transposed, self.mix = MsExperts(), MsTransposed(), MsMix()
        self.head = LinearLayer(3, 2)
        state = twin.state_dict()
        for name, param in self.parameters_and_names():
            write_parameter(param, state[name].numpy())

    def construct(self, x):
        return self.head(ops.tanh(self.mix(self.transposed(self.experts(x)))))


_BASE = {}


def torch_net():
    if "net" not in _BASE:
        torch.manual_seed(11)
        _BASE["net"] = TorchNet().eval()
    return copy.deepcopy(_BASE["net"])


X = np.random.default_rng(0).standard_normal((4, D)).astype(np.float32)


def ms_out(model):
    return model(Tensor(X)).asnumpy()


def hf_out(model):
    with torch.no_grad():
        return model(torch.tensor(X)).numpy()


def assert_close(actual, expected):
    err = np.abs(actual.astype(np.float64) - expected)
    assert (err <= 1e-4 + 1e-5 * np.abs(expected)).all(), f"max abs diff {err.max()}"


def config(lib, **extra):
    return lib.LoraConfig(**{"target_parameters": TARGETS, "r": 2, "rank_pattern": {"transposed.proj": 3},
                             "init_lora_weights": False, **extra})


def shapes(folder):
    return {k: v.shape for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}


def test_adapters_match_hf_peft_both_ways(tmp_path):
    base = torch_net()
    assert_close(ms_out(MsNet(base)), hf_out(base))
    hf = peft.get_peft_model(torch_net(), config(peft)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = hf_out(hf)
    assert max_diff(expected, hf_out(base)) > 1e-2

    loaded = PeftModel.from_pretrained(MsNet(base), str(tmp_path / "hf"))
    loaded.set_train(False)
    assert_close(ms_out(loaded), expected)

    ours = get_peft_model(MsNet(base), config(mindpeft))
    ours.set_train(False)
    wrappers = [c for _, c in ours.base_model.model.cells_and_names() if isinstance(c, ParamWrapper)]
    assert [w.parameter_name for w in wrappers] == ["down_proj", "gate_up_proj", "proj", "mat"]  # outer first
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))
    assert shapes(tmp_path / "ms") == shapes(tmp_path / "hf")
    assert shapes(tmp_path / "ms")["base_model.model.experts.base_layer.lora_A.weight"] == (2 * E, 2 * H)
    back = peft.PeftModel.from_pretrained(torch_net(), str(tmp_path / "ms")).eval()
    assert_close(ms_out(ours), hf_out(back))

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert_close(ms_out(loaded), expected)
    loaded.unmerge_adapter()
    assert all(np.abs(p.asnumpy() - before[n]).max() < 1e-6 for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert_close(ms_out(loaded), hf_out(base))
    merged = loaded.merge_and_unload()
    assert type(merged.experts) is MsExperts and type(merged.transposed) is MsTransposed
    names = sorted(n for n, _ in MsNet(base).parameters_and_names())
    assert sorted(n for n, _ in merged.parameters_and_names()) == names
    assert_close(ms_out(merged), expected)


def test_several_adapters_match_hf_peft(tmp_path):
    hf = peft.get_peft_model(torch_net(), config(peft))
    hf.add_adapter("other", config(peft, r=3, lora_alpha=16))
    hf.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(MsNet(torch_net()), str(tmp_path))
    ours.load_adapter(str(tmp_path / "other"), "other")
    ours.set_train(False)
    hf.eval()
    for name in ("other", "default"):
        hf.set_adapter(name)
        ours.set_adapter(name)
        assert_close(ms_out(ours), hf_out(hf))
    assert {w.parameter_name for _, w in ours.base_model.model.cells_and_names()
            if isinstance(w, ParamWrapper)} == {"down_proj", "gate_up_proj", "proj", "mat"}  # no further nesting
    with pytest.raises(ValueError, match="all adapters must target the same set of parameters"):
        ours.add_adapter("third", config(mindpeft, target_parameters=["mix.mat"]))


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


def test_jit_training_step_equals_pynative():
    y = Tensor(np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32))
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsNet(torch_net()), config(mindpeft))
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        initial = [p.asnumpy().copy() for p in model.trainable_params()]
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(x=Tensor(X), y=y)) for _ in range(3)]
        assert losses[-1] < losses[0]
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        trained = [p.asnumpy() for p in model.trainable_params()]
        assert min(np.abs(a - b).max() for a, b in zip(trained, initial)) > 1e-4  # nested factors learn too
        runs.append((losses, trained))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


class Holder(nn.Cell):
    def __init__(self):
        super().__init__()
        self.vector = _zeros(4)
        self.inner = MsMix()

    def construct(self, x):
        return self.inner(x) + self.vector.sum()


def test_errors_match_hf_peft():
    def wrap(**extra):
        return get_peft_model(MsNet(torch_net()), config(mindpeft, **extra))

    for extra, option in (({"lora_dropout": 0.1}, "lora_dropout != 0"), ({"lora_bias": True}, "lora_bias=True"),
                          ({"use_dora": True}, "use_dora=True")):
        for run in (lambda: wrap(**extra), lambda: peft.get_peft_model(torch_net(), config(peft, **extra))):
            with pytest.raises(ValueError, match=f"lora.ParamWrapper does not work with {option}"):
                run()
    with pytest.raises(TypeError, match="`target_parameters` must be a list of strings or None."):
        LoraConfig(target_parameters="experts.down_proj")
    with pytest.raises(ValueError, match="Targeting an nn.Parameter on the top-level module is not supported "
                                         "\\(parameter 'vector'\\)"):
        get_peft_model(Holder(), LoraConfig(target_parameters=["vector"]))
    with pytest.raises(ValueError, match="was initialized with 1 dimensional Parameter, but only 2d and 3d"):
        get_peft_model(nn.SequentialCell([Holder()]), LoraConfig(target_parameters=["0.vector"]))
    with pytest.raises(ValueError, match="No `target_modules` passed but also no `target_parameters` found"):
        get_peft_model(MsNet(torch_net()), LoraConfig(target_parameters=["nope.weight"]))
    with pytest.raises(ValueError, match="Trying to wrap an `nn.Parameter` of layer 'head' of type Linear, which is "
                                         "not a valid target"):
        get_peft_model(MsNet(torch_net()), LoraConfig(target_modules=["head"], target_parameters=["head.weight"]))
    with pytest.warns(RuntimeWarning, match="were set but no parameter was matched"):
        get_peft_model(MsNet(torch_net()), LoraConfig(target_modules=["head"], target_parameters=["nope.weight"]))
    with pytest.raises(ValueError, match="init_lora_weights='pissa' is not supported for lora.ParamWrapper"):
        wrap(init_lora_weights="pissa")
    model = wrap()
    model.set_train(False)
    with pytest.raises(ValueError, match="lora.ParamWrapper does not support mixed adapter batches yet."):
        model(Tensor(X), adapter_names=["default"] * 4)


def test_config_fields_round_trip_with_hf_peft(tmp_path):
    ours = LoraConfig(target_parameters=TARGETS, trainable_token_indices={"embed_tokens": [1, 2]})
    ours.save_pretrained(str(tmp_path))
    hf = peft.LoraConfig.from_pretrained(str(tmp_path))
    assert (sorted(hf.target_parameters), hf.trainable_token_indices) == (sorted(TARGETS), {"embed_tokens": [1, 2]})
    peft.LoraConfig(target_parameters=TARGETS, trainable_token_indices=[3]).save_pretrained(str(tmp_path))
    back = LoraConfig.from_pretrained(str(tmp_path))
    assert (back.target_parameters, back.trainable_token_indices) == (TARGETS, [3])
    for value in ([1, 1], [-1], "1", {"embed_tokens": []}, {3: [1]}):
        with pytest.raises(ValueError, match="trainable_token_indices"):
            LoraConfig(trainable_token_indices=value)
