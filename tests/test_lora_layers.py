"""LoRA on every layer type HF peft's LoRA wraps (linear, Conv1D, embedding, 1/2/3-D convolutions, multi-head
attention), ``lora_bias`` and custom layer types, against HF peft: the same tiny model built in torch and as a
MindSpore Cell, adapters moved both ways, files, trainable counts, merging, jit training steps."""
import copy
import os

import mindspore as ms
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, mint, nn, ops
from mindspore.experimental import optim
from safetensors.numpy import load_file
from transformers.pytorch_utils import Conv1D as TorchConv1D

import mindpeft
from mindpeft import LoraConfig, PeftModel, get_peft_model
from mindpeft.models.layers import Conv1D, Linear as LinearLayer, linear
from mindpeft.models.modeling_utils import write_parameter
from mindpeft.training import TrainStep
from mindpeft.tuners.lora.layer import ConvNd, Embedding, Linear, MultiheadAttention
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import max_diff

tnn = torch.nn


class CpuMintConv2d(mint.nn.Conv2d):
    """``mint.nn.Conv2d`` with a forward that runs on CPU: its Conv2DExt kernel has none (measured, MindSpore 2.10),
    so its LoRA math is checked through this subclass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pad = tuple(p for p in self.padding for _ in range(2))
        self.cpu_conv = ops.Conv2D(self.out_channels, self.kernel_size, pad_mode="pad", pad=pad, stride=self.stride)

    def construct(self, x):
        return self.cpu_conv(x, self.weight) + self.bias.reshape(1, -1, 1, 1)


class CpuMintEmbedding(mint.nn.Embedding):
    """``mint.nn.Embedding`` with a forward that runs on CPU (its Embedding kernel has none)."""

    def construct(self, x):
        return ops.gather(self.weight, x, 0)


# case: ([(layer name, torch layer, MindSpore layer)], input shape, integer input). Layers run in order with ReLUs
# between them; a layer named "mha" is called as self-attention.
LAYERS = {
    "linear": ([("lin0", lambda: tnn.Linear(10, 16), lambda: mint.nn.Linear(10, 16)),
                ("lin1", lambda: tnn.Linear(16, 16), lambda: nn.Dense(16, 16)),
                ("lin2", lambda: tnn.Linear(16, 6), lambda: LinearLayer(16, 6))], (3, 5, 10), False),
    "conv1d": ([("c0", lambda: tnn.Conv1d(4, 8, 3, stride=2, padding=1),
                 lambda: nn.Conv1d(4, 8, 3, stride=2, pad_mode="pad", padding=1, has_bias=True)),
                ("c1", lambda: tnn.Conv1d(8, 6, 3, padding=1, groups=2),
                 lambda: nn.Conv1d(8, 6, 3, pad_mode="pad", padding=1, group=2, has_bias=True))], (2, 4, 9), False),
    "conv2d": ([("c0", lambda: tnn.Conv2d(3, 8, 3, padding=1),
                 lambda: nn.Conv2d(3, 8, 3, pad_mode="pad", padding=1, has_bias=True)),
                ("c1", lambda: tnn.Conv2d(8, 8, 3, stride=2, padding=(0, 1)),
                 lambda: nn.Conv2d(8, 8, 3, stride=2, pad_mode="pad", padding=(0, 0, 1, 1), has_bias=True)),
                ("c2", lambda: tnn.Conv2d(8, 4, 1), lambda: nn.Conv2d(8, 4, 1, has_bias=True))], (2, 3, 7, 7), False),
    "conv2d_groups": ([("c0", lambda: tnn.Conv2d(4, 8, 3, padding=1, groups=2),
                        lambda: nn.Conv2d(4, 8, 3, pad_mode="pad", padding=1, group=2, has_bias=True))],
                      (2, 4, 5, 5), False),
    "conv3d": ([("c0", lambda: tnn.Conv3d(2, 4, 3, padding=1),
                 lambda: nn.Conv3d(2, 4, 3, pad_mode="pad", padding=1, has_bias=True)),
                ("c1", lambda: tnn.Conv3d(4, 4, 1, groups=2), lambda: nn.Conv3d(4, 4, 1, group=2, has_bias=True))],
               (1, 2, 3, 4, 4), False),
    "embedding_conv1d": ([("emb", lambda: tnn.Embedding(20, 8), lambda: nn.Embedding(20, 8)),
                          ("proj", lambda: TorchConv1D(12, 8), lambda: Conv1D(12, 8)),
                          ("head", lambda: tnn.Linear(12, 4), lambda: LinearLayer(12, 4))], (2, 6), True),
    "mha": ([("mha", lambda: tnn.MultiheadAttention(8, 2, batch_first=True),
              lambda: nn.MultiheadAttention(8, 2, batch_first=True)),
             ("head", lambda: tnn.Linear(8, 3), lambda: LinearLayer(8, 3))], (2, 5, 8), False),
    "mint_conv2d": ([("c0", lambda: tnn.Conv2d(3, 6, 3, padding=1), lambda: CpuMintConv2d(3, 6, 3, padding=1))],
                    (2, 3, 5, 5), False),
    "mint_embedding": ([("emb", lambda: tnn.Embedding(20, 8), lambda: CpuMintEmbedding(20, 8)),
                        ("head", lambda: tnn.Linear(8, 3), lambda: LinearLayer(8, 3))], (2, 6), True),
}


class TorchChain(tnn.Module):
    def __init__(self, case):
        super().__init__()
        self.names = [name for name, _, _ in LAYERS[case][0]]
        for name, make, _ in LAYERS[case][0]:
            setattr(self, name, make())

    def forward(self, x):
        for i, name in enumerate(self.names):
            layer = getattr(self, name)
            x = layer(x, x, x, need_weights=False)[0] if name == "mha" else layer(x)
            if i < len(self.names) - 1:
                x = torch.relu(x)
        return x


class MsChain(nn.Cell):
    def __init__(self, case, torch_twin):
        super().__init__()
        self.names = tuple(name for name, _, _ in LAYERS[case][0])
        for name, _, make in LAYERS[case][0]:
            setattr(self, name, make())
        load_torch_weights(self, torch_twin)

    def construct(self, x):
        for i, name in enumerate(self.names):
            layer = getattr(self, name)
            if name == "mha":
                x = layer(x, x, x, need_weights=False)[0]
            else:
                x = layer(x)
            if i < len(self.names) - 1:
                x = ops.relu(x)
        return x


def load_torch_weights(cell, torch_module):
    """Copy a torch module's weights into the same-named MindSpore parameters (``embedding_table`` is torch's
    embedding ``weight``; MindSpore keeps 1-D convolution weights as (out, in, 1, k))."""
    state = torch_module.state_dict()
    for name, param in cell.parameters_and_names():
        write_parameter(param, state[name.replace("embedding_table", "weight")].numpy().reshape(param.shape))


_TORCH_NETS = {}


def torch_net(case):
    """The case's seeded torch model (a fresh copy)."""
    if case not in _TORCH_NETS:
        torch.manual_seed(list(LAYERS).index(case))
        _TORCH_NETS[case] = TorchChain(case).eval()
    return copy.deepcopy(_TORCH_NETS[case])


