"""BOFT against HF peft 0.21: numbers both ways (Linear, Conv2d, LLaMA; one and several butterfly factors), files,
merging, multiple adapters, gradients, jit training, dropout, errors.

HF peft builds more than one butterfly factor only when its CUDA block-diagonal extension loads (elsewhere it
silently uses one factor). ``hf_butterfly`` stands in for that extension with ``torch.block_diag``, so HF computes
the butterfly product on CPU.
"""
import copy

import mindspore as ms
import numpy as np
import peft
import peft.tuners.boft.layer as hf_boft_layer
import pytest
import torch
from mindspore import Tensor, nn
from mindspore.experimental import optim

from mindpeft import BOFTConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.models.layers import Linear
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import adapter_shapes as _shapes, max_diff, ms_logits, rand_ids, torch_logits, torch_model

X = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
IMAGES = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
TARGET = np.random.default_rng(3).standard_normal((3, 5, 8)).astype(np.float32)
CASES = [
    {"boft_block_size": 4, "bias": "all"},
    {"boft_block_size": 0, "boft_block_num": 4, "boft_n_butterfly_factor": 2},
    {"boft_block_size": 2, "boft_n_butterfly_factor": 3, "bias": "boft_only"},
]


class _BlockDiagonal:
    """HF's CUDA ``fbd_cuda`` extension (batched block-diagonal matrix and its gradient) in plain torch."""

    @staticmethod
    def forward(blocks):
        return [torch.stack([torch.block_diag(*factor) for factor in blocks])]

    @staticmethod
    def backward(grad, blocks):
        size = blocks.shape[-1]
        return [torch.stack([torch.stack([g[j * size:(j + 1) * size, j * size:(j + 1) * size]
                                          for j in range(blocks.shape[1])]) for g in grad])]


@pytest.fixture
def hf_butterfly(monkeypatch):
    monkeypatch.setattr(hf_boft_layer, "get_fbd_cuda", lambda: _BlockDiagonal)


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
        self.lin0 = Linear(16, 32)
        self.lin1 = Linear(32, 8)
        _copy_weights(self, torch_twin)

    def construct(self, x):
        return self.lin1(ms.ops.relu(self.lin0(x)))


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
def torch_conv():
    torch.manual_seed(2)
    return TorchConvNet().eval()


def _hf_out(model, x):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def _ms_out(model, x):
    model.set_train(False)
    return model(Tensor(x)).asnumpy()


def _close(a, b):
    return max_diff(a, b) < 1e-4 + 1e-5 * np.abs(b).max()


def _check_both_ways(torch_base, ms_factory, x, config_kwargs, tmp_path):
    """HF's adapter loaded by mindpeft and mindpeft's loaded by HF give the same outputs, files and counts; checks
    merging, disabling and unloading on the one HF made."""
    base = _hf_out(torch_base, x)
    hf = peft.get_peft_model(copy.deepcopy(torch_base), peft.BOFTConfig(init_weights=False, **config_kwargs)).eval()
    expected = _hf_out(hf, x)
    hf.save_pretrained(str(tmp_path / "hf"))
    assert max_diff(expected, base) > 2e-3  # 20 times the tolerance below

    loaded = PeftModel.from_pretrained(ms_factory(torch_base), str(tmp_path / "hf"))  # made by HF
    assert _close(_ms_out(loaded, x), expected)

    ours = get_peft_model(ms_factory(torch_base), BOFTConfig(init_weights=False, **config_kwargs))
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    adapted = _ms_out(ours, x)
    assert max_diff(adapted, base) > 2e-3
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_base), str(tmp_path / "ms")).eval()
    assert _close(_hf_out(back, x), adapted)

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert _close(_ms_out(loaded, x), expected)
    loaded.unmerge_adapter()
    assert all(np.allclose(p.asnumpy(), before[n], atol=1e-5) for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert max_diff(_ms_out(loaded, x), base) < 1e-5
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_out(merged, x), expected)


@pytest.mark.parametrize("kwargs", CASES)
def test_mlp_matches_hf_peft_both_ways(hf_butterfly, torch_mlp, tmp_path, kwargs):
    _check_both_ways(torch_mlp, MsMLP, X, {"target_modules": ["lin0", "lin1"], **kwargs}, tmp_path)
    factors = kwargs.get("boft_n_butterfly_factor", 1)
    assert _shapes(tmp_path / "ms")["base_model.model.lin0.boft_R"][0] == factors
    assert _shapes(tmp_path / "ms")["base_model.model.lin1.boft_s"] == (8, 1)
    if kwargs.get("bias") == "boft_only":
        assert _shapes(tmp_path / "ms")["base_model.model.lin1.base_layer.bias"] == (8,)


