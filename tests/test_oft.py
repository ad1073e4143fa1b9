"""OFT against HF peft 0.21: numbers both ways (Linear, Embedding, Conv2d, LLaMA), files, merging, multiple adapters,
gradients, jit training, errors."""
import copy

import mindspore as ms
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, nn
from mindspore.experimental import optim

from mindpeft import OFTConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.models.layers import Embedding, Linear
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import adapter_shapes as _shapes, max_diff, ms_logits, rand_ids, torch_logits, torch_model

IDS = np.random.default_rng(0).integers(0, 20, (3, 5))
IMAGES = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
MLP_TARGETS = ["emb", "lin0", "lin1"]
CASES = [  # HF's default Neumann series; the exact Cayley transform; one shared block with COFT's projection
    {"oft_block_size": 4, "bias": "all"},
    {"r": 4, "oft_block_size": 0, "use_cayley_neumann": False, "bias": "oft_only"},
    {"oft_block_size": 8, "block_share": True, "coft": True, "eps": 0.4, "num_cayley_neumann_terms": 3},
]


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 16)
        self.lin0 = torch.nn.Linear(16, 32)
        self.lin1 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(self.emb(x))))


class TorchConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.point = torch.nn.Conv2d(6, 8, 1)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.point(torch.relu(self.conv(x))).mean((2, 3)))


def _copy_weights(cell, torch_twin):
    state = torch_twin.state_dict()
    for name, param in cell.parameters_and_names():
        param.set_data(Tensor(state[name].numpy()))


class MsMLP(nn.Cell):
    def __init__(self, torch_twin):
        super().__init__()
        self.emb = Embedding(20, 16)
        self.lin0 = Linear(16, 32)
        self.lin1 = Linear(32, 8)
        _copy_weights(self, torch_twin)

    def construct(self, x):
        return self.lin1(ms.ops.relu(self.lin0(self.emb(x))))


class MsConvNet(nn.Cell):
    def __init__(self, torch_twin):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, pad_mode="pad", padding=1, has_bias=True)
        self.point = nn.Conv2d(6, 8, 1, pad_mode="valid", has_bias=True)
        self.head = Linear(8, 3)
        _copy_weights(self, torch_twin)

    def construct(self, x):
        return self.head(self.point(ms.ops.relu(self.conv(x))).mean((2, 3)))


@pytest.fixture
def torch_mlp():
    torch.manual_seed(1)
    return TorchMLP().eval()


@pytest.fixture
def torch_conv():
    torch.manual_seed(2)
    return TorchConvNet().eval()


def _inputs(model):
    return IMAGES if isinstance(model, (TorchConvNet, MsConvNet)) else IDS


def _hf_out(model, x):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def _ms_out(model, x):
    model.set_train(False)
    return model(Tensor(x.astype(np.int32) if x.dtype.kind == "i" else x)).asnumpy()


def _close(a, b):
    return max_diff(a, b) < 1e-4 + 1e-5 * np.abs(b).max()


def _check_both_ways(torch_base, ms_factory, config_kwargs, tmp_path):
    """HF's adapter loaded by mindpeft and mindpeft's loaded by HF give the same outputs, files and counts; returns
    (mindpeft model made by HF's file, HF model, base outputs, adapted outputs)."""
    x = _inputs(torch_base)
    base = _hf_out(torch_base, x)
    hf = peft.get_peft_model(copy.deepcopy(torch_base), peft.OFTConfig(init_weights=False, **config_kwargs)).eval()
    expected = _hf_out(hf, x)
    hf.save_pretrained(str(tmp_path / "hf"))
    assert max_diff(expected, base) > 1e-2

    loaded = PeftModel.from_pretrained(ms_factory(torch_base), str(tmp_path / "hf"))  # made by HF
    assert _close(_ms_out(loaded, x), expected)

    ours = get_peft_model(ms_factory(torch_base), OFTConfig(init_weights=False, **config_kwargs))
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    adapted = _ms_out(ours, x)
    assert max_diff(adapted, base) > 1e-2
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_base), str(tmp_path / "ms")).eval()
    assert _close(_hf_out(back, x), adapted)
    return loaded, hf, base, expected


@pytest.mark.parametrize("kwargs", CASES)
def test_mlp_with_embedding_matches_hf_peft_both_ways(torch_mlp, tmp_path, kwargs):
    loaded, _, base, expected = _check_both_ways(torch_mlp, MsMLP, {"target_modules": MLP_TARGETS, **kwargs},
                                                 tmp_path)
    keys = set(_shapes(tmp_path / "ms"))
    assert {"base_model.model.emb.oft_embedding_R.weight", "base_model.model.lin0.oft_R.weight"} <= keys
    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert _close(_ms_out(loaded, IDS), expected)
    loaded.unmerge_adapter()
    assert all(np.allclose(p.asnumpy(), before[n], atol=1e-5) for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert max_diff(_ms_out(loaded, IDS), base) < 1e-5
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_out(merged, IDS), expected)


