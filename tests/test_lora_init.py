"""LoRA initialisations against HF peft: PiSSA / OLoRA (factors and residual base weights), PiSSA with a randomized
SVD (by its approximation error: both libraries draw random matrices), orthogonal (B A = 0, ranks), the conversion
of a trained PiSSA/OLoRA adapter into a plain LoRA adapter that HF peft loads on the original weights, jit training
steps, and HF's errors."""
import copy
import json
import os

import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, mint, nn, ops
from mindspore.experimental import optim
from safetensors.numpy import load_file
from transformers.pytorch_utils import Conv1D as TorchConv1D

from mindpeft import LoraConfig, PeftModel, get_peft_model
from mindpeft.models.layers import Conv1D, Linear as LinearLayer
from mindpeft.models.modeling_utils import write_parameter
from mindpeft.training import TrainStep
from mindpeft.tuners.lora.initialization import pissa_factors, randomized_svd
from conftest import max_diff

tnn = torch.nn
TARGETS = ["lin0", "proj", "lin1"]


class TorchNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.proj, self.lin1 = tnn.Linear(12, 16), TorchConv1D(10, 16), tnn.Linear(10, 4)

    def forward(self, x):
        return self.lin1(torch.relu(self.proj(torch.relu(self.lin0(x)))))


class MsNet(nn.Cell):
    """``lin0`` mindpeft's Linear, ``proj`` GPT-2's Conv1D (weights (in, out)), ``lin1`` a ``mint.nn.Linear``."""

    def __init__(self, twin):
        super().__init__()
        self.lin0, self.proj, self.lin1 = LinearLayer(12, 16), Conv1D(10, 16), mint.nn.Linear(10, 4)
        state = twin.state_dict()
        for name, param in self.parameters_and_names():
            write_parameter(param, state[name].numpy())

    def construct(self, x):
        return self.lin1(ops.relu(self.proj(ops.relu(self.lin0(x)))))


_BASE = {}


def torch_net():
    if "net" not in _BASE:
        torch.manual_seed(7)
        _BASE["net"] = TorchNet().eval()
    return copy.deepcopy(_BASE["net"])


X = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)


def ms_out(model, x=X):
    return model(Tensor(x)).asnumpy()


def hf_out(model, x=X):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def assert_close(actual, expected, atol=1e-4):
    err = np.abs(actual.astype(np.float64) - expected)
    assert (err <= atol + 1e-5 * np.abs(expected)).all(), f"max abs diff {err.max()}"


def _pair(init, targets=TARGETS, **extra):
    kwargs = dict(target_modules=targets, r=4, lora_alpha=8, init_lora_weights=init, **extra)
    hf = peft.get_peft_model(torch_net(), peft.LoraConfig(**kwargs)).eval()
    ours = get_peft_model(MsNet(torch_net()), LoraConfig(**kwargs))
    ours.set_train(False)
    return hf, ours


def _layers(hf, ours, name):
    return getattr(hf.base_model.model, name), getattr(ours.base_model.model, name)


def _sign_free(reference, rows):
    """``rows`` with each row's sign flipped to agree with ``reference``'s (singular vectors and QR factors are
    unique up to the sign of each component)."""
    return rows * np.where((reference * rows).sum(axis=1, keepdims=True) < 0, -1.0, 1.0)


# OLoRA on GPT-2's Conv1D: HF peft 0.21 decomposes the (in, out) weight as stored and its adapter then changes the
# output; mindpeft decomposes (out, in) like PiSSA does, so that layer is checked on its own below.
@pytest.mark.parametrize("init,targets", [("pissa", TARGETS), ("olora", ["lin0", "lin1"])])
def test_factors_and_residual_weights_match_hf_peft(init, targets):
    hf, ours = _pair(init, targets)
    base = hf_out(torch_net())
    assert_close(ms_out(ours), base)  # the residual plus the adapter is the original layer
    assert_close(ms_out(ours), hf_out(hf))
    for name in targets:
        hf_layer, our_layer = _layers(hf, ours, name)
        assert_close(our_layer.get_base_layer().weight.asnumpy(), hf_layer.base_layer.weight.detach().numpy())
        hf_a, hf_b = (hf_layer.lora_A["default"].weight.detach().numpy(),
                      hf_layer.lora_B["default"].weight.detach().numpy())
        our_a, our_b = our_layer.lora_A["default"].weight.asnumpy(), our_layer.lora_B["default"].weight.asnumpy()
        assert_close(_sign_free(hf_a, our_a), hf_a)  # rows of A
        assert_close(_sign_free(hf_b.T, our_b.T).T, hf_b)  # columns of B
    assert max_diff(ours.base_model.model.lin0.get_base_layer().weight, torch_net().lin0.weight) > 1e-2