def case_input(case, seed=0):
    _, shape, integer = LAYERS[case]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 20, shape) if integer else rng.standard_normal(shape).astype(np.float32)


def ms_out(model, x):
    return model(Tensor(x, ms.int32 if x.dtype.kind == "i" else ms.float32)).asnumpy()


def hf_out(model, x):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def assert_close(actual, expected):
    err = np.abs(actual.astype(np.float64) - expected)
    assert (err <= 1e-4 + 1e-5 * np.abs(expected)).all(), f"max abs diff {err.max()}"


def shapes(folder):
    return {k: v.shape for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}


def hf_trainable_names(model):
    """HF's trainable parameter names as mindpeft names them: DoRA's magnitude is a ParameterDict entry here
    (``...lora_magnitude_vector.default``) and a module's ``weight`` in HF peft (both save it without suffix)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n[: -len(".weight")] if ".lora_magnitude_vector." in n else n for n in names}


def correct_hf_output(hf_model, case, x):
    """HF peft's output, except for MultiheadAttention: HF peft 0.21 adds the out_proj update twice
    (huggingface/peft#3774); the reference there is the base model run with ``in_proj_weight + dW`` and ``out_proj + dW``."""
    if case != "mha":
        return hf_out(hf_model, x)
    layer = hf_model.base_model.model.mha
    reference = torch_net(case)
    with torch.no_grad():
        d_in, d_out = layer.get_delta_weight("default"), layer.base_layer.out_proj.get_delta_weight("default")
        reference.mha.in_proj_weight += d_in
        reference.mha.out_proj.weight += d_out
        expected = hf_out(reference, x)
        reference.mha.out_proj.weight += d_out  # HF peft 0.21's own output
        assert max_diff(hf_out(hf_model, x), hf_out(reference, x)) < 1e-4
    return expected


def lora_config(lib, case, **extra):
    targets = [name for name, _, _ in LAYERS[case][0] if name != "head"]
    return lib.LoraConfig(**{"target_modules": targets, "r": 4, "lora_alpha": 8, "init_lora_weights": False, **extra})


CASES = [("linear", {}), ("linear", {"lora_bias": True, "use_rslora": True}), ("conv1d", {}),
         ("conv2d", {"lora_bias": True}), ("conv2d_groups", {}), ("conv3d", {}), ("embedding_conv1d", {}),
         ("mha", {}), ("mint_conv2d", {}), ("mint_embedding", {})]
GROUPED = {"conv1d", "conv2d_groups", "conv3d"}  # hold a conv with groups > 1: not mergeable (HF peft refuses too)


@pytest.mark.parametrize("case,extra", CASES)
def test_adapters_match_hf_peft_both_ways(tmp_path, case, extra):
    x = case_input(case)
    base = torch_net(case)
    assert_close(ms_out(MsChain(case, base), x), hf_out(base, x))
    hf = peft.get_peft_model(torch_net(case), lora_config(peft, case, **extra)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = correct_hf_output(hf, case, x)
    assert max_diff(expected, hf_out(base, x)) > 1e-2

    loaded = PeftModel.from_pretrained(MsChain(case, base), str(tmp_path / "hf"))  # made by HF, loaded here
    loaded.set_train(False)
    assert_close(ms_out(loaded, x), expected)

    ours = get_peft_model(MsChain(case, base), lora_config(mindpeft, case, **extra))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == hf_trainable_names(hf)
    ours.save_pretrained(str(tmp_path / "ms"))  # made here, loaded by HF
    assert shapes(tmp_path / "ms") == shapes(tmp_path / "hf")
    adapted = ms_out(ours, x)
    back = peft.PeftModel.from_pretrained(torch_net(case), str(tmp_path / "ms")).eval()
    assert_close(adapted, correct_hf_output(back, case, x))

    if case in GROUPED:
        with pytest.raises(NotImplementedError, match="Merging is not supported .* groups > 1"):
            loaded.merge_and_unload()
        return
    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert_close(ms_out(loaded, x), expected)
    loaded.unmerge_adapter()
    assert all(np.abs(p.asnumpy() - before[n]).max() < 1e-6 for n, p in loaded.parameters_and_names())
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert sorted(n for n, _ in merged.parameters_and_names()) == sorted(n for n, _ in
                                                                          MsChain(case, base).parameters_and_names())
    assert_close(ms_out(merged, x), expected)


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


@pytest.mark.parametrize("case,extra", [c for c in CASES if c[0] not in ("conv2d_groups",)])
def test_jit_training_step_equals_pynative(case, extra):
    base = torch_net(case)
    x = case_input(case)
    x = Tensor(x, ms.int32 if x.dtype.kind == "i" else ms.float32)
    y = Tensor(np.random.default_rng(1).standard_normal(hf_out(base, case_input(case)).shape).astype(np.float32))
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsChain(case, base), lora_config(mindpeft, case, **extra))
        model.set_train(False)
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(x=x, y=y)) for _ in range(3)]
        assert losses[-1] < losses[0]
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


