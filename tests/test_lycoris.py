"""LoHa and LoKr against HF peft: numbers both ways, files, merging, multiple adapters, jit training, errors."""
import copy
import os

import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, nn
from mindspore.experimental import optim
from safetensors.numpy import load_file

from mindpeft import LoHaConfig, LoKrConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.tuners.lokr import factorization
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from mindpeft.training import TrainStep
from conftest import max_diff, ms_logits, MsMLP, rand_ids, torch_logits, torch_model

OURS = {"loha": LoHaConfig, "lokr": LoKrConfig}
HF = {"loha": peft.LoHaConfig, "lokr": peft.LoKrConfig}
PREFIX = {"loha": "hada_", "lokr": "lokr_"}
# LoKr: r=1 with decompose_both makes both factors low-rank products (lokr_w1_a/b, lokr_w2_a/b); r=8 full ones.
CASES = [
    ("loha", {"r": 4, "alpha": 6, "rank_pattern": {"lin1": 2}, "alpha_pattern": {"lin1": 5}}),
    ("lokr", {"r": 1, "alpha": 3, "decompose_both": True}),
    ("lokr", {"r": 8, "alpha": 4, "decompose_factor": 4, "alpha_pattern": {"lin0": 2}}),
]
X = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)


def _hf_out(model, x=X):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def _ms_out(model, x=X):
    return model(Tensor(x)).asnumpy()


def _file(folder):
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def _shapes(folder):
    return {k: v.shape for k, v in _file(folder).items()}


@pytest.mark.parametrize("method,kwargs", CASES)
def test_mlp_adapters_match_hf_peft_both_ways(torch_mlp, tmp_path, method, kwargs):
    targets = ["lin0", "lin1"]
    base = _hf_out(torch_mlp)
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), HF[method](target_modules=targets, init_weights=False,
                                                                  **kwargs)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_out(hf)
    assert max_diff(expected, base) > 1e-2

    loaded = PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path / "hf"))  # made by HF, loaded by mindpeft
    loaded.set_train(False)
    assert max_diff(_ms_out(loaded), expected) < 1e-4 + 1e-5 * np.abs(expected).max()

    ours = get_peft_model(MsMLP(torch_mlp), OURS[method](target_modules=targets, init_weights=False, **kwargs))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    assert all(k.split(".")[-1].startswith(PREFIX[method]) for k in _shapes(tmp_path / "ms"))
    adapted = _ms_out(ours)
    assert max_diff(adapted, base) > 1e-2
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path / "ms")).eval()
    assert max_diff(_hf_out(back), adapted) < 1e-4 + 1e-5 * np.abs(adapted).max()

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert max_diff(_ms_out(loaded), expected) < 1e-4
    loaded.unmerge_adapter()
    assert all(np.allclose(p.asnumpy(), before[n], atol=1e-6) for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert max_diff(_ms_out(loaded), base) < 1e-5
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert max_diff(_ms_out(merged), expected) < 1e-4


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_default_init_is_the_identity_with_hf_shapes(torch_mlp, method):
    ours = get_peft_model(MsMLP(torch_mlp), OURS[method](target_modules=["lin0", "lin1"], r=2))
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), HF[method](target_modules=["lin0", "lin1"], r=2))
    assert max_diff(_ms_out(ours), _hf_out(torch_mlp)) < 1e-5
    assert ({n: tuple(p.shape) for n, p in ours.parameters_and_names()}
            == {n: tuple(p.shape) for n, p in hf.named_parameters()})
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_tiny_llama_matches_hf_peft_both_ways(tiny_model_dir, tmp_path, method):
    path = tiny_model_dir("llama", "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    config = dict(task_type="CAUSAL_LM", init_weights=False, r=4, alpha=8)  # default targets: q_proj, v_proj
    hf = peft.get_peft_model(torch_model(path, "llama", "causal"), HF[method](**config)).eval()
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), OURS[method](**config))
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
    merged = ours.merge_and_unload()
    assert max_diff(ms_logits(merged, inputs), adapted) < 1e-4


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_multiple_adapters_match_hf_peft(torch_mlp, tmp_path, method):
    ours = get_peft_model(MsMLP(torch_mlp), OURS[method](target_modules=["lin0", "lin1"], init_weights=False))
    ours.add_adapter("b", OURS[method](target_modules=["lin1"], init_weights=False, r=2, alpha=3))
    ours.set_train(False)
    first = _ms_out(ours)
    ours.set_adapter("b")
    second = _ms_out(ours)
    ours.base_model.set_adapter(["default", "b"])
    both = _ms_out(ours)
    assert max_diff(first, second) > 1e-2 and max_diff(both, first) > 1e-2
    ours.set_adapter("default")
    ours.save_pretrained(str(tmp_path))

    hf = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "b"), adapter_name="b")
    assert max_diff(_hf_out(hf), first) < 1e-4
    hf.set_adapter("b")
    assert max_diff(_hf_out(hf), second) < 1e-4
    hf.base_model.set_adapter(["default", "b"])
    assert max_diff(_hf_out(hf), both) < 1e-4

    ours.base_model.set_adapter(["default", "b"])
    ours.merge_adapter()
    assert max_diff(_ms_out(ours), both) < 1e-4
    ours.unmerge_adapter()
    ours.delete_adapter("b")
    assert list(ours.peft_config) == ["default"] and max_diff(_ms_out(ours), first) < 1e-5


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


