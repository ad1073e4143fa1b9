"""Quantized base models (mindpeft.quantization) against bitsandbytes' own kernels (codes, scales, dequantized
weights) and transformers' bitsandbytes models (which layers are quantized, logits, saved files both ways)."""
import json
import os

import bitsandbytes.functional as BF
import mindspore as ms
import numpy as np
import pytest
import torch
import transformers
from mindspore import Tensor
from safetensors.numpy import load_file

from mindpeft import models
from mindpeft.models import LlamaConfig, LlamaForCausalLM
from mindpeft.models.modeling_utils import SafetensorsCheckpoint, write_parameter
from mindpeft.quantization import (BitsAndBytesConfig, Linear4bit, Linear8bitLt, QuantizationConfig,
                                   quantized_model_bytes)
from mindpeft.quantization import functional as F
from mindpeft.quantization.loading import _placeholder_linear_layers
from mindpeft.quantization.serialization import quantized_layers
from conftest import TINY_CONFIGS, TORCH_CLASSES, max_diff, rand_ids

SHAPES = [(64, 32), (33, 17), (5, 7)]  # whole blocks; a partial last block; one partial block, odd count
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
KINDS = {"nf4": NF4, "fp4-double": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                                    "bnb_4bit_use_double_quant": True}, "int8": {"load_in_8bit": True}}


def _weight(shape, seed=0):
    w = (np.random.default_rng(seed).standard_normal(shape) * 0.05).astype(np.float32)
    w.reshape(-1)[::11] = 0.0
    return w


