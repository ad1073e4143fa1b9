"""FourierFT against HF peft: torch's randperm reproduced bit for bit, numbers and gradients both ways (MLP, GPT-2
Conv1D, tiny llama), files, merging, several adapters, jit training, errors."""
import copy

import mindspore as ms
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, nn
from mindspore.experimental import optim

from mindpeft import FourierFTConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from mindpeft.utils.torch_random import TorchCPUGenerator
from conftest import adapter_shapes as _shapes, max_diff, ms_logits, MsMLP, rand_ids, torch_logits, torch_model

X = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
Y = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
TARGETS = ["lin0", "lin1"]


def _hf_out(model, x=X):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def _ms_out(model, x=X):
    return model(Tensor(x)).asnumpy()


def _close(actual, expected):
    return max_diff(actual, expected) < 1e-4 + 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("seed", [0, 777, 2**33 + 3, -1])
def test_torch_randperm_head_is_reproduced_bit_for_bit(seed):
    for n in (1, 2, 3, 10, 512, 96 * 32, 1024 * 1024) + ((4096 * 4096,) if seed == 777 else ()):
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        for count in (1, 7, 1000):
            assert np.array_equal(TorchCPUGenerator(seed).randperm_head(n, count), expected[:count]), (n, count)


@pytest.mark.parametrize("kwargs", [
    {"n_frequency": 40, "scaling": 20.0, "n_frequency_pattern": {"lin1": 9}},
    {"n_frequency": 256, "scaling": 3.0, "random_loc_seed": 5, "bias": "fourier_only"},
])
def test_mlp_matches_hf_peft_both_ways(torch_mlp, tmp_path, kwargs):
    base = _hf_out(torch_mlp)
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.FourierFTConfig(target_modules=TARGETS, **kwargs)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_out(hf)
    assert max_diff(expected, base) > 1e-2

    loaded = PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path / "hf"))  # made by HF, loaded by mindpeft
    loaded.set_train(False)
    assert _close(_ms_out(loaded), expected)
    for name in TARGETS:  # the frequency locations are HF peft's
        ours_layer, hf_layer = getattr(loaded.base_model.model, name), getattr(hf.base_model.model, name)
        assert np.array_equal(ours_layer.indices["default"].asnumpy().T, hf_layer.indices["default"].numpy())

    ours = get_peft_model(MsMLP(torch_mlp), FourierFTConfig(target_modules=TARGETS, **kwargs))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    adapted = _ms_out(ours)
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path / "ms")).eval()
    assert _close(_hf_out(back), adapted)

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert _close(_ms_out(loaded), expected)
    loaded.unmerge_adapter()
    assert all(np.allclose(p.asnumpy(), before[n], atol=1e-5) for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert max_diff(_ms_out(loaded), base) < 1e-5
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_out(merged), expected)


def test_gradients_equal_hf_peft(torch_mlp):
    config = dict(target_modules=TARGETS, n_frequency=30, scaling=10.0)
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.FourierFTConfig(**config))
    ours = get_peft_model(MsMLP(torch_mlp), FourierFTConfig(**config))
    for name in TARGETS:  # same spectrum in both
        spectrum = getattr(hf.base_model.model, name).fourierft_spectrum["default"].detach().numpy()
        getattr(ours.base_model.model, name).fourierft_spectrum["default"].set_data(Tensor(spectrum))
    loss = ((hf(torch.tensor(X)) - torch.tensor(Y)) ** 2).mean()
    loss.backward()
    expected = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.requires_grad}

    def loss_fn(x, y):
        return ((ours(x) - y) ** 2).mean()

    value, grads = ms.value_and_grad(loss_fn, None, ours.trainable_params())(Tensor(X), Tensor(Y))
    assert abs(float(value) - loss.item()) < 1e-5 * abs(loss.item()) + 1e-6
    for param, grad in zip(ours.trainable_params(), grads):
        assert _close(grad.asnumpy(), expected[param.name]), param.name


def test_default_init_is_random_and_zero_init_the_identity(torch_mlp):
    random = get_peft_model(MsMLP(torch_mlp), FourierFTConfig(target_modules=TARGETS, n_frequency=200))
    assert max_diff(_ms_out(random), _hf_out(torch_mlp)) > 1.0  # HF peft's default: N(0, 1) spectrum, scaling 150
    model = get_peft_model(MsMLP(torch_mlp), FourierFTConfig(target_modules=TARGETS, n_frequency=200,
                                                             init_weights=True))
    assert max_diff(_ms_out(model), _hf_out(torch_mlp)) < 1e-6