@pytest.mark.parametrize("method,kwargs", [CASES[0], CASES[1]])
def test_jit_steps_lower_the_loss_and_equal_pynative(torch_mlp, method, kwargs):
    batch = {"x": Tensor(X), "y": Tensor(np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32))}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsMLP(torch_mlp), OURS[method](target_modules=["lin0", "lin1"], **kwargs))
        model.set_train(False)  # no dropout: the two runs must agree

        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(**batch)) for _ in range(5)]
        assert losses[-1] < losses[0] - 1e-3
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_rank_and_module_dropout_train_under_jit(torch_mlp, method):
    model = get_peft_model(MsMLP(torch_mlp), OURS[method](target_modules=["lin0", "lin1"], init_weights=False,
                                                          rank_dropout=0.5, module_dropout=0.5))
    model.set_train(True)
    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-3), loss_fn=_mse(model))
    y = Tensor(np.zeros((3, 5, 8), np.float32))
    assert all(np.isfinite(float(step(x=Tensor(X), y=y))) for _ in range(3))
    model.set_train(False)  # eval: no dropout, deterministic
    assert max_diff(_ms_out(model), _ms_out(model)) == 0.0


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_mindspore_dense_layers(method):
    class DenseNet(nn.Cell):
        def __init__(self):
            super().__init__()
            self.proj = nn.Dense(12, 6)

        def construct(self, x):
            return self.proj(x)

    x = Tensor(np.random.default_rng(2).standard_normal((4, 12)).astype(np.float32))
    model = get_peft_model(DenseNet(), OURS[method](target_modules=["proj"], r=2, init_weights=False))
    adapted = model(x).asnumpy()
    model.merge_adapter()
    assert max_diff(model(x), adapted) < 1e-5
    model.unmerge_adapter()
    with model.disable_adapter():
        assert max_diff(model(x), adapted) > 1e-3
    with pytest.raises(ValueError, match="cannot wrap a mindspore.nn.Dense that has an activation"):
        get_peft_model(nn.SequentialCell([nn.Dense(4, 4, activation="relu")]), OURS[method](target_modules=["0"]))


def test_factorization_matches_hf_peft():
    from peft.tuners.lokr.layer import factorization as hf_factorization

    for dim in (1, 7, 12, 16, 20, 32, 127, 128, 256, 768, 1000):
        for factor in (-1, 1, 2, 3, 4, 8, 16):
            assert factorization(dim, factor) == hf_factorization(dim, factor), (dim, factor)


def test_bad_configs(tiny_model_dir, torch_mlp):
    with pytest.raises(ValueError, match="`r` should be a positive integer value but the value passed is 0"):
        LoHaConfig(r=0)
    with pytest.raises(ValueError, match=r"rank_dropout must be in \[0, 1\), got 1.5"):
        LoKrConfig(rank_dropout=1.5)
    with pytest.raises(ValueError, match="module_dropout must be a finite int or float"):
        LoHaConfig(module_dropout="0.1")
    with pytest.raises(ValueError, match=r"init_weights must be one of \(True, False\), got 'lycoris'"):
        LoHaConfig(init_weights="lycoris")
    assert LoKrConfig(init_weights="lycoris").init_weights == "lycoris"
    with pytest.raises(ValueError, match="decompose_factor must be -1 or a positive integer, got 0"):
        LoKrConfig(decompose_factor=0)
    with pytest.raises(ValueError, match="decompose_both must be True or False"):
        LoKrConfig(decompose_both="yes")
    with pytest.raises(ValueError, match="rank_pattern must map strings to positive integers"):
        LoHaConfig(rank_pattern={"lin0": 0})
    with pytest.raises(ValueError, match="`layers_to_transform` must also be specified"):
        LoKrConfig(layers_pattern="layers")
    with pytest.raises(ValueError, match="target_modules must be a string or a list of strings"):
        LoHaConfig(target_modules=3)
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal"))
    with pytest.raises(TypeError, match="of type Conv1D not supported, currently only adapters for Linear"):
        get_peft_model(gpt2, LoHaConfig(task_type="CAUSAL_LM"))  # HF peft refuses GPT-2's Conv1D too
    with pytest.raises(ValueError, match=r"Target modules \{'nothing'\} not found in the base model"):
        get_peft_model(MsMLP(torch_mlp), LoKrConfig(target_modules=["nothing"]))