def _reference_blockwise(values, offset):
    """bitsandbytes' PyTorch reference kernel of quantize_blockwise (the CPU dispatch would take the compiled one)."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    codes, absmax = op.redispatch(torch._C.DispatchKeySet("CompositeExplicitAutograd"), values - offset,
                                  BF.create_dynamic_map(), 256)
    return codes.numpy(), absmax.numpy()


def _write_storage(layer, arrays):
    for name, value in arrays.items():
        write_parameter(getattr(layer, name), value)


def test_code_tables_are_bitsandbytes():
    assert np.array_equal(F.NF4_CODE, BF.get_4bit_type("nf4", "cpu").numpy())
    assert np.array_equal(F.FP4_CODE, BF.get_4bit_type("fp4", "cpu").numpy())
    assert np.array_equal(F.DYNAMIC_MAP, BF.create_dynamic_map().numpy())


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", SHAPES)
def test_4bit_codes_scales_and_dequantization_equal_bitsandbytes(quant_type, shape):
    w = _weight(shape)
    packed, state = BF.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type=quant_type)
    ours = F.quantize_4bit(w, quant_type)
    assert ours["weight"].dtype == np.uint8 and np.array_equal(ours["weight"], packed.numpy())
    assert np.array_equal(ours["absmax"], state.absmax.numpy())
    reference = BF.dequantize_4bit(packed, state).numpy()
    assert np.array_equal(F.dequantize_4bit(ours["weight"], ours["absmax"], shape, quant_type), reference)
    layer = Linear4bit(shape[1], shape[0], bias=False, quant_type=quant_type)
    layer.quantize_weight(w)
    assert np.array_equal(layer.dequantized_weight().asnumpy(), reference)  # the Cell's construct-time path


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quantization_equals_bitsandbytes(quant_type):
    shape = (300, 128)  # 600 scales: three nested blocks, the last one partial
    w = _weight(shape, 1)
    packed, state = BF.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type=quant_type,
                                     compress_statistics=True)
    _, plain = BF.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type=quant_type)
    ours = F.quantize_4bit(w, quant_type, compress_statistics=True)
    assert np.array_equal(ours["weight"], packed.numpy())
    offset = np.float32(state.offset.item())  # torch's float32 mean; ours rounds the exact mean
    assert abs(ours["nested_offset"] - offset) <= np.spacing(offset)
    codes, nested = F.quantize_blockwise(plain.absmax.numpy() - offset)  # the nested step on the same input
    reference_codes, reference_nested = _reference_blockwise(plain.absmax, state.offset)
    assert np.array_equal(codes, reference_codes) and np.array_equal(nested, reference_nested)
    # bitsandbytes' compiled CPU kernel divides approximately: a few scales near the middle of two codes differ
    assert (codes != state.absmax.numpy()).mean() < 0.01
    reference = BF.dequantize_4bit(packed, state).numpy()
    bnb_state = {"weight": packed.numpy(), "weight_absmax": state.absmax.numpy(),
                 "weight_nested_absmax": state.state2.absmax.numpy(), "weight_nested_offset": [offset]}
    layer = Linear4bit(shape[1], shape[0], bias=False, quant_type=quant_type, compress_statistics=True)
    _write_storage(layer, bnb_state)
    assert np.array_equal(layer.dequantize_numpy(), reference)
    assert np.array_equal(layer.dequantized_weight().asnumpy(), reference)


def test_int8_rowwise_equals_bitsandbytes():
    w = _weight((33, 17), 2) * 40  # float16 rounding matters at this scale
    codes, row_absmax, _ = BF.int8_vectorwise_quant(torch.from_numpy(w).half())  # what Int8Params runs
    ours = F.quantize_int8(w)
    assert ours[0].dtype == np.int8 and np.array_equal(ours[0], codes.numpy())
    assert np.array_equal(ours[1], row_absmax.numpy())
    reference = BF.int8_vectorwise_dequant(codes, row_absmax).numpy()
    layer = Linear8bitLt(17, 33, bias=False)
    layer.quantize_weight(w)
    assert np.array_equal(layer.dequantize_numpy(), reference)
    assert np.array_equal(layer.dequantized_weight().asnumpy(), reference)
    zero_row = F.quantize_int8(np.zeros((2, 4), np.float32))
    assert not zero_row[0].any() and not zero_row[1].any()


@pytest.mark.parametrize("kind", ["nf4-double-bias", "fp4-float16", "int8"])
def test_quantized_layer_forward_pynative_and_jit(kind):
    w, b = _weight((48, 40), 3), np.linspace(-1, 1, 48).astype(np.float32)
    if kind == "int8":
        layer = Linear8bitLt(40, 48)
    else:
        layer = Linear4bit(40, 48, quant_type=kind[:3], compress_statistics="double" in kind,
                           compute_dtype=ms.float16 if "float16" in kind else ms.float32)
    layer.quantize_weight(w)
    write_parameter(layer.bias, b)
    x = np.random.default_rng(4).standard_normal((2, 3, 40)).astype(np.float32)
    expected = x @ layer.dequantize_numpy().T.astype(np.float64) + b
    out = layer(Tensor(x))
    assert out.dtype == ms.float32 and out.shape == (2, 3, 48)
    assert max_diff(out, expected) < (2e-2 if "float16" in kind else 1e-5)

    def forward(t):
        return layer(t)

    assert max_diff(ms.jit(forward)(Tensor(x)), out) < 1e-6
    # the backward dequantizes the weight anew (custom bprop): the input gradient is dy W, in both modes
    dy = np.random.default_rng(5).standard_normal((2, 3, 48)).astype(np.float32)

    def weighted(t):
        return (layer(t) * Tensor(dy)).sum()

    expected_grad = dy @ layer.dequantize_numpy().astype(np.float64)
    for grad in (ms.grad(weighted)(Tensor(x)), ms.jit(ms.grad(weighted))(Tensor(x))):
        assert max_diff(grad, expected_grad) < (2e-2 if "float16" in kind else 1e-5)


def _hf_float_linears(model):
    return {n for n, m in model.named_modules() if type(m) in (torch.nn.Linear, transformers.pytorch_utils.Conv1D)}


VISION_AUDIO = {
    "vit": (lambda: transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=37, image_size=32, patch_size=8, num_labels=3),
            "ViTForImageClassification",
            {"pixel_values": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}),
    "whisper": (lambda: transformers.WhisperConfig(
        vocab_size=100, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=24, num_mel_bins=8, max_source_positions=30,
        max_target_positions=40, pad_token_id=99, bos_token_id=98, eos_token_id=99, decoder_start_token_id=97),
        "WhisperForConditionalGeneration",
        {"input_features": np.random.default_rng(2).standard_normal((2, 8, 60)).astype(np.float32),
         "decoder_input_ids": np.random.default_rng(3).integers(0, 97, (2, 6))}),
    "segformer": (lambda: transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 2], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=4),
        "SegformerForSemanticSegmentation",
        {"pixel_values": np.random.default_rng(1).standard_normal((2, 3, 32, 40)).astype(np.float32)}),
}
TEXT = [("gpt2", "causal"), ("bert", "seq_cls"), ("t5", "seq2seq"), ("llama", "causal"), ("bloom", "causal"),
        ("opt", "seq_cls"), ("qwen2", "seq_cls"), ("mistral", "causal")]


def _family_case(family, head, tiny_model_dir, tmp_path):
    if family in VISION_AUDIO:
        make_config, class_name, inputs = VISION_AUDIO[family]
        torch.manual_seed(0)
        getattr(transformers, class_name)(make_config()).save_pretrained(tmp_path)
        return str(tmp_path), class_name, inputs
    ids = rand_ids((2, 7))
    inputs = {"input_ids": ids, **({"decoder_input_ids": ids[:, :4]} if family == "t5" else {})}
    return tiny_model_dir(family, head), TORCH_CLASSES[(family, head)], inputs


@pytest.mark.parametrize("family,head", TEXT + [(f, None) for f in VISION_AUDIO])
def test_every_family_quantizes_as_transformers_does(family, head, tiny_model_dir, tmp_path):
    """The same linear layers quantized (the others, such as output heads and T5's ``wo``, kept in float) and the
    logits of transformers' bitsandbytes model (NF4, dequantized on CPU) within float parity."""
    path, class_name, inputs = _family_case(family, head, tiny_model_dir, tmp_path)
    hf = getattr(transformers, class_name).from_pretrained(
        path, quantization_config=transformers.BitsAndBytesConfig(**NF4), device_map="cpu").eval()
    ours = getattr(models, class_name).from_pretrained(
        path, quantization_config=BitsAndBytesConfig(**NF4))
    ours_layers = {n for n, c in ours.cells_and_names() if type(c).__name__ in ("Linear", "Conv1D", "Linear4bit")}
    hf_float = _hf_float_linears(hf) & ours_layers  # mindpeft has no module for tied heads (GPT-2's lm_head)
    ours_float = {n for n in ours_layers if n not in quantized_layers(ours)}
    assert ours_float == hf_float and quantized_layers(ours)
    with torch.no_grad():
        out = hf(**{k: torch.tensor(v) for k, v in inputs.items()})
    expected = out.logits.numpy()
    got = ours(**{k: Tensor(v) for k, v in inputs.items()})["logits"].asnumpy()
    assert np.allclose(got, expected, atol=1e-4, rtol=1e-5), max_diff(got, expected)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama_float")
    transformers.LlamaForCausalLM(TINY_CONFIGS["llama"]()).save_pretrained(path)
    return str(path)


def _float_with_dequantized(path, model):
    """transformers' float model with the linear weights replaced by ``model``'s dequantized ones."""
    float_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        for name, layer in quantized_layers(model).items():
            float_model.get_submodule(name).weight.copy_(torch.from_numpy(layer.dequantize_numpy()))
    return float_model


@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_files_match_transformers_and_load_both_ways(kind, llama_dir, tmp_path):
    ids = rand_ids((2, 9))
    hf_dir, ours_dir = str(tmp_path / "hf"), str(tmp_path / "ours")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        llama_dir, quantization_config=transformers.BitsAndBytesConfig(**KINDS[kind]), device_map="cpu")
    hf.save_pretrained(hf_dir)
    ours = LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=BitsAndBytesConfig(**KINDS[kind]))
    ours.save_pretrained(ours_dir)
    theirs, mine = (load_file(os.path.join(d, "model.safetensors")) for d in (hf_dir, ours_dir))
    assert sorted(theirs) == sorted(mine)
    assert all(theirs[k].dtype == mine[k].dtype and theirs[k].ndim == mine[k].ndim for k in theirs)
    assert all(theirs[k].shape == mine[k].shape for k in theirs if "quant_state" not in k)  # JSON text lengths vary
    for key in theirs:
        if "nested_absmax" in key:  # from the offset, torch's float32 mean against the exact one: 1 ulp apart
            assert np.allclose(theirs[key], mine[key], rtol=1e-6, atol=0)
        elif "quant_state" in key:
            a, b = (json.loads(bytes(t[key]).decode()) for t in (theirs, mine))
            assert a.pop("nested_offset", 0) == pytest.approx(b.pop("nested_offset", 0), rel=1e-6) and a == b
        elif key.endswith("weight.absmax") and "double" in kind:  # the compiled CPU kernel's approximate division
            assert (theirs[key] != mine[key]).mean() < 0.02
        else:
            assert np.array_equal(theirs[key], mine[key]), key
    configs = [json.load(open(os.path.join(d, "config.json")))["quantization_config"] for d in (hf_dir, ours_dir)]
    assert configs[0] == configs[1]
    # mindpeft's file in transformers, transformers' file in mindpeft, mindpeft's file back in mindpeft
    logits = ours(input_ids=Tensor(ids))["logits"].asnumpy()
    hf_ours = transformers.AutoModelForCausalLM.from_pretrained(ours_dir, device_map="cpu").eval()
    ours_hf = LlamaForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():
        from_ours, from_hf = (m(torch.tensor(ids)).logits.numpy() for m in (hf_ours, hf))
    if kind == "int8":  # bitsandbytes' LLM.int8 matmul also quantizes the activations; mindpeft's does not
        exact = _float_with_dequantized(llama_dir, ours)
        with torch.no_grad():
            assert max_diff(logits, exact(torch.tensor(ids)).logits) < 1e-5
        assert max_diff(logits, from_ours) < 5e-3
    else:
        assert max_diff(logits, from_ours) < 1e-5
        assert max_diff(ours_hf(input_ids=Tensor(ids))["logits"], from_hf) < 1e-5
    reloaded = LlamaForCausalLM.from_pretrained(ours_dir)
    assert max_diff(reloaded(input_ids=Tensor(ids))["logits"], logits) == 0.0
    assert all(np.array_equal(v, mine[k]) for k, v in reloaded.state_dict().items())


