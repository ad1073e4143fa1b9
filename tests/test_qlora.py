"""PEFT on quantized bases (QLoRA) against HF peft on transformers' bitsandbytes models: training (jit == PyNative),
adapter files both ways, DoRA/IA3/AdaLoRA, merging into the quantized base and into a float copy, k-bit training
preparation, LoftQ."""
import os

import bitsandbytes.functional as BF
import mindspore as ms
import numpy as np
import peft
import pytest
import torch
import transformers
from mindspore import Tensor
from mindspore.experimental import optim
from safetensors.numpy import load_file

from mindpeft import AdaLoraConfig, IA3Config, LoraConfig, PeftModel, get_peft_model
from mindpeft.models import GPT2LMHeadModel, LlamaForCausalLM
from mindpeft.models.layers import Conv1D, Linear
from mindpeft.models.modeling_utils import write_parameter
from mindpeft.quantization import (BitsAndBytesConfig, LoftQConfig, QuantizedLoraLinear, dequantize_model,
                                   loftq_init, loftq_init_layer, prepare_model_for_kbit_training,
                                   replace_lora_weights_loftq)
from mindpeft.quantization import functional as F
from mindpeft.quantization.serialization import quantized_layers
from mindpeft.training import TrainStep
from conftest import max_diff, rand_ids

QLORA = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
IDS = rand_ids((2, 9))
MODELS = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel}


def _quantized(path, family="llama", **kwargs):
    return MODELS[family].from_pretrained(path, quantization_config=BitsAndBytesConfig(**(kwargs or QLORA)))


def _logits(model, ids=IDS):
    return model(input_ids=Tensor(ids.astype(np.int32)))["logits"].asnumpy()


def _hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def _storage(model):
    return {f"{p.replace('.base_layer', '')}.{n}": v.asnumpy().copy() for p, layer in quantized_layers(model).items()
            for n, v in layer.storage().items()}


@pytest.mark.parametrize("bits", [4, 8])
def test_recomputed_quantized_layers_give_the_same_gradients(tiny_model_dir, bits):
    """In checkpointed blocks the quantized layers drop their custom backward (MindSpore's recompute does not reach
    its inputs); PyNative and compiled, the LoRA gradients stay those of the plain step. The training step's graph
    (jit == "step") compiles the two identical decoder layers once (mindpeft.models.layer_graphs)."""
    from mindpeft.training.train_step import value_and_grad
    path = tiny_model_dir("llama", "causal")
    batch = {"input_ids": Tensor(IDS.astype(np.int32)), "labels": Tensor(IDS.astype(np.int32))}
    results = []
    for checkpointing, jit in ((False, False), (True, False), (True, True), (True, "step")):
        np.random.seed(0)
        base = _quantized(path, **({"load_in_8bit": True} if bits == 8 else {}))
        if checkpointing:
            base.gradient_checkpointing_enable()
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                init_lora_weights=False))
        model.set_train(True)

        def loss_fn(**inputs):
            return model(**inputs)["loss"]

        if jit == "step":
            step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=0.0), return_grads=True)
            loss, grads = step(**batch)
            assert len({mark for _, mark in step._shared_graphs}) == 1  # pylint: disable=protected-access
        else:
            grad_fn = value_and_grad(loss_fn, model.trainable_params())
            loss, grads = (ms.jit(grad_fn) if jit else grad_fn)(**batch)
        results.append((float(loss), [g.asnumpy() for g in grads]))
    (loss0, grads0), *others = results
    for loss, grads in others:
        assert abs(loss - loss0) < 1e-5
        assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(grads, grads0))
    assert any(np.abs(g).max() > 0 for g in grads0)


