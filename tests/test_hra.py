"""HRA against HF peft: numbers both ways on Linear (MLP, tiny llama) and Conv2d layers, Gram-Schmidt, files,
merging, several adapters, jit training, errors."""
import copy
import os

import mindspore as ms
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, nn
from mindspore.experimental import optim
from safetensors.numpy import load_file

from mindpeft import HRAConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.models.layers import Linear
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import max_diff, ms_logits, rand_ids, torch_logits, torch_model

X = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
IMAGES = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)


class TorchNet(torch.nn.Module):
    """Two Linear and two Conv2d layers."""

    def __init__(self):
        super().__init__()
        self.lin0 = torch.nn.Linear(16, 32)
        self.lin1 = torch.nn.Linear(32, 8)
        self.conv0 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        if x.dim() == 4:
            return self.conv1(torch.relu(self.conv0(x)))
        return self.lin1(torch.relu(self.lin0(x)))


class MsNet(nn.Cell):
    def __init__(self, torch_twin):
        super().__init__()
        self.lin0 = Linear(16, 32)
        self.lin1 = Linear(32, 8)
        self.conv0 = nn.Conv2d(3, 4, 3, pad_mode="pad", padding=1, has_bias=True)
        self.conv1 = nn.Conv2d(4, 6, 3, stride=2, pad_mode="pad", padding=1)
        state = torch_twin.state_dict()
        for name, param in self.parameters_and_names():
            param.set_data(Tensor(state[name].numpy()))

    def construct(self, x):
        if x.ndim == 4:
            return self.conv1(ms.ops.relu(self.conv0(x)))
        return self.lin1(ms.ops.relu(self.lin0(x)))


@pytest.fixture
def torch_net():
    torch.manual_seed(1)
    return TorchNet().eval()


def _hf_out(model, x):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def _ms_out(model, x):
    return model(Tensor(x)).asnumpy()


def _close(actual, expected):
    return max_diff(actual, expected) < 1e-4 + 1e-5 * np.abs(expected).max()


def _shapes(folder):
    return {k: v.shape for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}


@pytest.mark.parametrize("targets,x", [(["lin0", "lin1"], X), (["conv0", "conv1"], IMAGES)])
@pytest.mark.parametrize("kwargs", [{"r": 4}, {"r": 3, "apply_GS": True, "bias": "hra_only"}])
def test_matches_hf_peft_both_ways(torch_net, tmp_path, targets, x, kwargs):
    base = _hf_out(torch_net, x)
    hf = peft.get_peft_model(copy.deepcopy(torch_net), peft.HRAConfig(target_modules=targets, init_weights=False,
                                                                      **kwargs)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_out(hf, x)
    assert max_diff(expected, base) > 1e-2

    loaded = PeftModel.from_pretrained(MsNet(torch_net), str(tmp_path / "hf"))  # made by HF, loaded by mindpeft
    loaded.set_train(False)
    assert _close(_ms_out(loaded, x), expected)

    ours = get_peft_model(MsNet(torch_net), HRAConfig(target_modules=targets, init_weights=False, **kwargs))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    adapted = _ms_out(ours, x)
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_net), str(tmp_path / "ms")).eval()
    assert _close(_hf_out(back, x), adapted)

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert _close(_ms_out(loaded, x), expected)
    loaded.unmerge_adapter()  # the inverse reflections restore the weights
    assert all(np.allclose(p.asnumpy(), before[n], atol=1e-5) for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert max_diff(_ms_out(loaded, x), base) < 1e-5
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_out(merged, x), expected)


def test_default_init_is_the_identity_with_hf_shapes(torch_net):
    targets = ["lin0", "lin1", "conv0", "conv1"]
    ours = get_peft_model(MsNet(torch_net), HRAConfig(target_modules=targets, r=6))
    hf = peft.get_peft_model(copy.deepcopy(torch_net), peft.HRAConfig(target_modules=targets, r=6))
    assert max_diff(_ms_out(ours, X), _hf_out(torch_net, X)) < 1e-5
    assert max_diff(_ms_out(ours, IMAGES), _hf_out(torch_net, IMAGES)) < 1e-5
    assert ({n: tuple(p.shape) for n, p in ours.parameters_and_names()}
            == {n: tuple(p.shape) for n, p in hf.named_parameters()})
    with pytest.warns(UserWarning, match="The symmetric initialization can NOT be performed when r is odd"):
        odd = get_peft_model(MsNet(torch_net), HRAConfig(target_modules=["lin0"], r=3))
    assert max_diff(_ms_out(odd, X), _hf_out(torch_net, X)) > 1e-3


