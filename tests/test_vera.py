"""VeRA against HF peft: torch's projection stream reproduced bit for bit, numbers both ways (MLP, GPT-2 Conv1D,
tiny llama), files, merging, several adapters sharing the projections, jit training, errors."""
import copy
import math

import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, nn
from mindspore.experimental import optim
from safetensors.numpy import load_file, save_file

from mindpeft import PeftModel, VeraConfig, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from mindpeft.utils.torch_random import TorchCPUGenerator
from conftest import adapter_shapes as _shapes, max_diff, ms_logits, MsMLP, rand_ids, torch_logits, torch_model

X = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
TARGETS = ["lin0", "lin1"]


def _hf_out(model, x=X):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def _ms_out(model, x=X):
    return model(Tensor(x)).asnumpy()


def _close(actual, expected):
    return max_diff(actual, expected) < 1e-4 + 1e-5 * np.abs(expected).max()


def _projections(ours, hf, adapter="default"):
    """Our projections equal HF peft's, bit for bit."""
    for name in ("vera_A", "vera_B"):
        mine = getattr(ours.base_model, name)[adapter].asnumpy()
        theirs = getattr(hf.base_model, name)[adapter].numpy()
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), name


@pytest.mark.parametrize("seed", [0, 1, 777, 2**32 + 5, -1])
def test_torch_uniform_stream_is_reproduced_bit_for_bit(seed):
    ours, theirs = TorchCPUGenerator(seed), torch.Generator().manual_seed(seed)
    for shape, bound in [((4, 16), 0.3), ((3, 7), 1.0), ((1, 1), 2.5), ((256, 4096), math.sqrt(6 / 4096)),
                         ((32, 5), 1e-3)]:
        expected = torch.empty(shape).uniform_(-bound, bound, generator=theirs).numpy()
        assert np.array_equal(ours.uniform(shape, -bound, bound), expected), (shape, bound)


CASES = [
    {"r": 4},
    {"r": 4, "save_projection": False, "projection_prng_key": 12345},  # projections regenerated on load
    {"r": 3, "bias": "vera_only", "d_initial": 0.5},
]


@pytest.mark.parametrize("kwargs", CASES)
def test_mlp_matches_hf_peft_both_ways(torch_mlp, tmp_path, kwargs):
    base = _hf_out(torch_mlp)
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.VeraConfig(target_modules=TARGETS, init_weights=False,
                                                                       **kwargs)).eval()
    if kwargs.get("bias") == "vera_only":
        with torch.no_grad():
            hf.base_model.model.lin1.base_layer.bias += 0.5  # a trained bias travels with the adapter
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_out(hf)
    assert max_diff(expected, base) > 1e-2

    loaded = PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path / "hf"))  # made by HF, loaded by mindpeft
    loaded.set_train(False)
    assert _close(_ms_out(loaded), expected)
    _projections(loaded, hf)

    ours = get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=TARGETS, init_weights=False, **kwargs))
    ours.set_train(False)
    _projections(ours, hf)
    trainable, total = ours.get_nb_trainable_parameters()
    hf_trainable, hf_total = hf.get_nb_trainable_parameters()
    projection_size = 2 * kwargs["r"] * 32  # vera_A (r, 32) + vera_B (32, r): buffers in torch, not counted there
    assert (trainable, total) == (hf_trainable, hf_total + projection_size)
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    assert ("base_model.vera_A" in _shapes(tmp_path / "ms")) == kwargs.get("save_projection", True)
    adapted = _ms_out(ours)
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path / "ms")).eval()
    assert _close(_hf_out(back), adapted)

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert _close(_ms_out(loaded), expected)
    loaded.unmerge_adapter()
    assert all(np.allclose(p.asnumpy(), before[n], atol=1e-5) for n, p in loaded.parameters_and_names())
    if "bias" not in kwargs:
        with loaded.disable_adapter():
            assert max_diff(_ms_out(loaded), base) < 1e-5
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_out(merged), expected)