@pytest.mark.parametrize("kwargs", [{"target_modules": ["conv", "point", "head"], "boft_block_size": 2},
                                    {"target_modules": ["conv"], "boft_block_size": 6, "boft_n_butterfly_factor": 2}])
def test_conv2d_matches_hf_peft_both_ways(hf_butterfly, torch_conv, tmp_path, kwargs):
    _check_both_ways(torch_conv, MsConvNet, IMAGES, kwargs, tmp_path)
    shapes = _shapes(tmp_path / "ms")
    assert shapes["base_model.model.conv.boft_s"] == (1, 6)
    size = kwargs["boft_block_size"]
    assert shapes["base_model.model.conv.boft_R"] == (kwargs.get("boft_n_butterfly_factor", 1), 36 // size, size, size)


def test_default_init_is_the_identity_with_hf_shapes(torch_mlp):
    ours = get_peft_model(MsMLP(torch_mlp), BOFTConfig(target_modules=["lin0", "lin1"]))
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.BOFTConfig(target_modules=["lin0", "lin1"]))
    assert max_diff(_ms_out(ours, X), _hf_out(torch_mlp, X)) < 1e-5
    assert ({n: tuple(p.shape) for n, p in ours.parameters_and_names()}
            == {n: tuple(p.shape) for n, p in hf.named_parameters()})


def test_tiny_llama_matches_hf_peft_both_ways(hf_butterfly, tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    config = dict(task_type="CAUSAL_LM", init_weights=False, boft_block_size=4, boft_n_butterfly_factor=2)
    hf = peft.get_peft_model(torch_model(path, "llama", "causal"), peft.BOFTConfig(**config)).eval()
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), BOFTConfig(**config))
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
    ours = get_peft_model(MsMLP(torch_mlp), BOFTConfig(target_modules=["lin0", "lin1"], init_weights=False))
    ours.add_adapter("other", BOFTConfig(target_modules=["lin1"], init_weights=False))
    first = _ms_out(ours, X)
    ours.set_adapter("other")
    second = _ms_out(ours, X)
    ours.base_model.set_adapter(["default", "other"])
    both = _ms_out(ours, X)
    assert max_diff(first, second) > 1e-2 and max_diff(both, first) > 1e-2
    ours.set_adapter("default")
    ours.save_pretrained(str(tmp_path))

    hf = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "other"), adapter_name="other")
    assert _close(_hf_out(hf, X), first)
    hf.set_adapter("other")
    assert _close(_hf_out(hf, X), second)
    hf.base_model.set_adapter(["default", "other"])
    assert _close(_hf_out(hf, X), both)

    ours.base_model.set_adapter(["default", "other"])
    ours.merge_adapter()
    assert _close(_ms_out(ours, X), both)
    ours.unmerge_adapter()
    ours.delete_adapter("other")
    assert list(ours.peft_config) == ["default"] and max_diff(_ms_out(ours, X), first) < 1e-5


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


def test_gradients_match_hf_peft(hf_butterfly, torch_mlp, tmp_path):
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.BOFTConfig(init_weights=False, **CASES[1],
                                                                       target_modules=["lin0", "lin1"]))
    hf.save_pretrained(str(tmp_path))
    loss = ((hf(torch.tensor(X)) - torch.tensor(TARGET)) ** 2).mean()
    loss.backward()
    expected = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.requires_grad}

    ours = PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path), is_trainable=True)
    ours.set_train(False)
    params = ours.trainable_params()
    grad_fn = ms.jit(ms.value_and_grad(_mse(ours), None, params))  # exact Cayley: MatrixInverse's gradient
    value, grads = grad_fn(Tensor(X), Tensor(TARGET))
    assert abs(float(value) - loss.item()) < 1e-5
    assert len(grads) == len(expected) == 4
    for param, grad in zip(params, grads):
        assert max_diff(grad, expected[param.name]) < 1e-5 + 1e-4 * np.abs(expected[param.name]).max()


def test_jit_steps_lower_the_loss_and_equal_pynative(torch_mlp):
    batch = {"x": Tensor(X), "y": Tensor(TARGET)}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsMLP(torch_mlp), BOFTConfig(target_modules=["lin0", "lin1"], init_weights=False,
                                                            **CASES[2]))
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