def test_conv2d_matches_hf_peft_both_ways_and_merges_like_hf(torch_conv, tmp_path):
    # block size 4 does not divide the pointwise conv's 6 inputs: HF (and mindpeft) use 3, with a warning
    with pytest.warns(UserWarning, match=r"Invalid `oft_block_size` \(4\)! Adjusted `oft_block_size` to \(3\)"):
        loaded, hf, _, expected = _check_both_ways(torch_conv, MsConvNet,
                                                   {"target_modules": ["conv", "point"], "oft_block_size": 4,
                                                    "modules_to_save": ["head"]},
                                                   tmp_path)
    shapes = _shapes(tmp_path / "ms")
    assert shapes["base_model.model.conv.oft_R.weight"] == (9, 6)
    assert shapes["base_model.model.point.oft_R.weight"] == (2, 3)
    assert shapes["base_model.model.head.weight"] == (3, 8)  # modules_to_save
    # HF peft 0.21 folds rotated 3x3 patches back by summing their overlaps: its merged 3x3 conv differs from its
    # unmerged forward. mindpeft gives HF's numbers in both states.
    hf.merge_adapter()
    loaded.merge_adapter()
    assert _close(_ms_out(loaded, IMAGES), _hf_out(hf, IMAGES))
    assert max_diff(_ms_out(loaded, IMAGES), expected) > 1e-3


def test_pointwise_conv2d_merged_equals_unmerged(torch_conv):
    model = get_peft_model(MsConvNet(torch_conv), OFTConfig(target_modules=["point"], oft_block_size=2,
                                                            init_weights=False))
    adapted = _ms_out(model, IMAGES)
    model.merge_adapter()
    assert max_diff(_ms_out(model, IMAGES), adapted) < 1e-5
    model.unmerge_adapter()
    with model.disable_adapter():
        assert max_diff(_ms_out(model, IMAGES), _hf_out(torch_conv, IMAGES)) < 1e-5


def test_default_init_is_the_identity_with_hf_shapes(torch_mlp):
    ours = get_peft_model(MsMLP(torch_mlp), OFTConfig(target_modules=MLP_TARGETS))
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.OFTConfig(target_modules=MLP_TARGETS))
    assert max_diff(_ms_out(ours, IDS), _hf_out(torch_mlp, IDS)) < 1e-5
    assert ({n: tuple(p.shape) for n, p in ours.parameters_and_names()}
            == {n: tuple(p.shape) for n, p in hf.named_parameters()})


def test_tiny_llama_matches_hf_peft_both_ways(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    config = dict(task_type="CAUSAL_LM", init_weights=False, oft_block_size=8)  # default targets: q_proj, v_proj
    hf = peft.get_peft_model(torch_model(path, "llama", "causal"), peft.OFTConfig(**config)).eval()
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), OFTConfig(**config))
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


def test_multiple_adapters_match_hf_peft(torch_mlp, tmp_path):
    ours = get_peft_model(MsMLP(torch_mlp), OFTConfig(target_modules=["lin0", "lin1"], oft_block_size=4,
                                                      init_weights=False))
    ours.add_adapter("other", OFTConfig(target_modules=["lin1"], oft_block_size=8, init_weights=False))
    first = _ms_out(ours, IDS)
    ours.set_adapter("other")
    second = _ms_out(ours, IDS)
    ours.base_model.set_adapter(["default", "other"])
    both = _ms_out(ours, IDS)
    assert max_diff(first, second) > 1e-2 and max_diff(both, first) > 1e-2
    ours.set_adapter("default")
    ours.save_pretrained(str(tmp_path))

    hf = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "other"), adapter_name="other")
    assert _close(_hf_out(hf, IDS), first)
    hf.set_adapter("other")
    assert _close(_hf_out(hf, IDS), second)
    hf.base_model.set_adapter(["default", "other"])
    assert _close(_hf_out(hf, IDS), both)

    # Two adapters on one layer merge in HF's order (R_default, then R_b), as HF does.
    ours.base_model.set_adapter(["default", "other"])
    ours.merge_adapter()
    hf.merge_adapter()
    assert _close(_ms_out(ours, IDS), _hf_out(hf, IDS))
    ours.unmerge_adapter()
    ours.delete_adapter("other")
    assert list(ours.peft_config) == ["default"] and max_diff(_ms_out(ours, IDS), first) < 1e-5


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


TARGET = np.random.default_rng(3).standard_normal((3, 5, 8)).astype(np.float32)


