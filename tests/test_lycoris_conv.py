"""LoHa and LoKr on convolutions (``mindspore.nn.Conv2d``/``Conv1d`` against torch's) with and without
``use_effective_conv2d``, against HF peft: numbers both ways, files, trainable counts, merging, jit training, errors."""
import copy
import os

import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, mint, nn, ops
from mindspore.experimental import optim
from safetensors.numpy import load_file

from mindpeft import LoHaConfig, LoKrConfig, PeftModel, get_peft_model
from mindpeft.models.modeling_utils import write_parameter
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import max_diff

tnn = torch.nn
OURS = {"loha": LoHaConfig, "lokr": LoKrConfig}
HF = {"loha": peft.LoHaConfig, "lokr": peft.LoKrConfig}
TARGETS = ["c0", "c1", "c2", "d0", "d1", "d2"]
# Layers: 3x3 Conv2d, strided grouped 3x3 Conv2d with asymmetric padding, 1x1 Conv2d (never CP-decomposed), dilated
# Conv1d, Conv1d, kernel-1 Conv1d. LoKr r=1 gives low-rank w2 factors (CP cores lokr_t2 with use_effective_conv2d);
# rank 4 on c0/d0/d1 gives full lokr_w2 kernels (4-D and 3-D). HF peft 0.21 crashes on a Conv1d lokr_t2 (see
# test_lokr_conv1d_cp_core_matches_hf_formula), so d0 gets rank 4 there.
CASES = [
    ("loha", {"r": 2, "alpha": 24, "use_effective_conv2d": True, "rank_pattern": {"d1": 3}}),
    ("loha", {"r": 2, "alpha": 24, "alpha_pattern": {"c1": 8}}),
    ("lokr", {"r": 1, "alpha": 3, "use_effective_conv2d": True, "rank_pattern": {"c0": 4, "d0": 4, "d1": 4}}),
    ("lokr", {"r": 1, "alpha": 3, "decompose_both": True, "decompose_factor": 2}),
]
X = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)


class TorchConvNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = tnn.Conv2d(3, 8, 3, padding=1)
        self.c1 = tnn.Conv2d(8, 8, 3, stride=2, padding=(0, 1), groups=2)
        self.c2 = tnn.Conv2d(8, 6, 1)
        self.d0 = tnn.Conv1d(6, 8, 3, padding=1, dilation=2)
        self.d1 = tnn.Conv1d(8, 4, 3, padding=1)
        self.d2 = tnn.Conv1d(4, 4, 1)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(torch.relu(self.c0(x))))))
        return self.d2(torch.relu(self.d1(torch.relu(self.d0(x.flatten(2))))))


class MsConvNet(nn.Cell):
    def __init__(self, torch_twin):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, pad_mode="pad", padding=1, has_bias=True)
        self.c1 = nn.Conv2d(8, 8, 3, stride=2, pad_mode="pad", padding=(0, 0, 1, 1), group=2, has_bias=True)
        self.c2 = nn.Conv2d(8, 6, 1, pad_mode="valid", has_bias=True)
        self.d0 = nn.Conv1d(6, 8, 3, pad_mode="pad", padding=1, dilation=2, has_bias=True)
        self.d1 = nn.Conv1d(8, 4, 3, pad_mode="pad", padding=1, has_bias=True)
        self.d2 = nn.Conv1d(4, 4, 1, pad_mode="valid", has_bias=True)
        state = torch_twin.state_dict()
        for name, param in self.parameters_and_names():  # MindSpore keeps Conv1d weights as (out, in, 1, k)
            write_parameter(param, state[name].numpy().reshape(param.shape))

    def construct(self, x):
        x = ops.relu(self.c2(ops.relu(self.c1(ops.relu(self.c0(x))))))
        x = x.reshape(x.shape[0], x.shape[1], -1)
        return self.d2(ops.relu(self.d1(ops.relu(self.d0(x)))))


@pytest.fixture
def torch_net():
    torch.manual_seed(3)
    return TorchConvNet().eval()


def _hf_out(model):
    with torch.no_grad():
        return model(torch.tensor(X)).numpy()


def _ms_out(model):
    return model(Tensor(X)).asnumpy()


def _close(actual, expected):
    return max_diff(actual, expected) < 1e-4 + 1e-5 * np.abs(expected).max()


def _shapes(folder):
    return {k: v.shape for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}


def _adapter_shapes(named, prefix):
    return {n: tuple(p.shape) for n, p in named if prefix in n}


@pytest.mark.parametrize("method,kwargs", CASES)
def test_conv_adapters_match_hf_peft_both_ways(torch_net, tmp_path, method, kwargs):
    base = _hf_out(torch_net)
    hf = peft.get_peft_model(copy.deepcopy(torch_net), HF[method](target_modules=TARGETS, init_weights=False,
                                                                  **kwargs)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_out(hf)
    assert max_diff(expected, base) > 1e-2

    loaded = PeftModel.from_pretrained(MsConvNet(torch_net), str(tmp_path / "hf"))  # made by HF, loaded by mindpeft
    loaded.set_train(False)
    assert _close(_ms_out(loaded), expected)

    ours = get_peft_model(MsConvNet(torch_net), OURS[method](target_modules=TARGETS, init_weights=False, **kwargs))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    prefix = "hada_" if method == "loha" else "lokr_"
    assert (_adapter_shapes(ours.parameters_and_names(), prefix) == _adapter_shapes(hf.named_parameters(), prefix))
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    adapted = _ms_out(ours)
    assert max_diff(adapted, base) > 1e-2
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_net), str(tmp_path / "ms")).eval()
    assert _close(_hf_out(back), adapted)

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert _close(_ms_out(loaded), expected)
    loaded.unmerge_adapter()
    assert all(np.allclose(p.asnumpy(), before[n], atol=1e-6) for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert max_diff(_ms_out(loaded), base) < 1e-5
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_out(merged), expected)