def test_qlora_trains_jit_equal_to_pynative_and_loads_in_hf_peft(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    batch = {"input_ids": Tensor(IDS.astype(np.int32)), "labels": Tensor(IDS.astype(np.int32))}
    runs = []
    for jit in (True, False):  # the compiled run also recomputes each decoder layer (gradient checkpointing)
        np.random.seed(0)
        base = prepare_model_for_kbit_training(_quantized(path), use_gradient_checkpointing=jit)
        base.save_pretrained(str(tmp_path / "base"))
        frozen = _storage(base)
        model = get_peft_model(base, LoraConfig(**config))
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), jit=jit)
        losses = [float(step(**batch)) for _ in range(4)]
        assert losses[-1] < losses[0] - 0.05
        assert all(np.array_equal(v, frozen[k]) for k, v in _storage(base).items())  # the base is not trained
        runs.append((model, losses, [p.asnumpy() for p in model.trainable_params()]))
    (model, jit_losses, jit_params), (_, py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    # Adam divides by each element's running gradient RMS: an element whose gradient is near zero moves by up to lr
    # on rounding alone (the compiled run recomputes its layers): measured up to 2.2e-4 after these 4 steps
    assert all(np.allclose(a, b, atol=5e-4) for a, b in zip(jit_params, py_params))

    model.save_pretrained(str(tmp_path / "adapter"))
    hf_float = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    reference = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(path), peft.LoraConfig(**config))
    reference.save_pretrained(str(tmp_path / "reference"))
    ours, theirs = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("adapter", "reference"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}

    logits = _logits(model)
    hf_quantized = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), device_map="cpu")
    on_quantized = peft.PeftModel.from_pretrained(hf_quantized, str(tmp_path / "adapter")).eval()
    assert max_diff(_hf_logits(on_quantized), logits) < 1e-5  # the same 4-bit base in bitsandbytes
    on_float = peft.PeftModel.from_pretrained(hf_float, str(tmp_path / "adapter")).eval()
    adapter_error = max_diff(_hf_logits(on_float), logits)
    with model.disable_adapter(), on_float.disable_adapter():
        base_error = max_diff(_hf_logits(on_float), _logits(model))
    # On the float base the logits differ by the base's quantization error (tiny LLaMA, logits ~0.4: about 0.03)
    assert 0 < adapter_error < 1.5 * base_error + 1e-3 and base_error < 0.1


def test_hf_peft_adapter_trained_on_bitsandbytes_loads_on_mindpeft_quantized_base(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    _quantized(path).save_pretrained(str(tmp_path / "base"))
    torch.manual_seed(0)
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), device_map="cpu")
    hf = peft.get_peft_model(hf_base, peft.LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                      init_lora_weights=False)).eval()
    hf.save_pretrained(str(tmp_path / "adapter"))
    base = LlamaForCausalLM.from_pretrained(str(tmp_path / "base"))  # its config.json names the quantization
    ours = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert isinstance(ours.base_model.model.model.layers[0].self_attn.q_proj, QuantizedLoraLinear)
    assert max_diff(_logits(ours), _hf_logits(hf)) < 1e-5


def _variant(name):
    """``(family, quantization, peft config of ours, extra setup)`` of the adapter variants checked against HF."""
    init = {"init_lora_weights": False}
    return {
        "dora-4bit": ("llama", QLORA, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True, **init)),
        "ia3-4bit": ("llama", QLORA, IA3Config(target_modules=["k_proj", "down_proj"],
                                               feedforward_modules=["down_proj"], init_ia3_weights=False)),
        "adalora-4bit": ("llama", QLORA, AdaLoraConfig(init_r=4, target_r=2, total_step=10,
                                                       target_modules=["q_proj", "v_proj"], **init)),
        "lora-gpt2-4bit": ("gpt2", {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
                           LoraConfig(r=4, target_modules=["c_attn", "c_fc"], **init)),
        "lora-8bit": ("llama", {"load_in_8bit": True}, LoraConfig(r=4, target_modules=["q_proj", "o_proj"], **init)),
    }[name]


def _float_with_dequantized(path, model):
    """transformers' float model with the quantized layers' weights replaced by their dequantized values."""
    float_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        for name, layer in quantized_layers(model).items():
            weight = layer.dequantize_numpy()
            weight = weight.T if layer.from_conv1d else weight
            float_model.get_submodule(name.replace(".base_layer", "")).weight.copy_(torch.from_numpy(weight))
    return float_model