@pytest.mark.parametrize("make,lora_cls,torch_twin", [
    (lambda: mint.nn.Linear(6, 4), Linear, lambda: tnn.Linear(6, 4)),
    (lambda: mint.nn.Embedding(12, 6), Embedding, lambda: tnn.Embedding(12, 6)),
    (lambda: mint.nn.Conv1d(4, 6, 3, padding=1), ConvNd, lambda: tnn.Conv1d(4, 6, 3, padding=1)),
    (lambda: mint.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), ConvNd,
     lambda: tnn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)),
    (lambda: mint.nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)), ConvNd,
     lambda: tnn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1))),
])
def test_mint_layers_are_wrapped_like_hf_peft(make, lora_cls, torch_twin):
    """mint's Embedding and convolutions have no CPU kernels (their math is checked above through CPU subclasses):
    here the wrapping of the real classes, parameter for parameter against HF peft."""
    ours = get_peft_model(nn.SequentialCell([make()]), LoraConfig(target_modules=["0"], r=2, use_dora=True))
    hf = peft.get_peft_model(tnn.Sequential(torch_twin()), peft.LoraConfig(target_modules=["0"], r=2, use_dora=True))
    layer = ours.base_model.model[0]
    assert type(layer) is lora_cls
    assert ({n: tuple(p.shape) for n, p in ours.parameters_and_names() if p.requires_grad}
            == {n.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector.default"): tuple(p.shape)
                for n, p in hf.named_parameters() if p.requires_grad})