@pytest.mark.parametrize("method", ["loha", "lokr"])
@pytest.mark.parametrize("effective", [True, False])
def test_default_init_is_the_identity_with_hf_shapes(torch_net, method, effective):
    config = dict(target_modules=TARGETS, r=2, use_effective_conv2d=effective)
    ours = get_peft_model(MsConvNet(torch_net), OURS[method](**config))
    hf = peft.get_peft_model(copy.deepcopy(torch_net), HF[method](**config))
    assert max_diff(_ms_out(ours), _hf_out(torch_net)) < 1e-5
    prefix = "hada_" if method == "loha" else "lokr_"
    assert _adapter_shapes(ours.parameters_and_names(), prefix) == _adapter_shapes(hf.named_parameters(), prefix)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert ([(s.name, s.module_type) for s in ours.get_layer_status()]  # loha.Conv2d, loha.Conv1d, ...
            == [(s.name, s.module_type) for s in hf.get_layer_status()])


def test_lokr_conv1d_cp_core_matches_hf_formula(torch_net):
    """A Conv1d with a CP core (``lokr_t2`` (r, r, k, 1)): HF peft 0.21.2's forward raises there (``torch.kron``
    fails on the stride of the core's trailing size-1 dimension), so its own formula is evaluated on a contiguous
    copy: ``kron(w1[..., None, None], cp(t2, w2_a, w2_b))`` reshaped to the weight, by ``F.conv1d``."""
    from peft.tuners.lokr.layer import make_weight_cp

    hf = peft.get_peft_model(copy.deepcopy(torch_net), peft.LoKrConfig(target_modules=["d0"], r=1, alpha=3,
                                                                       init_weights=False, use_effective_conv2d=True))
    layer = hf.base_model.model.d0
    assert tuple(layer.lokr_t2["default"].shape) == (1, 1, 3, 1)
    ours = get_peft_model(MsConvNet(torch_net), LoKrConfig(target_modules=["d0"], r=1, alpha=3,
                                                           use_effective_conv2d=True))
    ours.set_train(False)
    for name in ("lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
        write_parameter(getattr(ours.base_model.model.d0, name)["default"],
                        getattr(layer, name)["default"].detach().numpy())
    x = torch.randn(2, 6, 12)
    with torch.no_grad():
        w2 = make_weight_cp(layer.lokr_t2["default"], layer.lokr_w2_a["default"], layer.lokr_w2_b["default"])
        w1 = layer.lokr_w1["default"][:, :, None, None]
        delta = torch.kron(w1, w2.clone(memory_format=torch.contiguous_format)) * layer.scaling["default"]
        base = layer.base_layer
        expected = base(x) + torch.nn.functional.conv1d(x, delta.reshape(base.weight.shape), padding=1, dilation=2)
    got = ours.base_model.model.d0(Tensor(x.numpy())).asnumpy()
    assert max_diff(expected.numpy(), base(x).detach().numpy()) > 1e-2
    assert _close(got, expected.numpy())


def _mse(model, target):
    def loss_fn(x):
        return ((model(x) - target) ** 2).mean()

    return loss_fn


@pytest.mark.parametrize("method,kwargs", [CASES[0], CASES[2]])
def test_jit_steps_lower_the_loss_and_equal_pynative(torch_net, method, kwargs):
    target = Tensor(np.random.default_rng(1).standard_normal((2, 4, 10)).astype(np.float32))
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsConvNet(torch_net), OURS[method](target_modules=TARGETS, **kwargs))
        model.set_train(False)  # no dropout: the two runs must agree
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=5e-2), loss_fn=_mse(model, target), jit=jit)
        losses = [float(step(x=Tensor(X))) for _ in range(4)]
        assert losses[-1] < losses[0] - 1e-3
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


def test_rank_dropout_on_convolutions_trains_under_jit(torch_net):
    model = get_peft_model(MsConvNet(torch_net), LoHaConfig(target_modules=TARGETS, init_weights=False,
                                                            use_effective_conv2d=True, rank_dropout=0.5))
    model.set_train(True)
    target = Tensor(np.zeros((2, 4, 10), np.float32))
    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-3), loss_fn=_mse(model, target))
    assert all(np.isfinite(float(step(x=Tensor(X)))) for _ in range(2))


def test_unsupported_convolutions():
    with pytest.raises(TypeError, match="of type Conv3d not supported, currently only adapters for Linear/mindspore"
                                        r".nn.Dense, mindspore.nn.Conv1d and mindspore.nn.Conv2d layers are supported "
                                        "by LoKr"):
        get_peft_model(nn.SequentialCell([nn.Conv3d(2, 2, 3)]), LoKrConfig(target_modules=["0"]))
    with pytest.raises(TypeError, match="of type Conv2d not supported"):  # mint's has no CPU kernel to test with
        get_peft_model(nn.SequentialCell([mint.nn.Conv2d(2, 2, 3)]), LoHaConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="use_effective_conv2d must be True or False, got 'yes'"):
        LoKrConfig(use_effective_conv2d="yes")