@pytest.mark.parametrize("name", ["dora-4bit", "ia3-4bit", "adalora-4bit", "lora-gpt2-4bit", "lora-8bit"])
def test_adapters_on_quantized_layers_match_hf_peft(name, tiny_model_dir, tmp_path):
    family, quantization, config = _variant(name)
    path = tiny_model_dir(family, "causal")
    np.random.seed(0)
    base = _quantized(path, family, **quantization)
    base.save_pretrained(str(tmp_path / "base"))
    model = get_peft_model(base, config)
    assert all(type(layer.get_base_layer()).__name__ in ("Linear4bit", "Linear8bitLt")
               for _, layer in model.base_model.tuner_layers())
    if name.startswith("adalora"):  # E starts at zero: give the adapter an effect
        for param_name, param in model.parameters_and_names():
            if "lora_E" in param_name:
                write_parameter(param, np.random.normal(0, 0.5, param.shape))
    model.set_train(False)
    logits = _logits(model)
    model.save_pretrained(str(tmp_path / "adapter"))
    if quantization.get("load_in_8bit"):  # bitsandbytes' LLM.int8 matmul quantizes activations too: use the weights
        hf_base = _float_with_dequantized(path, base)
    else:
        hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), device_map="cpu")
    hf = peft.PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
    with model.disable_adapter():
        effect = max_diff(_logits(model), logits)
    assert effect > 1e-3 and max_diff(_hf_logits(hf), logits) < 1e-5


def test_ia3_and_adalora_refuse_merging_into_quantized_layers(tiny_model_dir):
    path = tiny_model_dir("llama", "causal")
    for name, error, message in [("ia3-4bit", ValueError, "Cannot merge ia3 layers when the model is loaded in 4-bit"),
                                 ("adalora-4bit", NotImplementedError, "Merging AdaLoRA into a 4-bit")]:
        family, quantization, config = _variant(name)
        model = get_peft_model(_quantized(path, family, **quantization), config)
        with pytest.raises(error, match=message):
            model.merge_and_unload()


@pytest.mark.parametrize("quantization,bits", [(QLORA, 4), ({"load_in_8bit": True}, 8)])
def test_merge_into_quantized_base_warns_requantizes_and_stays_close(quantization, bits, tiny_model_dir):
    path = tiny_model_dir("llama", "causal")
    np.random.seed(0)
    model = get_peft_model(_quantized(path, **quantization), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, param in model.parameters_and_names():
        if "lora_B" in name:
            write_parameter(param, np.random.normal(0, 0.05, param.shape))
    unmerged = _logits(model)
    layers = {path: layer for path, layer in model.base_model.tuner_layers()}
    expected = {}
    for key, layer in layers.items():
        reference = type(layer.get_base_layer())(layer.in_features, layer.out_features, bias=False,
                                                 **({"compress_statistics": True} if bits == 4 else {}))
        reference.quantize_weight(layer.get_base_layer().dequantize_numpy() + layer.delta_weight("default"))
        expected[key] = reference.dequantize_numpy()
    with pytest.warns(UserWarning, match=f"Merge lora module to {bits}-bit linear may get different generations due "
                                         "to rounding errors."):
        model.merge_adapter()
    assert all(np.array_equal(layer.get_base_layer().dequantize_numpy(), expected[k]) for k, layer in layers.items())
    merged_error = max_diff(_logits(model), unmerged)
    with pytest.warns(UserWarning, match=f"Unmerge lora module to {bits}-bit linear"):
        model.unmerge_adapter()
    round_trip_error = max_diff(_logits(model), unmerged)
    merged = model.merge_and_unload()
    assert not any(isinstance(c, QuantizedLoraLinear) for _, c in merged.cells_and_names())
    assert len(quantized_layers(merged)) == 14
    # re-quantizing moves each weight by at most a quantization step: logits ~0.4 move by ~1e-2 (4-bit), ~1e-3 (8-bit)
    assert merged_error < (0.05 if bits == 4 else 5e-3) and round_trip_error < (0.05 if bits == 4 else 5e-3)


@pytest.mark.parametrize("family,targets", [("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn"])])
def test_dequantize_then_merge_into_a_float_copy(family, targets, tiny_model_dir, tmp_path):
    path = tiny_model_dir(family, "causal")
    np.random.seed(0)
    model = get_peft_model(_quantized(path, family), LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    logits = _logits(model)
    dequantize_model(model)
    assert not quantized_layers(model) and not hasattr(model.get_base_model().config, "quantization_config")
    assert max_diff(_logits(model), logits) < 1e-5
    merged = model.merge_and_unload()  # in float: exact
    float_layers = {type(c) for _, c in merged.cells_and_names() if type(c) in (Linear, Conv1D)}
    assert float_layers == ({Conv1D} if family == "gpt2" else {Linear})
    assert max_diff(_logits(merged), logits) < 1e-5
    merged.save_pretrained(str(tmp_path))
    assert not any("quant" in k or k.endswith("SCB") for k in load_file(str(tmp_path / "model.safetensors")))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert max_diff(_hf_logits(hf), logits) < 1e-5


def test_prepare_model_for_kbit_training(tiny_model_dir, monkeypatch):
    path = tiny_model_dir("llama", "causal")
    model = _quantized(path)
    norm = model.model.norm.weight
    norm.set_dtype(ms.float16)  # as a half-precision load leaves it
    values = norm.asnumpy().astype(np.float32)
    storage_dtypes = {k: v.dtype for k, v in _storage(model).items()}
    calls = []
    monkeypatch.setattr(type(model), "gradient_checkpointing_enable",
                        lambda self, gradient_checkpointing_kwargs=None: calls.append(gradient_checkpointing_kwargs),
                        raising=False)
    monkeypatch.setattr(type(model), "enable_input_require_grads", lambda self: calls.append("input grads"),
                        raising=False)
    assert prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False}) is model
    assert calls == [{"use_reentrant": False}]  # no input-grad hook with use_reentrant=False, as HF peft
    assert not any(p.requires_grad for p in model.get_parameters())
    assert norm.dtype == ms.float32 and np.array_equal(norm.asnumpy(), values)
    assert {k: v.dtype for k, v in _storage(model).items()} == storage_dtypes
    prepare_model_for_kbit_training(model)
    assert calls[1:] == ["input grads", {}]
    float_model = LlamaForCausalLM.from_pretrained(path)  # not quantized: no checkpointing switched on
    prepare_model_for_kbit_training(float_model)
    assert len(calls) == 3