def test_loading_quantizes_one_tensor_at_a_time(llama_dir, monkeypatch):
    """The linear layers are built without float weights, and each checkpoint tensor is read once and a float
    linear weight quantized before the next tensor is read: no float copy of the model exists at any time."""
    config = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                         num_attention_heads=4)
    with _placeholder_linear_layers():
        empty = LlamaForCausalLM(config)
    linear_weights = [c.weight for _, c in empty.cells_and_names() if hasattr(c, "placeholder_arguments")]
    assert len(linear_weights) == 15 and all(int(np.prod(w.shape)) == 1 for w in linear_weights)
    events, read, quantize = [], SafetensorsCheckpoint.__getitem__, Linear4bit.quantize_weight

    def recording_read(self, key):
        events.append(("read", key))
        return read(self, key)

    def recording_quantize(self, weight):
        events.append(("quantize", weight.shape))
        return quantize(self, weight)

    monkeypatch.setattr(SafetensorsCheckpoint, "__getitem__", recording_read)
    monkeypatch.setattr(Linear4bit, "quantize_weight", recording_quantize)
    LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=BitsAndBytesConfig(**NF4))
    reads = [key for kind, key in events if kind == "read"]
    assert sorted(reads) == sorted(load_file(os.path.join(llama_dir, "model.safetensors")))  # each read once
    linear = [i for i, (kind, key) in enumerate(events) if kind == "read" and key.endswith("proj.weight")]
    assert len(linear) == 14 and all(events[i + 1][0] == "quantize" for i in linear)