def test_tiny_llama_matches_hf_peft_both_ways(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    config = dict(task_type="CAUSAL_LM", r=4, init_weights=False)  # default targets: q_proj, v_proj
    hf = peft.get_peft_model(torch_model(path, "llama", "causal"), peft.HRAConfig(**config)).eval()
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), HRAConfig(**config))
    ours.set_train(False)
    assert ours.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    hf.save_pretrained(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    expected = torch_logits(hf, inputs)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(ms_logits(loaded, inputs), expected) < 1e-4
    adapted = ms_logits(ours, inputs)
    back = peft.PeftModel.from_pretrained(torch_model(path, "llama", "causal"), str(tmp_path / "ms")).eval()
    assert max_diff(torch_logits(back, inputs), adapted) < 1e-4
    assert max_diff(ms_logits(ours.merge_and_unload(), inputs), adapted) < 1e-4


def test_multiple_adapters_match_hf_peft(torch_net, tmp_path):
    ours = get_peft_model(MsNet(torch_net), HRAConfig(target_modules=["lin0", "lin1"], init_weights=False))
    ours.add_adapter("second", HRAConfig(target_modules=["lin1"], r=2, apply_GS=True, init_weights=False))
    ours.set_train(False)
    first = _ms_out(ours, X)
    ours.set_adapter("second")
    second = _ms_out(ours, X)
    ours.base_model.set_adapter(["default", "second"])
    both = _ms_out(ours, X)
    assert max_diff(first, second) > 1e-2 and max_diff(both, first) > 1e-2
    ours.set_adapter("default")
    ours.save_pretrained(str(tmp_path))

    hf = peft.PeftModel.from_pretrained(copy.deepcopy(torch_net), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "second"), adapter_name="second")
    assert _close(_hf_out(hf, X), first)
    hf.set_adapter("second")
    assert _close(_hf_out(hf, X), second)
    hf.base_model.set_adapter(["default", "second"])
    assert _close(_hf_out(hf, X), both)

    ours.base_model.set_adapter(["default", "second"])
    ours.merge_adapter()
    assert _close(_ms_out(ours, X), both)
    ours.unmerge_adapter()
    ours.delete_adapter("second")
    assert list(ours.peft_config) == ["default"] and max_diff(_ms_out(ours, X), first) < 1e-5


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


@pytest.mark.parametrize("kwargs", [{"r": 4}, {"r": 2, "apply_GS": True}])
def test_jit_steps_lower_the_loss_and_equal_pynative(torch_net, kwargs):
    batch = {"x": Tensor(IMAGES), "y": Tensor(np.random.default_rng(1).standard_normal((2, 6, 4, 4)), ms.float32)}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsNet(torch_net), HRAConfig(target_modules=["conv0", "conv1"], init_weights=False,
                                                           **kwargs))
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(**batch)) for _ in range(5)]
        assert losses[-1] < losses[0] - 1e-3
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


def test_bad_configs(tiny_model_dir):
    with pytest.raises(ValueError, match=r"r must be a positive integer, got 0 \(int\)"):
        HRAConfig(r=0)
    with pytest.raises(ValueError, match=r"apply_GS must be True or False, got 'yes'"):
        HRAConfig(apply_GS="yes")
    with pytest.raises(ValueError, match=r"bias must be one of \('none', 'all', 'hra_only'\), got 'lora_only'"):
        HRAConfig(bias="lora_only")
    with pytest.raises(ValueError, match="`layers_pattern` cannot be used when `target_modules` is a str"):
        HRAConfig(target_modules=".*lin.*", layers_pattern="layers")
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal"))
    with pytest.raises(TypeError, match="of type Conv1D is not supported. Currently, only Linear"):
        get_peft_model(gpt2, HRAConfig(task_type="CAUSAL_LM"))  # HF peft refuses GPT-2's Conv1D too
    with pytest.raises(NotImplementedError, match=r"HRA does not support Conv2d layers with groups > 1 \(got "
                                                  r"groups=2\)"):
        get_peft_model(nn.SequentialCell([nn.Conv2d(4, 4, 3, group=2)]), HRAConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match=r"square kernel in NCHW format, got kernel_size=\(3, 1\)"):
        get_peft_model(nn.SequentialCell([nn.Conv2d(4, 4, (3, 1))]), HRAConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="HRA cannot wrap a mindspore.nn.Dense that has an activation"):
        get_peft_model(nn.SequentialCell([nn.Dense(4, 4, activation="relu")]), HRAConfig(target_modules=["0"]))