def test_loftq_init_numbers():
    weight = (np.random.default_rng(0).standard_normal((48, 64)) * 0.05).astype(np.float32)
    dequantized, lora_a, lora_b = loftq_init(weight, num_bits=4, reduced_rank=4)
    packed, state = BF.quantize_4bit(torch.from_numpy(weight), blocksize=64, quant_type="nf4")
    assert np.array_equal(dequantized, BF.dequantize_4bit(packed, state).numpy())
    u, s, vh = np.linalg.svd((weight - dequantized).astype(np.float64))
    assert lora_a.shape == (4, 64) and lora_b.shape == (48, 4)
    assert np.allclose(lora_b @ lora_a, (u[:, :4] * s[:4]) @ vh[:4], atol=1e-6)
    errors = [np.linalg.norm(weight - d - b @ a) for d, a, b in (loftq_init(weight, 4, 4, n) for n in (1, 5))]
    assert errors[1] <= errors[0] + 1e-6 < np.linalg.norm(weight - dequantized)
    dequantized8, _, _ = loftq_init(weight, 8, 4)
    codes, row_absmax, _ = BF.int8_vectorwise_quant(torch.from_numpy(weight).half())
    assert np.array_equal(dequantized8, BF.int8_vectorwise_dequant(codes, row_absmax).numpy())
    with pytest.raises(ValueError, match="Only nf4 and int8 quantization is supported"):
        loftq_init(weight, 3, 4)
    with pytest.raises(ValueError, match="Number of iterations must be greater than 0"):
        loftq_init(weight, 4, 4, 0)


