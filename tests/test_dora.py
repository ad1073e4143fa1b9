"""DoRA (``use_dora=True``) against HF peft on linear, Conv1D, embedding and convolution layers and a tiny LLaMA:
outputs both ways, ``lora_magnitude_vector`` in the files, exact merge/unmerge, gradients and jit training steps."""
import mindspore as ms
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor
from mindspore.experimental import optim

import mindpeft
from mindpeft import LoraConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model
from test_lora_layers import (MsChain, assert_close, case_input, hf_out, hf_trainable_names, lora_config, ms_out,
                              shapes, torch_net)

CASES = ["linear", "embedding_conv1d", "conv1d", "conv2d", "conv2d_groups", "conv3d", "mint_conv2d", "mint_embedding"]
GROUPED = {"conv1d", "conv2d_groups", "conv3d"}  # DoRA runs there (HF peft's formula), merging does not


def dora_config(lib, case, **extra):
    return lora_config(lib, case, use_dora=True, lora_dropout=0.1, **extra)


def assert_gradients_match(ours, hf, x):
    """Gradients of ``sum(output * weights)`` for every trainable parameter equal HF peft's: the weight norm passes
    none in either library."""
    weights = np.random.default_rng(2).standard_normal(hf_out(hf, x).shape).astype(np.float32)
    hf.zero_grad()
    (hf(torch.tensor(x)) * torch.tensor(weights)).sum().backward()
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.requires_grad}
    params = ours.trainable_params()
    inputs = Tensor(x, ms.int32 if x.dtype.kind == "i" else ms.float32)
    grads = ms.grad(lambda inp: (ours(inp) * Tensor(weights)).sum(), None, params)(inputs)
    for param, grad in zip(params, grads):
        expected = hf_grads[param.name + ".weight" if "lora_magnitude_vector" in param.name else param.name]
        assert np.abs(grad.asnumpy() - expected.reshape(grad.shape)).max() <= 1e-5 + 1e-4 * np.abs(expected).max(), \
            param.name


@pytest.mark.parametrize("case", CASES)
def test_dora_adapters_match_hf_peft_both_ways(tmp_path, case):
    x = case_input(case)
    base = torch_net(case)
    hf = peft.get_peft_model(torch_net(case), dora_config(peft, case)).eval()
    with torch.no_grad():  # a trained-looking magnitude, so it must be saved and loaded
        for name, param in hf.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.2 * torch.rand_like(param))
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = hf_out(hf, x)
    assert max_diff(expected, hf_out(base, x)) > 1e-2
    magnitudes = {k: v for k, v in shapes(tmp_path / "hf").items() if "magnitude" in k}
    assert magnitudes and all(k.endswith(".lora_magnitude_vector") for k in magnitudes)

    loaded = PeftModel.from_pretrained(MsChain(case, base), str(tmp_path / "hf"), is_trainable=True)
    loaded.set_train(False)
    assert_close(ms_out(loaded, x), expected)
    assert_gradients_match(loaded, hf, x)

    ours = get_peft_model(MsChain(case, base), dora_config(mindpeft, case))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == hf_trainable_names(hf)
    ours.save_pretrained(str(tmp_path / "ms"))
    assert shapes(tmp_path / "ms") == shapes(tmp_path / "hf")
    back = peft.PeftModel.from_pretrained(torch_net(case), str(tmp_path / "ms")).eval()
    assert_close(ms_out(ours, x), hf_out(back, x))

    if case in GROUPED:
        with pytest.raises(NotImplementedError, match="Merging is not supported"):
            loaded.merge_adapter()
        return
    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert_close(ms_out(loaded, x), expected)
    hf.merge_adapter()  # the merged base weights are HF's too
    hf_weights = {n: p.detach().numpy() for n, p in hf.named_parameters()}
    for name, param in loaded.parameters_and_names():
        if "base_layer" in name:
            assert_close(param.asnumpy(), hf_weights[name.replace("embedding_table", "weight")].reshape(param.shape))
    loaded.unmerge_adapter()
    for name, param in loaded.parameters_and_names():
        assert np.abs(param.asnumpy() - before[name]).max() < 1e-5 * (1 + np.abs(before[name]).max()), name
    assert_close(ms_out(loaded, x), expected)
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert_close(ms_out(merged, x), expected)


def test_two_dora_adapters_active_and_merged_together_match_hf_peft(tmp_path):
    case = "embedding_conv1d"
    x = case_input(case)
    hf = peft.get_peft_model(torch_net(case), dora_config(peft, case))
    hf.add_adapter("other", dora_config(peft, case, r=2, lora_alpha=3))
    hf.save_pretrained(str(tmp_path))
    hf.base_model.set_adapter(["default", "other"])
    hf.eval()
    expected = hf_out(hf, x)
    ours = PeftModel.from_pretrained(MsChain(case, torch_net(case)), str(tmp_path))
    ours.load_adapter(str(tmp_path / "other"), adapter_name="other")
    ours.base_model.set_adapter(["default", "other"])
    ours.set_train(False)
    assert_close(ms_out(ours, x), expected)
    ours.merge_adapter()  # the second adapter's norm is of the weight without the first one, as in forward
    assert_close(ms_out(ours, x), expected)
    hf.merge_adapter()
    assert_close(ours.base_model.model.proj.base_layer.weight.asnumpy(),
                 hf.base_model.model.proj.base_layer.weight.detach().numpy())
    ours.unmerge_adapter()
    assert_close(ms_out(ours, x), expected)