def test_mha_lora_updates_are_the_layer_weights_plus_b_a():
    """The attention runs with ``in_proj_weight + s B A`` and ``out_proj.weight + s B A``; the second adapter
    goes through update_layer into both; merge_and_unload gives back a plain MultiheadAttention."""
    case = "mha"
    base = torch_net(case)
    x = case_input(case)
    model = get_peft_model(MsChain(case, base), lora_config(mindpeft, case))
    model.add_adapter("other", LoraConfig(target_modules=["mha"], r=2, init_lora_weights=False))
    layer = model.base_model.model.mha
    assert isinstance(layer, MultiheadAttention) and isinstance(layer.base_layer.out_proj, Linear)
    assert set(layer.lora_A) == set(layer.base_layer.out_proj.lora_A) == {"default", "other"}
    model.set_train(False)
    outputs = {}
    for adapter in ("default", "other"):
        model.set_adapter(adapter)
        reference = MsChain(case, base)
        mha = reference.mha
        write_parameter(mha.in_proj_weight, mha.in_proj_weight.asnumpy() + layer.delta_weight(adapter))
        write_parameter(mha.out_proj.weight, mha.out_proj.weight.asnumpy()
                        + layer.base_layer.out_proj.delta_weight(adapter))
        outputs[adapter] = ms_out(model, x)
        assert_close(outputs[adapter], ms_out(reference, x))
    assert max_diff(outputs["default"], outputs["other"]) > 1e-2
    merged = model.merge_and_unload()
    assert type(merged.mha) is nn.MultiheadAttention and type(merged.mha.out_proj) is nn.Dense
    assert_close(ms_out(merged, x), outputs["other"])


class MsScaledLinear(nn.Cell):
    """A layer type mindpeft does not know: ``2 (x W^T + b)``."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.inner = LinearLayer(in_features, out_features)
        self.weight, self.bias = self.inner.weight, self.inner.bias

    def construct(self, x):
        return 2 * linear(x, self.weight, self.bias)


class TorchScaledLinear(tnn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = tnn.Parameter(torch.randn(out_features, in_features) * 0.3)
        self.bias = tnn.Parameter(torch.randn(out_features) * 0.3)

    def forward(self, x):
        return 2 * tnn.functional.linear(x, self.weight, self.bias)


class CustomLora(Linear):
    """A custom LoRA layer class: mindpeft's Linear (the template) is all a linear-like layer needs."""


def test_custom_module_mapping_matches_hf_peft(tmp_path):
    torch.manual_seed(3)
    torch_model = tnn.Sequential(TorchScaledLinear(6, 5), tnn.ReLU(), tnn.Linear(5, 3)).eval()

    class MsModel(nn.Cell):
        def __init__(self):
            super().__init__()
            self.seq = nn.SequentialCell([MsScaledLinear(6, 5), nn.ReLU(), LinearLayer(5, 3)])
            state = torch_model.state_dict()
            for name, param in self.seq.parameters_and_names():
                write_parameter(param, state[name.replace("inner.", "")].numpy())

        def construct(self, x):
            return self.seq(x)

    def our_config():
        config = LoraConfig(target_modules=["seq.0", "seq.2"], r=2, init_lora_weights=False)
        config._register_custom_module({MsScaledLinear: CustomLora})
        return config

    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="Target module MsScaledLinear is not supported.*_register_custom_module"):
        get_peft_model(MsModel(), LoraConfig(target_modules=["seq.0"]))
    ours = get_peft_model(MsModel(), our_config())
    assert type(ours.base_model.model.seq[0]) is CustomLora and type(ours.base_model.model.seq[2]) is Linear
    ours.save_pretrained(str(tmp_path))
    hf_config = peft.LoraConfig(target_modules=["0", "2"], r=2, init_lora_weights=False)
    hf_config._register_custom_module({TorchScaledLinear: peft.tuners.lora.layer.Linear})
    hf = peft.get_peft_model(copy.deepcopy(torch_model), hf_config)
    hf_state = {k.replace("base_model.model.", "base_model.model.seq."): v.numpy()
                for k, v in peft.get_peft_model_state_dict(hf).items()}
    assert {k: v.shape for k, v in load_file(str(tmp_path / "adapter_model.safetensors")).items()} == \
        {k: v.shape for k, v in hf_state.items()}
    peft.set_peft_model_state_dict(hf, {k.replace("seq.", ""): torch.tensor(v) for k, v in
                                        load_file(str(tmp_path / "adapter_model.safetensors")).items()})
    assert_close(ms_out(ours, x), hf_out(hf.eval(), x))
    layer = ours.base_model.model.seq[0]
    manual = 2 * (x @ layer.weight.asnumpy().T + layer.base_layer.bias.asnumpy()) + x @ layer.delta_weight("default").T
    assert_close(ms_out(layer, x), manual)
    ours.add_adapter("second", our_config())  # a further adapter goes through update_layer
    assert set(layer.lora_A) == {"default", "second"}