def test_quantized_model_bytes_of_a_llama_shape(tmp_path):
    """LLaMA's shape ratios (intermediate = 2.6875 hidden, 32 heads scaled down): the 4-bit base weights take
    14.06 % of their float32 bytes (12.9 % with double quantization), int8 25.2 %."""
    config = LlamaConfig(vocab_size=320, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
                         num_attention_heads=8)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path))
    ratios = {}
    for kind, values in {"nf4": NF4, "nf4-double": {**NF4, "bnb_4bit_use_double_quant": True},
                         "int8": {"load_in_8bit": True}}.items():
        model = LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=BitsAndBytesConfig(**values))
        sizes = quantized_model_bytes(model)
        ratios[kind] = sizes["quantized"] / sizes["quantized_fp32"]
        assert sizes["total"] == sizes["quantized"] + sizes["other"]
    assert ratios["nf4"] == pytest.approx((0.5 + 4 / 64) / 4)
    assert ratios["nf4-double"] == pytest.approx((0.5 + 1 / 64 + 4 / (64 * 256)) / 4, rel=1e-3)
    assert ratios["int8"] == pytest.approx(0.25 + 1 / 512, rel=1e-2)
    assert ratios["nf4"] <= 0.16


@pytest.mark.parametrize("kwargs,message", [
    ({"load_in_8bit": True, "load_in_4bit": True}, "load_in_4bit and load_in_8bit are both True"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"}, "bnb_4bit_quant_type='int4'"),
    ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float64"}, "bnb_4bit_compute_dtype='float64'"),
    ({"load_in_8bit": True, "llm_int8_skip_modules": "lm_head"}, "llm_int8_skip_modules must be a list"),
    ({"load_in_4bit": "yes"}, "load_in_4bit must be a bool"),
    ({"load_in_8bit": True, "llm_int8_has_fp16_weight": True}, "llm_int8_has_fp16_weight=True"),
    ({"load_in_4bit": True, "bnb_4bit_quant_storage": "float32"}, "bnb_4bit_quant_storage='float32'"),
])
def test_bad_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        BitsAndBytesConfig(**kwargs)


def test_bad_loads_raise_clear_errors(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="quantizes nothing"):
        LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=BitsAndBytesConfig())
    with pytest.raises(ValueError, match="bnb_4bit_compute_dtype='bfloat16'"):
        LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16"))
    with pytest.raises(ValueError, match="quant_method='gptq'"):
        QuantizationConfig.from_dict({"quant_method": "gptq", "bits": 4})
    with pytest.raises(ValueError, match="quant_type='xx'"):
        Linear4bit(8, 8, quant_type="xx")
    LlamaForCausalLM.from_pretrained(llama_dir, quantization_config=BitsAndBytesConfig(**NF4)).save_pretrained(
        str(tmp_path))
    with pytest.raises(ValueError, match=r"quant_type 'nf4'.*the model 'fp4' \(bnb_4bit_quant_type\)"):
        LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    with pytest.raises(ValueError, match=r"double quantization False, the model True"):
        LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=BitsAndBytesConfig(
            **NF4, bnb_4bit_use_double_quant=True))
    with pytest.raises(ValueError, match="belongs to a 4-bit quantized layer"):
        LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=BitsAndBytesConfig(load_in_8bit=True))