def test_default_init_is_the_identity_with_hf_shapes(torch_mlp):
    ours = get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=TARGETS, r=8))
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.VeraConfig(target_modules=TARGETS, r=8))
    assert max_diff(_ms_out(ours), _hf_out(torch_mlp)) < 1e-5
    theirs = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    theirs.update({"base_model.vera_A.default": (8, 32), "base_model.vera_B.default": (32, 8)})
    assert {n: tuple(p.shape) for n, p in ours.parameters_and_names()} == theirs
    assert np.allclose(ours.base_model.model.lin0.vera_lambda_d["default"].asnumpy(), 0.1)


def test_gpt2_conv1d_matches_hf_peft_both_ways(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    config = dict(task_type="CAUSAL_LM", r=8, init_weights=False)  # default target: c_attn, a Conv1D
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"), peft.VeraConfig(**config)).eval()
    with pytest.warns(UserWarning, match="Setting fan_in_fan_out to True"):
        ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), VeraConfig(**config))
    ours.set_train(False)
    assert ours.peft_config["default"].fan_in_fan_out
    _projections(ours, hf)
    hf.save_pretrained(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    expected = torch_logits(hf, inputs)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(ms_logits(loaded, inputs), expected) < 1e-4
    adapted = ms_logits(ours, inputs)
    back = peft.PeftModel.from_pretrained(torch_model(path, "gpt2", "causal"), str(tmp_path / "ms")).eval()
    assert max_diff(torch_logits(back, inputs), adapted) < 1e-4
    assert max_diff(ms_logits(ours.merge_and_unload(), inputs), adapted) < 1e-4


def test_tiny_llama_matches_hf_peft_both_ways(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    config = dict(task_type="CAUSAL_LM", r=16, init_weights=False, save_projection=False)
    hf = peft.get_peft_model(torch_model(path, "llama", "causal"), peft.VeraConfig(**config)).eval()
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), VeraConfig(**config))
    ours.set_train(False)
    assert ours.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    assert ours.get_nb_trainable_parameters()[0] == hf.get_nb_trainable_parameters()[0]
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


def test_multiple_adapters_share_the_first_projections_as_in_hf_peft(torch_mlp, tmp_path):
    ours = get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=TARGETS, r=4, init_weights=False))
    ours.add_adapter("second", VeraConfig(target_modules=["lin1"], r=4, init_weights=False))
    ours.set_train(False)
    assert np.array_equal(ours.base_model.vera_A["second"].asnumpy(), ours.base_model.vera_A["default"].asnumpy())
    first = _ms_out(ours)
    ours.set_adapter("second")
    second = _ms_out(ours)
    ours.base_model.set_adapter(["default", "second"])
    both = _ms_out(ours)
    assert max_diff(first, second) > 1e-2 and max_diff(both, first) > 1e-2
    ours.set_adapter("default")
    ours.save_pretrained(str(tmp_path))
    assert _shapes(tmp_path / "second")["base_model.vera_A"] == (4, 32)  # the first adapter's projection, as HF saves

    hf = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "second"), adapter_name="second")
    assert _close(_hf_out(hf), first)
    hf.set_adapter("second")
    assert _close(_hf_out(hf), second)
    hf.base_model.set_adapter(["default", "second"])
    assert _close(_hf_out(hf), both)

    loaded = PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path))
    loaded.load_adapter(str(tmp_path / "second"), adapter_name="second")
    loaded.base_model.set_adapter(["default", "second"])
    assert _close(_ms_out(loaded), both)
    loaded.merge_adapter()
    assert _close(_ms_out(loaded), both)
    loaded.unmerge_adapter()
    loaded.delete_adapter("default")
    assert list(loaded.peft_config) == ["second"] and list(loaded.base_model.vera_A.keys()) == ["second"]
    assert _close(_ms_out(loaded), second)