def test_replace_lora_weights_loftq(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    float_logits = _logits(LlamaForCausalLM.from_pretrained(path))
    config = LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])
    model = get_peft_model(_quantized(path), config)
    before = np.abs(_logits(model) - float_logits).mean()
    seen = []

    def keep_all_but_the_first(peft_model, name):
        seen.append(name)
        return len(seen) > 1

    replace_lora_weights_loftq(model, callback=keep_all_but_the_first)
    layers = [(n, c) for n, c in model.get_base_model().cells_and_names() if isinstance(c, QuantizedLoraLinear)]
    assert seen == [n for n, _ in layers]
    assert not layers[0][1].lora_B["default"].weight.asnumpy().any()  # rolled back: still zero
    float_weights = load_file(os.path.join(path, "model.safetensors"))
    for name, layer in layers[1:]:
        residual = float_weights[name + ".weight"] - layer.get_base_layer().dequantize_numpy()
        u, s, vh = np.linalg.svd(residual.astype(np.float64))
        product = layer.lora_B["default"].weight.asnumpy() @ layer.lora_A["default"].weight.asnumpy()
        assert np.allclose(product, (u[:, :16] * s[:16]) @ vh[:16], atol=1e-6)
    after = np.abs(_logits(model) - float_logits).mean()
    assert after < 0.8 * before  # the quantization error partly absorbed
    _quantized(path).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="not a float weight"):
        replace_lora_weights_loftq(model, model_path=str(tmp_path))
    with pytest.raises(ValueError, match="No bnb LoRA module found on the model"):
        replace_lora_weights_loftq(get_peft_model(LlamaForCausalLM.from_pretrained(path), LoraConfig(r=2)))


def test_loftq_initialisation_of_a_float_lora_layer(tiny_model_dir):
    model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir("llama", "causal")),
                           LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"]))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    original = layer.get_base_layer().weight.asnumpy().copy()
    loftq_init_layer(layer, "default", LoftQConfig(loftq_bits=4, loftq_iter=2))
    base = layer.get_base_layer().weight.asnumpy()
    state = F.quantize_4bit(base, "nf4")
    assert np.array_equal(F.dequantize_4bit(state["weight"], state["absmax"], base.shape), base)  # exactly NF4
    assert np.linalg.norm(original - base - layer.delta_weight("default")) < np.linalg.norm(original - base)


def test_loftq_through_lora_config(tiny_model_dir, tmp_path):
    """``LoraConfig(init_lora_weights="loftq", loftq_config=...)`` runs LoftQ on every targeted linear layer, and
    the config file keeps HF peft's ``loftq_config`` dict."""
    path = tiny_model_dir("llama", "causal")
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights="loftq",
                        loftq_config=LoftQConfig(loftq_bits=8, loftq_iter=2))
    assert config.loftq_config == {"loftq_bits": 8, "loftq_iter": 2}
    model = get_peft_model(LlamaForCausalLM.from_pretrained(path), config)
    by_hand = get_peft_model(LlamaForCausalLM.from_pretrained(path),
                             LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for name, layer in model.base_model.tuner_layers():
        other = dict(by_hand.base_model.tuner_layers())[name]
        loftq_init_layer(other, "default", {"loftq_bits": 8, "loftq_iter": 2})
        for get in (lambda l: l.get_base_layer().weight, lambda l: l.lora_A["default"].weight,
                    lambda l: l.lora_B["default"].weight):
            assert np.array_equal(get(layer).asnumpy(), get(other).asnumpy())
    assert max_diff(_logits(model), _logits(by_hand)) == 0
    model.save_pretrained(str(tmp_path))
    assert peft.LoraConfig.from_pretrained(str(tmp_path)).loftq_config == {"loftq_bits": 8, "loftq_iter": 2}
    with pytest.warns(UserWarning, match="`loftq_config` specified but will be ignored"):
        assert LoraConfig(loftq_config=LoftQConfig()).loftq_config == {}
    with pytest.raises(ValueError, match="loftq_bits 4 or 8 .* got loftq_bits=3"):
        LoraConfig(init_lora_weights="loftq", loftq_config={"loftq_bits": 3})
    with pytest.raises(ValueError, match="init_lora_weights='loftq' initialises linear layers only"):
        get_peft_model(LlamaForCausalLM.from_pretrained(path),
                       LoraConfig(target_modules=["embed_tokens"], init_lora_weights="loftq",
                                  loftq_config=LoftQConfig()))


def test_lora_initialisations_that_rewrite_the_base_weight_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="init_lora_weights='pissa'.*4-bit quantized"):
        get_peft_model(_quantized(tiny_model_dir("llama", "causal")),
                       LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="pissa"))