def test_dropout_trains_under_jit_and_is_off_in_eval(torch_mlp):
    model = get_peft_model(MsMLP(torch_mlp), BOFTConfig(target_modules=["lin0", "lin1"], init_weights=False,
                                                        boft_dropout=0.5, **CASES[1]))
    model.set_train(True)
    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-3), loss_fn=_mse(model))
    assert all(np.isfinite(float(step(x=Tensor(X), y=Tensor(TARGET)))) for _ in range(3))
    training = model(Tensor(X)).asnumpy()
    evaluated = _ms_out(model, X)
    assert max_diff(training, evaluated) > 1e-3  # half the blocks of one factor were the identity
    assert max_diff(_ms_out(model, X), evaluated) == 0.0


@pytest.mark.parametrize("has_bias", [True, False])
def test_mindspore_dense_layer(has_bias):
    net = nn.SequentialCell([nn.Dense(12, 6, has_bias=has_bias)])
    x = Tensor(np.random.default_rng(2).standard_normal((4, 12)).astype(np.float32))
    model = get_peft_model(net, BOFTConfig(target_modules=["0"], boft_block_size=2, boft_n_butterfly_factor=2,
                                           init_weights=False))
    adapted = model(x).asnumpy()
    model.merge_adapter()
    assert max_diff(model(x), adapted) < 1e-5
    model.unmerge_adapter()
    with model.disable_adapter():
        assert max_diff(model(x), adapted) > 1e-3


# (in_features 16 of lin0, config) pairs HF peft refuses in its layers; mindpeft must raise HF's message.
LAYER_ERRORS = [
    {"boft_block_size": 3},
    {"boft_block_size": 0, "boft_block_num": 3},
    {"boft_block_size": 4, "boft_n_butterfly_factor": 4},
    {"boft_block_size": 0, "boft_block_num": 4, "boft_n_butterfly_factor": 4},
    {"boft_block_size": 0, "boft_block_num": 16, "boft_n_butterfly_factor": 2},
]


@pytest.mark.parametrize("kwargs", LAYER_ERRORS)
def test_block_settings_raise_hf_peft_errors(hf_butterfly, torch_mlp, kwargs):
    with pytest.raises(ValueError) as hf_error:
        peft.get_peft_model(copy.deepcopy(torch_mlp), peft.BOFTConfig(target_modules=["lin0"], **kwargs))
    with pytest.raises(ValueError) as our_error:
        get_peft_model(MsMLP(torch_mlp), BOFTConfig(target_modules=["lin0"], **kwargs))
    assert str(our_error.value) == str(hf_error.value)


def test_bad_configs(tiny_model_dir, torch_conv):
    with pytest.raises(ValueError, match=r"You can only specify either boft_block_size \(4\) or boft_block_num "
                                         r"\(2\), but not both simultaneously"):
        BOFTConfig(boft_block_num=2)
    with pytest.raises(ValueError, match="Either `boft_block_size` or `boft_block_num` must be non-zero"):
        BOFTConfig(boft_block_size=0)
    with pytest.raises(ValueError, match="boft_n_butterfly_factor 0 to be a positive integer number"):
        BOFTConfig(boft_n_butterfly_factor=0)
    with pytest.raises(ValueError, match=r"boft_dropout must be in \[0, 1\), got 1.0"):
        BOFTConfig(boft_dropout=1.0)
    with pytest.raises(ValueError, match=r"bias must be one of \('none', 'all', 'boft_only'\), got 'oft_only'"):
        BOFTConfig(bias="oft_only")
    with pytest.raises(ValueError, match=r"Convolutional kernel dimension \(36\) must be divisible by "
                                         r"boft_block_size \(5\)!"):
        get_peft_model(MsConvNet(torch_conv), BOFTConfig(target_modules=["conv"], boft_block_size=5))
    with pytest.raises(ValueError, match=r"groups > 1 \(got group=2\)"):
        get_peft_model(nn.SequentialCell([nn.Conv2d(4, 4, 3, group=2)]), BOFTConfig(target_modules=["0"]))
    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal"))
    with pytest.raises(TypeError, match="Conv1D is not supported. Currently, only Linear/Dense and Conv2d"):
        get_peft_model(gpt2, BOFTConfig(task_type="CAUSAL_LM"))  # HF peft refuses GPT-2's Conv1D too