@pytest.mark.parametrize("case", ["linear", "conv2d"])
def test_dora_training_forward_recomputes_the_base_output_of_the_dropped_input(case):
    """In training with dropout, DoRA takes the base output of the dropped-out input (HF peft's forward). With a
    vanishing dropout probability it must give the evaluation output."""
    x = case_input(case)
    model = get_peft_model(MsChain(case, torch_net(case)), dora_config(mindpeft, case))
    model.set_train(False)
    expected = ms_out(model, x)
    for _, layer in model.base_model.tuner_layers():
        layer.lora_dropout["default"].p = 1e-9
    model.set_train(True)
    assert_close(ms_out(model, x), expected)


def _mse(model):
    def loss_fn(x, y):
        return ((model(x) - y) ** 2).mean()

    return loss_fn


@pytest.mark.parametrize("case", ["linear", "embedding_conv1d", "conv2d", "conv1d"])
def test_dora_jit_training_step_equals_pynative(case):
    base = torch_net(case)
    x = case_input(case)
    y = Tensor(np.random.default_rng(1).standard_normal(hf_out(base, x).shape).astype(np.float32))
    x = Tensor(x, ms.int32 if x.dtype.kind == "i" else ms.float32)
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsChain(case, base), lora_config(mindpeft, case, use_dora=True))
        model.set_train(False)
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(x=x, y=y)) for _ in range(3)]
        assert losses[-1] < losses[0]
        runs.append((losses, {p.name: p.asnumpy() for p in model.trainable_params()}))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, rtol=1e-5, atol=1e-6)
    assert any("lora_magnitude_vector" in n for n in jit_params)
    assert max(np.abs(jit_params[n] - py_params[n]).max() for n in jit_params) < 1e-5


def test_dora_llama_jit_gradients_and_step_match_hf_peft(tiny_model_dir, tmp_path):
    """A tiny LLaMA with DoRA on embed_tokens, q_proj and v_proj: the loss and the gradients of a compiled step
    equal HF peft's (the weight norm carries no gradient in both), and after one SGD step so do the logits."""
    path = tiny_model_dir("llama", "causal")
    config = dict(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False, use_dora=True,
                  target_modules=["embed_tokens", "q_proj", "v_proj"])
    hf = peft.get_peft_model(torch_model(path, "llama", "causal"), peft.LoraConfig(**config))
    hf.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path), is_trainable=True)
    ours.set_train(False)
    hf.eval()
    ids = rand_ids((2, 7))
    before = ours(ms_ids(ids))["logits"].asnumpy()
    with torch.no_grad():
        assert_close(before, hf(torch_ids(ids)).logits.numpy())

    loss = hf(input_ids=torch_ids(ids), labels=torch_ids(ids)).loss
    loss.backward()
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.requires_grad}
    params = ours.trainable_params()
    step = TrainStep(ours, optim.SGD(params, lr=0.5), jit=True, return_grads=True)
    our_loss, grads = step(input_ids=ms_ids(ids), labels=ms_ids(ids))
    assert abs(float(our_loss) - float(loss)) < 1e-5
    assert {p.name for p in params} == hf_trainable_names(hf)
    assert any("lora_magnitude_vector" in p.name for p in params)
    for param, grad in zip(params, grads):
        hf_name = param.name + ".weight" if "lora_magnitude_vector" in param.name else param.name
        expected = hf_grads[hf_name]
        assert np.abs(grad.asnumpy() - expected).max() <= 1e-5 + 1e-4 * np.abs(expected).max(), param.name

    torch.optim.SGD([p for p in hf.parameters() if p.requires_grad], lr=0.5).step()
    with torch.no_grad():
        expected = hf(torch_ids(ids)).logits.numpy()
    assert max_diff(expected, before) > 1e-3
    assert_close(ours(ms_ids(ids))["logits"].asnumpy(), expected)


def test_dora_config_errors_like_hf_peft():
    with pytest.raises(ValueError, match="lora_bias=True is not supported for DoRA, please pass use_dora=False"):
        LoraConfig(use_dora=True, lora_bias=True)
    with pytest.raises(ValueError, match="use_dora must be True or False, got 1"):
        LoraConfig(use_dora=1)
    with pytest.raises(ValueError, match="MultiheadAttention does not support DoRA"):
        get_peft_model(MsChain("mha", torch_net("mha")), LoraConfig(target_modules=["mha"], use_dora=True))
    model = get_peft_model(MsChain("linear", torch_net("linear")), lora_config(mindpeft, "linear", use_dora=True))
    with pytest.raises(ValueError, match="add_weighted_adapter combines plain LoRA adapters only; adapter 'default' "
                                         "uses use_dora=True"):
        model.add_weighted_adapter(["default"], [1.0], "mix")