def test_adapters_that_do_not_fit_the_shared_projections_are_refused(torch_mlp):
    model = get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=["lin1"], r=4))  # projections (4, 32), (8, 4)
    before = _ms_out(model)
    refusals = [
        (VeraConfig(target_modules=["lin0"], r=4), "vera_B has a size of 8 but 32 or greater is required; this "
         "probably happened because an additional VeRA adapter was added after the first one with incompatible"),
        (VeraConfig(target_modules=["lin1"], r=8), "vera_A has a size of 4 but 8 or greater is required; this "
         "probably happened because an additional VeRA adapter with a lower rank was added"),
        (VeraConfig(target_modules=["lin1"], r=2), "VeRA adapter 'x' has r=2 but the shared projections have rank 4"),
        (VeraConfig(target_modules=["lin1"], r=4, projection_prng_key=3),
         "Vera PRNG initialisation key must be the same for all adapters"),
    ]
    for config, message in refusals:
        with pytest.raises(ValueError, match=message):
            model.add_adapter("x", config)
    with pytest.warns(UserWarning, match="Specified to not save vera_A and vera_B"):
        unsaved = VeraConfig(target_modules=["lin1"], r=4, save_projection=False)
    with pytest.raises(ValueError, match=r"must be saved for all adapters or none, but got multiple different "
                                         r"values: \[False, True\]"):
        model.add_adapter("x", unsaved)
    assert list(model.peft_config) == ["default"] and model.base_model.vera_A.keys() == ["default"]
    assert max_diff(_ms_out(model), before) == 0.0


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


def test_jit_steps_lower_the_loss_and_equal_pynative(torch_mlp):
    batch = {"x": Tensor(X), "y": Tensor(np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32))}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=TARGETS, r=8))
        model.set_train(False)  # no dropout: the two runs must agree
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        assert "base_model.vera_A.default" in frozen
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(**batch)) for _ in range(5)]
        assert losses[-1] < losses[0] - 1e-3
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5

    model = get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=TARGETS, r=8, vera_dropout=0.5))
    model.set_train(True)
    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-3), loss_fn=_mse(model))
    assert all(np.isfinite(float(step(**batch))) for _ in range(2))


def test_bad_configs_and_files(torch_mlp, tmp_path):
    with pytest.raises(ValueError, match=r"r must be a positive integer, got 0 \(int\)"):
        VeraConfig(r=0)
    with pytest.raises(ValueError, match=r"vera_dropout must be in \[0, 1\), got 1.0"):
        VeraConfig(vera_dropout=1.0)
    with pytest.raises(ValueError, match=r"bias must be one of \('none', 'all', 'vera_only'\), got 'lora_only'"):
        VeraConfig(bias="lora_only")
    with pytest.raises(ValueError, match="projection_prng_key must be an integer, got 0.5"):
        VeraConfig(projection_prng_key=0.5)
    with pytest.raises(ValueError, match="`layers_to_transform` must also be specified"):
        VeraConfig(layers_pattern="layers")
    with pytest.raises(ValueError, match="No layers types compatible with VeRA were found"):
        get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=["nothing"]))
    with pytest.raises(ValueError, match="VeRA cannot wrap a mindspore.nn.Dense that has an activation"):
        get_peft_model(nn.SequentialCell([nn.Dense(4, 4, activation="relu")]), VeraConfig(target_modules=["0"]))

    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.VeraConfig(target_modules=TARGETS, r=4))
    hf.save_pretrained(str(tmp_path))
    file = str(tmp_path / "adapter_model.safetensors")
    save_file({k: v for k, v in load_file(file).items() if "vera_A" not in k}, file)
    with pytest.raises(ValueError, match=r"lacks weights its config promises: \['base_model.vera_A.default'\]"):
        PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path))

    model = get_peft_model(MsMLP(torch_mlp), VeraConfig(target_modules=TARGETS, r=4))
    before = _ms_out(model)
    with pytest.raises(ValueError, match="lacks weights its config promises"):
        model.load_adapter(str(tmp_path), adapter_name="other")
    assert list(model.peft_config) == ["default"] and max_diff(_ms_out(model), before) == 0.0
    model.add_adapter("other", VeraConfig(target_modules=TARGETS, r=4))
    assert model.base_model.vera_A.keys() == ["default", "other"]
