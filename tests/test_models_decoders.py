"""BLOOM, OPT, Qwen2 and Mistral reproduce transformers (logits, losses, generation, files) and HF peft (LoRA,
prefix tuning, LLaMA-Adapter), and train the same under ``mindspore.jit`` as in PyNative."""
import os

import numpy as np
import peft
import pytest
import torch
import transformers
from mindspore.experimental import optim
from safetensors.numpy import load_file

import mindpeft
from mindpeft import PeftModel, get_peft_model, models
from mindpeft.models import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                             AutoModelForSequenceClassification, AutoModelForTokenClassification)
from mindpeft.models.configuration_utils import ConfigError
from mindpeft.training import TrainStep
from conftest import VOCAB, max_diff, ms_ids, ms_logits, rand_ids, torch_ids, torch_logits, torch_model

CAUSAL = ["bloom", "opt", "qwen2", "mistral"]
SEQ_CLS = ["bloom", "opt", "qwen2"]
MS_CLASSES = {("bloom", "causal"): models.BloomForCausalLM, ("bloom", "seq_cls"): models.BloomForSequenceClassification,
              ("bloom", "base"): models.BloomModel, ("opt", "causal"): models.OPTForCausalLM,
              ("opt", "seq_cls"): models.OPTForSequenceClassification, ("opt", "base"): models.OPTModel,
              ("qwen2", "causal"): models.Qwen2ForCausalLM, ("qwen2", "seq_cls"): models.Qwen2ForSequenceClassification,
              ("qwen2", "base"): models.Qwen2Model, ("mistral", "causal"): models.MistralForCausalLM,
              ("mistral", "base"): models.MistralModel}
AUTO = {"causal": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification, "base": AutoModel,
        "seq2seq": AutoModelForSeq2SeqLM, "token_cls": AutoModelForTokenClassification}
SEQ = 12  # longer than the tiny Mistral's sliding window (4)


def _padded(head, seq=SEQ):
    """Ids and mask of two rows, row 1 padded (with id 0): on the left for causal models, on the right otherwise."""
    ids = rand_ids((2, seq))
    mask = np.ones_like(ids)
    pads = slice(0, 3) if head == "causal" else slice(seq - 3, seq)
    mask[1, pads], ids[1, pads] = 0, 0
    return ids, mask


def _labels(ids, mask):
    """``ids`` as labels, ignoring the padding and the tokens predicted from a padding position (whose logits the
    two libraries compute differently: no real key is visible there)."""
    predicted_from_real = np.concatenate([np.ones_like(mask[:, :1]), mask[:, :-1]], 1)
    return np.where((mask == 1) & (predicted_from_real == 1), ids, -100)


def _torch_out(model, **inputs):
    with torch.no_grad():
        return model(**{k: torch_ids(v) for k, v in inputs.items()})


def _ms_out(model, **inputs):
    return model(**{k: ms_ids(v) for k, v in inputs.items()})


@pytest.mark.parametrize("family,head", [(f, "causal") for f in CAUSAL] + [(f, "seq_cls") for f in SEQ_CLS]
                         + [(f, "base") for f in CAUSAL])
def test_outputs_and_losses_match_transformers_with_padding(tiny_model_dir, family, head):
    path = tiny_model_dir(family, head)
    ids, mask = _padded(head)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if head == "causal":
        inputs["labels"] = _labels(ids, mask)
    elif head == "seq_cls":
        inputs["labels"] = np.array([0, 2])
    model = AUTO[head].from_pretrained(path)
    assert type(model) is MS_CLASSES[(family, head)]
    expected, got = _torch_out(torch_model(path, family, head), **inputs), _ms_out(model, **inputs)
    if head == "base":
        real = mask.astype(bool)
        assert max_diff(got["last_hidden_state"].asnumpy()[real], expected.last_hidden_state.numpy()[real]) < 1e-4
        return
    real = mask.astype(bool) if head == "causal" else slice(None)  # padded positions of causal rows are free
    assert np.abs(expected.logits.numpy()).max() > 0.1  # outputs large enough for the tolerance to mean something
    assert max_diff(got["logits"].asnumpy()[real], expected.logits.numpy()[real]) < 1e-4
    assert abs(float(got["loss"]) - float(expected.loss)) < 1e-5