@pytest.mark.parametrize("family,config", [
    ("gpt2", dict(n_frequency=100, scaling=30.0)),  # default target: mlp.c_proj, a Conv1D
    ("llama", dict(n_frequency=64, scaling=50.0, random_loc_seed=3)),  # default targets: q_proj, v_proj
])
def test_transformers_match_hf_peft_both_ways(tiny_model_dir, tmp_path, family, config):
    path = tiny_model_dir(family, "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    hf = peft.get_peft_model(torch_model(path, family, "causal"),
                             peft.FourierFTConfig(task_type="CAUSAL_LM", **config)).eval()
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), FourierFTConfig(task_type="CAUSAL_LM", **config))
    ours.set_train(False)
    assert ours.peft_config["default"].fan_in_fan_out == (family == "gpt2")
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    hf.save_pretrained(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    expected = torch_logits(hf, inputs)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(ms_logits(loaded, inputs), expected) < 1e-4
    adapted = ms_logits(ours, inputs)
    back = peft.PeftModel.from_pretrained(torch_model(path, family, "causal"), str(tmp_path / "ms")).eval()
    assert max_diff(torch_logits(back, inputs), adapted) < 1e-4
    assert max_diff(ms_logits(ours.merge_and_unload(), inputs), adapted) < 1e-4


def test_multiple_adapters_match_hf_peft(torch_mlp, tmp_path):
    ours = get_peft_model(MsMLP(torch_mlp), FourierFTConfig(target_modules=TARGETS, n_frequency=20, scaling=5.0))
    ours.add_adapter("second", FourierFTConfig(target_modules=["lin1"], n_frequency=12, random_loc_seed=1))
    ours.set_train(False)
    first = _ms_out(ours)
    ours.set_adapter("second")
    second = _ms_out(ours)
    ours.base_model.set_adapter(["default", "second"])
    both = _ms_out(ours)
    assert max_diff(first, second) > 1e-2 and max_diff(both, first) > 1e-2
    ours.set_adapter("default")
    ours.save_pretrained(str(tmp_path))

    hf = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "second"), adapter_name="second")
    assert _close(_hf_out(hf), first)
    hf.set_adapter("second")
    assert _close(_hf_out(hf), second)
    hf.base_model.set_adapter(["default", "second"])
    assert _close(_hf_out(hf), both)

    ours.base_model.set_adapter(["default", "second"])
    ours.merge_adapter()
    assert _close(_ms_out(ours), both)
    ours.unmerge_adapter()
    ours.delete_adapter("second")
    assert list(ours.peft_config) == ["default"] and max_diff(_ms_out(ours), first) < 1e-5


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


def test_jit_steps_lower_the_loss_and_equal_pynative(torch_mlp):
    batch = {"x": Tensor(X), "y": Tensor(Y)}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsMLP(torch_mlp), FourierFTConfig(target_modules=TARGETS, n_frequency=50,
                                                                 scaling=2.0))
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(**batch)) for _ in range(5)]
        assert losses[-1] < losses[0] - 1e-3
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


def test_bad_configs(torch_mlp):
    with pytest.raises(ValueError, match=r"n_frequency must be a positive integer, got 0 \(int\)"):
        FourierFTConfig(n_frequency=0)
    with pytest.raises(ValueError, match=r"random_loc_seed must be an integer, got None"):
        FourierFTConfig(random_loc_seed=None)
    with pytest.raises(ValueError, match=r"scaling must be a finite int or float, got '150'"):
        FourierFTConfig(scaling="150")
    with pytest.raises(ValueError, match=r"bias must be one of \('none', 'all', 'fourier_only'\), got 'lora_only'"):
        FourierFTConfig(bias="lora_only")
    with pytest.raises(ValueError, match="n_frequency_pattern must map strings to positive integers"):
        FourierFTConfig(n_frequency_pattern={"lin0": -1})
    with pytest.raises(ValueError, match="`layers_to_transform` cannot be used when `target_modules` is a str"):
        FourierFTConfig(target_modules=".*lin.*", layers_to_transform=0)
    with pytest.raises(ValueError, match="`n_frequency` should be less than or equal to the product of the input and "
                                         "output dimensions but the value passed is 300 and the product is 256"):
        get_peft_model(MsMLP(torch_mlp), FourierFTConfig(target_modules=["lin1"], n_frequency=300))
    with pytest.raises(TypeError, match="of type Conv2d is not supported"):
        get_peft_model(nn.SequentialCell([nn.Conv2d(3, 4, 3)]), FourierFTConfig(target_modules=["0"], n_frequency=3))
    with pytest.raises(ValueError, match="shuffles with another algorithm from 214748364 entries on"):
        TorchCPUGenerator(0).randperm_head(2**28, 10)