def test_gradients_match_hf_peft(torch_mlp, tmp_path):
    kwargs = {"target_modules": ["lin0", "lin1"], "oft_block_size": 4, "use_cayley_neumann": False}
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.OFTConfig(init_weights=False, **kwargs))
    hf.save_pretrained(str(tmp_path))
    loss = ((hf(torch.tensor(IDS)) - torch.tensor(TARGET)) ** 2).mean()
    loss.backward()
    expected = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.requires_grad}

    ours = PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path), is_trainable=True)
    ours.set_train(False)
    params = ours.trainable_params()
    grad_fn = ms.jit(ms.value_and_grad(_mse(ours), None, params))  # exact Cayley: MatrixInverse's gradient
    value, grads = grad_fn(Tensor(IDS.astype(np.int32)), Tensor(TARGET))
    assert abs(float(value) - loss.item()) < 1e-5
    for param, grad in zip(params, grads):
        assert max_diff(grad, expected[param.name]) < 1e-5 + 1e-4 * np.abs(expected[param.name]).max()


@pytest.mark.parametrize("kwargs", [CASES[1], CASES[2]])
def test_jit_steps_lower_the_loss_and_equal_pynative(torch_mlp, kwargs):
    batch = {"x": Tensor(IDS.astype(np.int32)), "y": Tensor(TARGET)}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsMLP(torch_mlp), OFTConfig(target_modules=MLP_TARGETS, init_weights=False,
                                                           **kwargs))
        model.set_train(False)
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(**batch)) for _ in range(5)]
        assert losses[-1] < losses[0] - 1e-3
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


def test_mindspore_dense_layer():
    net = nn.SequentialCell([nn.Dense(12, 6)])
    x = Tensor(np.random.default_rng(2).standard_normal((4, 12)).astype(np.float32))
    model = get_peft_model(net, OFTConfig(target_modules=["0"], oft_block_size=3, init_weights=False))
    adapted = model(x).asnumpy()
    model.merge_adapter()
    assert max_diff(model(x), adapted) < 1e-5
    model.unmerge_adapter()
    with model.disable_adapter():
        assert max_diff(model(x), adapted) > 1e-3


def test_bad_configs(tiny_model_dir, torch_mlp):
    with pytest.raises(ValueError, match=r"You can only specify either r \(4\) or oft_block_size \(32\), but not "
                                         "both simultaneously"):
        OFTConfig(r=4)
    with pytest.raises(ValueError, match=r"Either `r` or `oft_block_size` must be non-zero. Currently, r = 0 and "
                                         r"oft_block_size = 0."):
        OFTConfig(oft_block_size=0)
    with pytest.raises(ValueError, match="oft_block_size must be a non-negative integer, got -2"):
        OFTConfig(oft_block_size=-2)
    with pytest.raises(ValueError, match=r"bias must be one of \('none', 'all', 'oft_only'\), got 'lora_only'"):
        OFTConfig(bias="lora_only")
    with pytest.raises(ValueError, match=r"module_dropout must be in \[0, 1\), got 1.5"):
        OFTConfig(module_dropout=1.5)
    with pytest.raises(ValueError, match="num_cayley_neumann_terms must be a positive integer, got 0"):
        OFTConfig(num_cayley_neumann_terms=0)
    with pytest.raises(ValueError, match="coft must be True or False"):
        OFTConfig(coft="yes")
    with pytest.raises(ValueError, match="`layers_to_transform` must also be specified"):
        OFTConfig(layers_pattern="layers")
    with pytest.warns(UserWarning, match=r"Invalid `r` \(5\)! Adjusted `r` to \(4\)"):
        model = get_peft_model(MsMLP(torch_mlp), OFTConfig(target_modules=["lin0"], r=5, oft_block_size=0))
    assert model.base_model.model.lin0.r == {"default": 4}
    for conv, message in [(nn.Conv2d(4, 4, (3, 1)), r"square Conv2d kernels only .* got kernel_size \(3, 1\)"),
                          (nn.Conv2d(4, 4, 3, dilation=2), r"dilation > 1 is not supported by OFT"),
                          (nn.Conv2d(4, 4, 3, group=2), r"groups > 1 \(got group=2\)")]:
        with pytest.raises(ValueError, match=message):
            get_peft_model(nn.SequentialCell([conv]), OFTConfig(target_modules=["0"], oft_block_size=2))
    with pytest.raises(ValueError, match="cannot wrap a mindspore.nn.Dense that has an activation"):
        get_peft_model(nn.SequentialCell([nn.Dense(4, 4, activation="relu")]), OFTConfig(target_modules=["0"]))
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal"))
    with pytest.raises(TypeError, match="Conv1D is not supported. Currently, only Linear/Dense, Conv2d and Embedding"):
        get_peft_model(gpt2, OFTConfig(task_type="CAUSAL_LM"))  # HF peft refuses GPT-2's Conv1D too