@pytest.mark.parametrize("family", CAUSAL)
def test_greedy_generate_matches_transformers_with_left_padding(tiny_model_dir, family):
    path = tiny_model_dir(family, "causal")
    ids, mask = _padded("causal", seq=6)
    with torch.no_grad():
        expected = torch_model(path, family, "causal").generate(
            torch_ids(ids), attention_mask=torch_ids(mask), max_new_tokens=6, min_new_tokens=6, do_sample=False,
            pad_token_id=0).numpy()
    model = MS_CLASSES[(family, "causal")].from_pretrained(path)
    for use_cache in (True, False):
        got = model.generate(ms_ids(ids), attention_mask=ms_ids(mask), max_new_tokens=6, eos_token_id=-1,
                             use_cache=use_cache).asnumpy()
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("family", CAUSAL)
def test_save_pretrained_keeps_hf_keys_and_loads_in_transformers(tiny_model_dir, tmp_path, family):
    path = tiny_model_dir(family, "causal")
    assert type(AutoConfig.from_pretrained(path)) is MS_CLASSES[(family, "causal")].config_class
    model = AutoModelForCausalLM.from_pretrained(path)
    model.save_pretrained(str(tmp_path))
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    hf_saved = load_file(os.path.join(path, "model.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in hf_saved.items()}
    ids = ms_ids(rand_ids((2, 7)))
    reloaded = MS_CLASSES[(family, "causal")].from_pretrained(str(tmp_path))
    assert max_diff(model(ids)["logits"], reloaded(ids)["logits"]) == 0.0
    ref = torch_model(str(tmp_path), family, "causal")  # transformers reads mindpeft's config.json and weights
    assert max_diff(model(ids)["logits"], _torch_out(ref, input_ids=ids.asnumpy()).logits) < 1e-4


VARIANTS = {  # architecture options the shared tiny checkpoints leave out
    "qwen2_tied_sliding": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, tie_word_embeddings=True, use_sliding_window=True, sliding_window=3,
        max_window_layers=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, pad_token_id=0)),
    "opt_post_layernorm": lambda: transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        do_layer_norm_before=False, max_position_embeddings=64, pad_token_id=0)),
    "bloom_post_layernorm_residual_untied": lambda: transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, apply_residual_connection_post_layernorm=True,
        tie_word_embeddings=False, pad_token_id=0)),
    "mistral_full_attention_wide_heads": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=None, pad_token_id=0)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_architecture_variants_match_transformers(tmp_path, variant):
    torch.manual_seed(0)
    ref = VARIANTS[variant]().eval()
    with torch.no_grad():
        for param in ref.parameters():
            param.add_(0.1 * torch.randn_like(param))
    ref.save_pretrained(str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    ids, mask = _padded("causal")
    real = mask.astype(bool)
    expected = _torch_out(ref, input_ids=ids, attention_mask=mask).logits.numpy()
    assert max_diff(_ms_out(model, input_ids=ids, attention_mask=mask)["logits"].asnumpy()[real], expected[real]) < 1e-4
    out = _ms_out(model, input_ids=ids[:, :8], attention_mask=mask[:, :8], use_cache=True)  # then one at a time
    for i in range(8, SEQ):
        out = model(input_ids=ms_ids(ids[:, i:i + 1]), attention_mask=ms_ids(mask[:, :i + 1]),
                    past_key_values=out["past_key_values"], use_cache=True)
        assert max_diff(out["logits"][:, 0], expected[:, i]) < 1e-4


def test_mistral_sliding_window_hides_old_keys(tiny_model_dir):
    """Past the window (4), logits depend on the window: the same weights with full attention differ there."""
    path = tiny_model_dir("mistral", "causal")
    ids = ms_ids(rand_ids((1, SEQ)))
    windowed = models.MistralForCausalLM.from_pretrained(path)(ids)["logits"].asnumpy()
    full = models.MistralForCausalLM.from_pretrained(path, sliding_window=None)(ids)["logits"].asnumpy()
    assert max_diff(windowed[:, :4], full[:, :4]) < 1e-6
    assert max_diff(windowed[:, 4:], full[:, 4:]) > 1e-2


def _lora(lib, task):
    return lib.LoraConfig(task_type=task, r=4, lora_alpha=8, init_lora_weights=False)


@pytest.mark.parametrize("family,head", [(f, "causal") for f in CAUSAL] + [("qwen2", "seq_cls")])
def test_lora_with_default_targets_matches_hf_peft_both_ways(tiny_model_dir, tmp_path, family, head):
    path, task = tiny_model_dir(family, head), {"causal": "CAUSAL_LM", "seq_cls": "SEQ_CLS"}[head]
    hf = peft.get_peft_model(torch_model(path, family, head), _lora(peft, task))
    ours = get_peft_model(AUTO[head].from_pretrained(path), _lora(mindpeft, task))
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ids, mask = _padded(head)
    inputs = {"input_ids": ids, "attention_mask": mask}
    real = mask.astype(bool) if head == "causal" else slice(None)
    hf.save_pretrained(str(tmp_path / "hf"))  # HF peft -> mindpeft
    expected = torch_logits(hf.eval(), inputs)[real]
    loaded = PeftModel.from_pretrained(AUTO[head].from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(ms_logits(loaded, inputs)[real], expected) < 1e-4
    ours.save_pretrained(str(tmp_path / "ms"))  # mindpeft -> HF peft, same tensor names and shapes
    ours_file = load_file(str(tmp_path / "ms" / "adapter_model.safetensors"))
    hf_file = load_file(str(tmp_path / "hf" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in hf_file.items()}
    back = peft.PeftModel.from_pretrained(torch_model(path, family, head), str(tmp_path / "ms")).eval()
    assert max_diff(torch_logits(back, inputs)[real], ms_logits(ours, inputs)[real]) < 1e-4


@pytest.mark.parametrize("family", CAUSAL)
def test_default_ia3_and_ln_tuning_targets_match_hf_peft(tiny_model_dir, family):
    path = tiny_model_dir(family, "causal")
    for method in ("IA3Config", "LNTuningConfig")[: 1 if family == "opt" else 2]:  # HF peft: no OPT LN default
        hf = peft.get_peft_model(torch_model(path, family, "causal"), getattr(peft, method)(task_type="CAUSAL_LM"))
        ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                              getattr(mindpeft, method)(task_type="CAUSAL_LM"))
        assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family,head,task", [(f, "causal", "CAUSAL_LM") for f in CAUSAL] + [
    ("t5", "seq2seq", "SEQ_2_SEQ_LM"), ("roberta", "token_cls", "TOKEN_CLS")])