def test_lora_bias_merges_into_the_base_bias_and_errors_like_hf_peft():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    model = get_peft_model(nn.SequentialCell([LinearLayer(6, 5)]),
                           LoraConfig(target_modules=["0"], r=2, lora_bias=True, init_lora_weights=False))
    layer = model.base_model.model[0]
    bias = layer.base_layer.bias.asnumpy().copy()
    lora_b_bias = layer.lora_B["default"].bias.asnumpy()
    assert np.abs(lora_b_bias).max() > 0
    adapted = ms_out(model, x)
    model.merge_adapter()
    assert np.allclose(layer.base_layer.bias.asnumpy(), bias + layer.scaling["default"] * lora_b_bias, atol=1e-6)
    assert_close(ms_out(model, x), adapted)
    model.unmerge_adapter()
    assert np.allclose(layer.base_layer.bias.asnumpy(), bias, atol=1e-6)
    with pytest.warns(UserWarning, match="`lora_bias=True` was passed but the targeted layer of type Linear has "
                                         "no bias"):
        no_bias = get_peft_model(nn.SequentialCell([LinearLayer(6, 5, bias=False)]),
                                 LoraConfig(target_modules=["0"], r=2, lora_bias=True))
    with pytest.raises(RuntimeError, match="Impossible to merge LoRA with `lora_bias=True`"):
        no_bias.merge_adapter()
    with pytest.raises(ValueError, match="lora_bias=True is not supported for Embedding"):
        get_peft_model(nn.SequentialCell([nn.Embedding(5, 4)]), LoraConfig(target_modules=["0"], lora_bias=True))
    with pytest.raises(ValueError, match="MultiheadAttention does not support lora_bias=True"):
        get_peft_model(MsChain("mha", torch_net("mha")), LoraConfig(target_modules=["mha"], lora_bias=True))
    with pytest.raises(ValueError, match="lora_bias=True is only supported with init_lora_weights=True or False, "
                                         "got init_lora_weights=gaussian"):
        LoraConfig(lora_bias=True, init_lora_weights="gaussian")
    with pytest.raises(ValueError, match="lora_bias must be True or False, got 'yes'"):
        LoraConfig(lora_bias="yes")


def test_layer_errors_match_hf_peft():
    with pytest.raises(ValueError, match="Targeting a Conv2d with groups=2 and rank 3. Currently, support is limited "
                                         "to conv layers where the rank is divisible by groups"):
        get_peft_model(nn.SequentialCell([nn.Conv2d(4, 4, 3, group=2)]), LoraConfig(target_modules=["0"], r=3))
    with pytest.raises(ValueError, match="Only same embed for query/key/value is supported as of now for "
                                         "MultiheadAttention"):
        get_peft_model(nn.SequentialCell([nn.MultiheadAttention(8, 2, kdim=4)]), LoraConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="Target module LayerNorm is not supported. Currently, only Linear/Dense, "
                                         "Embedding, Conv1D, Conv1d/Conv2d/Conv3d and MultiheadAttention"):
        get_peft_model(nn.SequentialCell([nn.LayerNorm((4,))]), LoraConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="_register_custom_module expects a dict mapping layer classes"):
        LoraConfig()._register_custom_module({"Linear": Linear})
    with pytest.raises(ValueError, match="add_weighted_adapter combines plain LoRA adapters only"):
        model = get_peft_model(nn.SequentialCell([LinearLayer(4, 4)]),
                               LoraConfig(target_modules=["0"], lora_bias=True))
        model.add_weighted_adapter(["default"], [1.0], "mix")