def test_olora_on_conv1d_decomposes_the_out_in_weight():
    ours = get_peft_model(MsNet(torch_net()), LoraConfig(target_modules=["proj"], r=4, lora_alpha=8,
                                                         init_lora_weights="olora"))
    assert_close(ms_out(ours), hf_out(torch_net()))
    layer = ours.base_model.model.proj
    a, b = layer.lora_A["default"].weight.asnumpy(), layer.lora_B["default"].weight.asnumpy()
    original = torch_net().proj.weight.detach().numpy().T  # (out, in)
    assert np.allclose(b.T @ b, np.eye(4), atol=1e-5)  # Q's first columns
    assert np.allclose(np.tril(a[:, :4], -1), 0, atol=1e-6)  # R's first rows
    assert_close(layer.get_base_layer().weight.asnumpy().T, original - 2.0 * b @ a)


def test_pissa_niter_is_a_randomized_svd():
    hf, ours = _pair("pissa_niter_6", ["lin0", "proj"])
    assert_close(ms_out(ours), hf_out(torch_net()))
    assert_close(hf_out(hf), hf_out(torch_net()))
    for name in ("lin0", "proj"):
        hf_layer, our_layer = _layers(hf, ours, name)
        weight = getattr(torch_net(), name).weight.detach().numpy()
        weight = weight.T if name == "proj" else weight
        tail = np.linalg.svd(weight, compute_uv=False)[4:]
        optimal = np.sqrt((tail ** 2).sum())  # the best rank-4 approximation's error (Eckart-Young)
        for delta in (our_layer.delta_weight("default"), hf_layer.get_delta_weight("default").detach().numpy()):
            delta = delta.T if name == "proj" else delta
            assert optimal * (1 - 1e-6) <= np.linalg.norm(weight - delta) < 1.02 * optimal
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((6, 20))  # wide matrices are decomposed through their transpose, as in torch
    u, s, v = randomized_svd(wide, 6, 2, rng)
    assert np.allclose(u @ np.diag(s) @ v.T, wide) and u.shape == (6, 6) and v.shape == (20, 6)
    a, b, residual = pissa_factors(wide, 2, 0.5, niter=0, rng=rng)
    assert np.allclose(residual + 0.5 * b @ a, wide)


def test_orthogonal_init_starts_as_the_identity_like_hf_peft():
    hf, ours = _pair("orthogonal")
    assert_close(ms_out(ours), hf_out(torch_net()))
    for name in TARGETS:
        for a, b in (
                (l.lora_A["default"].weight, l.lora_B["default"].weight) for l in _layers(hf, ours, name)):
            a, b = (t.detach().numpy() if hasattr(t, "detach") else t.asnumpy() for t in (a, b))
            assert np.abs(b @ a).max() < 1e-6
            assert np.linalg.matrix_rank(a, 1e-6) == np.linalg.matrix_rank(b, 1e-6) == 2  # r / 2
            assert 0.02 < np.abs(a).mean() < 0.2 and 0.02 < np.abs(b).mean() < 0.2
    for lib in (peft, None):
        with pytest.raises(ValueError, match="Orthogonal initialization requires the LoRA rank to be even, got 3"):
            if lib is peft:
                peft.get_peft_model(torch_net(), peft.LoraConfig(target_modules=["lin0"], r=3,
                                                                 init_lora_weights="orthogonal"))
            else:
                get_peft_model(MsNet(torch_net()), LoraConfig(target_modules=["lin0"], r=3,
                                                              init_lora_weights="orthogonal"))


def _train(model, jit):
    y = Tensor(np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32))

    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=3e-2), loss_fn=loss_fn, jit=jit)
    return [float(step(x=Tensor(X), y=y)) for _ in range(3)]