def test_default_adalora_targets_match_hf_peft(tiny_model_dir, family, head, task):
    """HF peft's AdaLoRA defaults (wider than LoRA's for T5, RoBERTa, OPT; none for Mistral)."""
    path = tiny_model_dir(family, head)
    try:
        hf = peft.get_peft_model(torch_model(path, family, head), peft.AdaLoraConfig(task_type=task, total_step=10))
    except ValueError:
        with pytest.raises(ValueError, match="target_modules"):
            get_peft_model(AUTO[head].from_pretrained(path), mindpeft.AdaLoraConfig(task_type=task, total_step=10))
        return
    ours = get_peft_model(AUTO[head].from_pretrained(path), mindpeft.AdaLoraConfig(task_type=task, total_step=10))
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}


def _hf_greedy(hf, ids, steps):
    """Greedy decoding with HF peft's full forward at each step (free of transformers' cache handling)."""
    seq = torch_ids(ids)
    with torch.no_grad():
        for _ in range(steps):
            seq = torch.cat([seq, hf(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq.numpy()


@pytest.mark.parametrize("family", CAUSAL)
def test_prefix_tuning_matches_hf_peft_in_forward_and_generate(tiny_model_dir, tmp_path, family):
    path = tiny_model_dir(family, "causal")
    hf = peft.get_peft_model(torch_model(path, family, "causal"),
                             peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    with torch.no_grad():  # a prefix large enough to move the outputs
        for param in hf.prompt_encoder.parameters():
            param.normal_()
    hf.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path))
    ids, mask = _padded("causal")
    real = mask.astype(bool)
    inputs = {"input_ids": ids, "attention_mask": mask}
    assert max_diff(ms_logits(ours, inputs)[real], torch_logits(hf, inputs)[real]) < 1e-4
    prompt = rand_ids((2, 5))
    got = ours.generate(input_ids=ms_ids(prompt), max_new_tokens=4, eos_token_id=-1).asnumpy()
    np.testing.assert_array_equal(got, _hf_greedy(hf, prompt, steps=4))


def test_mistral_adaption_prompt_matches_hf_peft_both_ways(tiny_model_dir, tmp_path):
    path = tiny_model_dir("mistral", "causal")
    config = dict(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=1)
    hf = peft.get_peft_model(torch_model(path, "mistral", "causal"), peft.AdaptionPromptConfig(**config)).eval()
    with torch.no_grad():  # the zero gate makes a fresh adapter the identity; open it for the comparison
        for name, param in hf.named_parameters():
            if "adaption_gate" in name:
                param.fill_(0.7)
    hf.save_pretrained(str(tmp_path / "hf"))
    ours = PeftModel.from_pretrained(models.MistralForCausalLM.from_pretrained(path), str(tmp_path / "hf"))
    ids = rand_ids((2, SEQ))
    expected = torch_logits(hf, {"input_ids": ids})
    base = ms_logits(models.MistralForCausalLM.from_pretrained(path), {"input_ids": ids})
    assert max_diff(base, expected) > 1e-3
    assert max_diff(ms_logits(ours, {"input_ids": ids}), expected) < 1e-4
    ours.save_pretrained(str(tmp_path / "ms"))
    back = peft.PeftModel.from_pretrained(torch_model(path, "mistral", "causal"), str(tmp_path / "ms")).eval()
    assert max_diff(torch_logits(back, {"input_ids": ids}), expected) < 1e-4


@pytest.mark.parametrize("family", CAUSAL)
def test_jit_lora_training_steps_equal_pynative(tiny_model_dir, family):
    path = tiny_model_dir(family, "causal")
    ids, mask = _padded("causal", seq=8)
    batch = {"input_ids": ms_ids(ids), "attention_mask": ms_ids(mask), "labels": ms_ids(_labels(ids, mask))}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), _lora(mindpeft, "CAUSAL_LM"))
        model.set_train(False)  # no dropout (OPT has some): the two runs must agree
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), jit=jit)
        losses = [float(step(**batch)) for _ in range(3)]
        assert losses[-1] < losses[0]
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


def test_bad_configs_are_rejected_with_the_field_named():
    with pytest.raises(ConfigError, match="hidden_size=50 is not divisible by n_head=6"):
        models.BloomConfig(vocab_size=VOCAB, hidden_size=50, n_layer=2, n_head=6)
    with pytest.raises(ConfigError, match="layer_norm_elementwise_affine=False"):
        models.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                         layer_norm_elementwise_affine=False)
    with pytest.raises(ConfigError, match=r"layer_types=\['full_attention'\] must list 2"):
        models.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, layer_types=["full_attention"])
    with pytest.raises(ConfigError, match="sliding_window=0 must be a positive integer"):
        models.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, sliding_window=0)