def _shapes(folder):
    return {k: v.shape for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_trained_adapter_converts_to_lora_for_the_original_weights(tmp_path, init):
    targets = TARGETS if init == "pissa" else ["lin0", "lin1"]
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsNet(torch_net()), LoraConfig(target_modules=targets, r=4, lora_alpha=8,
                                                              init_lora_weights=init))
        model.set_train(False)
        if jit:
            model.save_pretrained(str(tmp_path / "init"))
        runs.append((_train(model, jit), model))
    (jit_losses, trained), (py_losses, eager) = runs
    assert jit_losses[-1] < jit_losses[0] and np.allclose(jit_losses, py_losses, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a.asnumpy() - b.asnumpy()).max()
               for a, b in zip(trained.trainable_params(), eager.trainable_params())) < 1e-5
    trained.set_train(False)
    adapted = ms_out(trained)
    assert max_diff(adapted, hf_out(torch_net())) > 1e-2

    trained.save_pretrained(str(tmp_path / "mutated"))  # HF peft re-runs the initialisation on the original weights
    hf_mutated = peft.PeftModel.from_pretrained(torch_net(), str(tmp_path / "mutated")).eval()
    assert_close(adapted, hf_out(hf_mutated))
    ours_again = PeftModel.from_pretrained(MsNet(torch_net()), str(tmp_path / "mutated"))
    assert_close(ms_out(ours_again), adapted)

    trained.save_pretrained(str(tmp_path / "lora"), path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    assert ms_out(trained).tolist() == adapted.tolist() and trained.peft_config.keys() == {"default"}
    config = json.load(open(tmp_path / "lora" / "adapter_config.json"))
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16, True)
    assert json.load(open(tmp_path / "init" / "adapter_config.json"))["init_lora_weights"] is True
    hf_lora = peft.PeftModel.from_pretrained(torch_net(), str(tmp_path / "lora")).eval()  # the ORIGINAL weights
    assert_close(hf_out(hf_lora), adapted)
    assert_close(ms_out(PeftModel.from_pretrained(MsNet(torch_net()), str(tmp_path / "lora"))), adapted)

    hf = peft.get_peft_model(torch_net(), peft.LoraConfig(target_modules=targets, r=4, lora_alpha=8,
                                                          init_lora_weights=init))
    hf.save_pretrained(str(tmp_path / "hf_init"))
    hf.save_pretrained(str(tmp_path / "hf_lora"), path_initial_model_for_weight_conversion=str(tmp_path / "hf_init"))
    assert _shapes(tmp_path / "hf_lora") == _shapes(tmp_path / "lora")


def test_errors_match_hf_peft():
    with pytest.raises(ValueError, match="`loftq_config` must be specified when `init_lora_weights` is 'loftq'."):
        LoraConfig(init_lora_weights="loftq")
    with pytest.raises(ValueError, match="`loftq_config` must be specified"):
        peft.LoraConfig(init_lora_weights="loftq")
    message = "init_lora_weights should be 'pissa' or 'pissa_niter_\\[number of iters\\]', got pissa_iter_3 instead."
    with pytest.raises(ValueError, match=message):
        LoraConfig(init_lora_weights="pissa_iter_3")
    with pytest.raises(ValueError, match=message):
        peft.get_peft_model(torch_net(), peft.LoraConfig(target_modules=["lin0"], init_lora_weights="pissa_iter_3"))
    for init in ("pissa", "olora", "orthogonal"):  # HF peft's PiSSA/OLoRA/orthogonal are for linear layers
        with pytest.raises(ValueError, match=f"Unknown initialization init_lora_weights='{init}'"):
            peft.get_peft_model(tnn.Sequential(tnn.Conv2d(2, 4, 3)), peft.LoraConfig(target_modules=["0"], r=2,
                                                                                       init_lora_weights=init))
        with pytest.raises(ValueError, match=f"Unknown initialization init_lora_weights='{init}'"):
            get_peft_model(nn.SequentialCell([nn.Conv2d(2, 4, 3)]), LoraConfig(target_modules=["0"], r=2,
                                                                               init_lora_weights=init))
    with pytest.raises(ValueError, match="init_lora_weights='pissa' is not supported for MultiheadAttention"):
        get_peft_model(nn.SequentialCell([nn.MultiheadAttention(8, 2)]), LoraConfig(target_modules=["0"],
                                                                                  init_lora_weights="pissa"))
    with pytest.raises(ValueError, match="PiSSA initialisation needs r <= min\\(out_features, in_features\\) = 4"):
        get_peft_model(nn.SequentialCell([LinearLayer(6, 4)]), LoraConfig(target_modules=["0"], r=5,
                                                                          init_lora_weights="pissa"))
    with pytest.warns(UserWarning, match="won't be able to pass `path_initial_model_for_weight_conversion`"):
        config = LoraConfig(target_modules=["lin0"], init_lora_weights="pissa", use_rslora=True,
                            rank_pattern={"lin0": 2})
    model = get_peft_model(MsNet(torch_net()), config)
    with pytest.raises(ValueError, match="not supported when using `rank_pattern` or `alpha_pattern` at the same "
                                         "time as `use_rslora=True`"):
        model.save_pretrained("unused", path_initial_model_for_weight_conversion="unused_init")
