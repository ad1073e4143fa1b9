"""mindpeft.models reproduce transformers' outputs from the same safetensors weights."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
import torch
import transformers

from mindpeft import models
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model

CASES = [
    ("gpt2", "causal", models.GPT2LMHeadModel, "logits"),
    ("gpt2", "seq_cls", models.GPT2ForSequenceClassification, "logits"),
    ("bert", "seq_cls", models.BertForSequenceClassification, "logits"),
    ("bert", "token_cls", models.BertForTokenClassification, "logits"),
    ("bert", "qa", models.BertForQuestionAnswering, "start_logits"),
    ("bert", "base", models.BertModel, "last_hidden_state"),
    ("roberta", "seq_cls", models.RobertaForSequenceClassification, "logits"),
    ("roberta", "token_cls", models.RobertaForTokenClassification, "logits"),
    ("roberta", "qa", models.RobertaForQuestionAnswering, "end_logits"),
    ("llama", "causal", models.LlamaForCausalLM, "logits"),
]


@pytest.mark.parametrize("family,head,cls,key", CASES)
def test_encoder_and_decoder_models_match_transformers(tiny_model_dir, family, head, cls, key):
    path = tiny_model_dir(family, head)
    ids = rand_ids((2, 9))
    mask = np.ones_like(ids)
    if head != "causal":  # right padding on row 1
        mask[1, 6:] = 0
        ids[1, 6:] = {"roberta": 1}.get(family, 0)
    ref = torch_model(path, family, head)
    with torch.no_grad():
        expected = getattr(ref(torch_ids(ids), attention_mask=torch_ids(mask)), key).numpy()
    got = cls.from_pretrained(path)(ms_ids(ids), attention_mask=ms_ids(mask))[key].asnumpy()
    if got.ndim >= 2 and got.shape[1] == ids.shape[1]:  # per-token outputs: compare real tokens only
        expected, got = expected[mask.astype(bool)], got[mask.astype(bool)]
    assert max_diff(got, expected) < 1e-4


@pytest.mark.parametrize("family,cls", [("t5", models.T5ForConditionalGeneration),
                                        ("mt5", models.MT5ForConditionalGeneration)])
def test_seq2seq_models_match_transformers_logits_and_loss(tiny_model_dir, family, cls):
    path = tiny_model_dir(family, "seq2seq")
    ids, labels = rand_ids((2, 30)), rand_ids((2, 24), seed=1)
    mask = np.ones_like(ids)
    mask[1, 25:] = 0
    labels[0, 20:] = -100
    ref = torch_model(path, family, "seq2seq")
    with torch.no_grad():
        expected = ref(torch_ids(ids), attention_mask=torch_ids(mask), labels=torch_ids(labels))
    got = cls.from_pretrained(path)(ms_ids(ids), attention_mask=ms_ids(mask), labels=ms_ids(labels))
    assert max_diff(got["logits"], expected.logits) < 1e-4
    assert abs(float(got["loss"]) - float(expected.loss)) < 1e-5


@pytest.mark.parametrize("family,head,cls", [("gpt2", "causal", models.GPT2LMHeadModel),
                                             ("llama", "causal", models.LlamaForCausalLM),
                                             ("t5", "seq2seq", models.T5ForConditionalGeneration)])
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generate_matches_transformers(tiny_model_dir, family, head, cls, use_cache):
    path = tiny_model_dir(family, head)
    ids = rand_ids((2, 6))
    ref = torch_model(path, family, head)
    expected = ref.generate(torch_ids(ids), max_new_tokens=5, do_sample=False, min_new_tokens=5,
                            pad_token_id=0).numpy()
    got = cls.from_pretrained(path).generate(ms_ids(ids), max_new_tokens=5, use_cache=use_cache,
                                             eos_token_id=-1).asnumpy()
    np.testing.assert_array_equal(got, expected)


def test_cached_and_uncached_logits_agree_step_by_step(tiny_model_dir):
    model = models.LlamaForCausalLM.from_pretrained(tiny_model_dir("llama", "causal"))
    ids = rand_ids((1, 8))
    full = model(ms_ids(ids))["logits"].asnumpy()
    out = model(ms_ids(ids[:, :5]), use_cache=True)
    step = model(ms_ids(ids[:, 5:6]), past_key_values=out["past_key_values"], use_cache=True)
    assert max_diff(step["logits"][:, -1], full[:, 5]) < 1e-5


def test_sampling_is_seeded_and_respects_top_k(tiny_model_dir):
    model = models.GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal"))
    ids = ms_ids(rand_ids((2, 4)))
    a = model.generate(ids, do_sample=True, top_k=5, seed=3, max_new_tokens=6, eos_token_id=-1).asnumpy()
    b = model.generate(ids, do_sample=True, top_k=5, seed=3, max_new_tokens=6, eos_token_id=-1).asnumpy()
    greedy = model.generate(ids, do_sample=True, top_k=1, seed=7, max_new_tokens=6, eos_token_id=-1).asnumpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(greedy, model.generate(ids, max_new_tokens=6, eos_token_id=-1).asnumpy())


def test_save_and_reload_round_trip_keeps_hf_keys(tiny_model_dir, tmp_path):
    path = tiny_model_dir("bert", "seq_cls")
    model = models.AutoModelForSequenceClassification.from_pretrained(path)
    model.save_pretrained(tmp_path)
    from safetensors.numpy import load_file
    assert set(load_file(os.path.join(tmp_path, "model.safetensors"))) == set(model.state_dict())
    assert "bert.encoder.layer.0.attention.self.query.weight" in model.state_dict()
    reloaded = models.BertForSequenceClassification.from_pretrained(str(tmp_path))
    ids = ms_ids(rand_ids((2, 5)))
    assert max_diff(model(ids)["logits"], reloaded(ids)["logits"]) == 0.0
    ref = torch_model(str(tmp_path), "bert", "seq_cls")  # transformers reads mindpeft's checkpoint too
    with torch.no_grad():
        assert max_diff(model(ids)["logits"], ref(torch_ids(ids.asnumpy())).logits) < 1e-4


def test_backbone_checkpoint_loads_into_head_model(tiny_model_dir):
    head = models.BertForTokenClassification.from_pretrained(tiny_model_dir("bert", "base"))
    base = models.BertModel.from_pretrained(tiny_model_dir("bert", "base"))
    np.testing.assert_array_equal(head.bert.encoder.layer[1].output.dense.weight.asnumpy(),
                                  base.encoder.layer[1].output.dense.weight.asnumpy())


def test_model_loading_errors_are_clear(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.GPT2LMHeadModel.from_pretrained(str(tmp_path / "nope"))
    path = tiny_model_dir("gpt2", "causal")
    config = json.load(open(os.path.join(path, "config.json")))
    config["n_embd"] = 16
    os.makedirs(tmp_path / "bad", exist_ok=True)
    json.dump(config, open(tmp_path / "bad" / "config.json", "w"))
    os.link(os.path.join(path, "model.safetensors"), tmp_path / "bad" / "model.safetensors")
    with pytest.raises(ValueError, match="Shape mismatch"):
        models.GPT2LMHeadModel.from_pretrained(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="does not support model_type"):
        models.AutoModelForSeq2SeqLM.from_pretrained(path)


@pytest.fixture(scope="module")
def t5_standard_buckets(tmp_path_factory):
    """A tiny T5 with the buckets of t5-small, flan-t5 and mT5: 32 buckets, max distance 128."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0)
    assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (32, 128)
    path = str(tmp_path_factory.mktemp("t5_standard"))
    transformers.T5ForConditionalGeneration(config).eval().save_pretrained(path)
    return path


def test_t5_standard_buckets_match_transformers_on_long_inputs(t5_standard_buckets):
    """Offsets of 16, 32 and 64 (inputs of 40+ tokens) land in the right bucket, encoder and decoder."""
    path = t5_standard_buckets
    ids, labels = rand_ids((2, 70)), rand_ids((2, 48), seed=1)
    mask = np.ones_like(ids)
    mask[1, 60:] = 0
    ref = torch_model(path, "t5", "seq2seq")
    with torch.no_grad():
        expected = ref(torch_ids(ids), attention_mask=torch_ids(mask), labels=torch_ids(labels))
    model = models.T5ForConditionalGeneration.from_pretrained(path)
    got = model(ms_ids(ids), attention_mask=ms_ids(mask), labels=ms_ids(labels))
    assert max_diff(got["encoder_last_hidden_state"][0], expected.encoder_last_hidden_state[0]) < 1e-4
    assert max_diff(got["logits"], expected.logits) < 1e-4
    assert abs(float(got["loss"]) - float(expected.loss)) < 1e-5
    # with a cache: 40 decoder tokens, then one at a time (queries far from the start of the keys)
    dec = models.t5.shift_right(ms_ids(labels), 0, 0)
    encoded = got["encoder_last_hidden_state"]
    out = model(attention_mask=ms_ids(mask), encoder_outputs=encoded, decoder_input_ids=dec[:, :40], use_cache=True)
    for i in range(40, 48):
        out = model(attention_mask=ms_ids(mask), encoder_outputs=encoded, decoder_input_ids=dec[:, i:i + 1],
                    past_key_values=out["past_key_values"], use_cache=True)
        assert max_diff(out["logits"][:, 0], expected.logits[:, i]) < 1e-4


def test_t5_bucket_table_matches_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    offsets = np.arange(-200, 201)
    for num_buckets, max_distance in [(32, 128), (8, 20), (16, 128), (64, 256)]:
        for bidirectional in (True, False):
            expected = T5Attention._relative_position_bucket(torch.tensor(offsets), bidirectional, num_buckets,
                                                             max_distance).numpy()
            got = models.t5.relative_position_bucket(offsets, bidirectional, num_buckets, max_distance)
            np.testing.assert_array_equal(got, expected)
    table = models.t5.bucket_table(3, 70, True, 32, 128).asnumpy()  # the last 3 of 70 positions as queries
    memory, context = np.arange(70)[None], np.arange(67, 70)[:, None]
    expected = T5Attention._relative_position_bucket(torch.tensor(memory - context), True, 32, 128).numpy()
    np.testing.assert_array_equal(table, expected)


def test_bert_pooler_tanh_is_precise_on_large_activations(tiny_model_dir):
    """MindSpore's CPU tanh kernel is off by up to 1e-4 around |x| = 5; the pooler uses a precise form."""
    x = np.linspace(-8, 8, 4001).astype(np.float32)
    assert np.abs(models.layers.tanh(ms.Tensor(x)).asnumpy() - np.tanh(x.astype(np.float64))).max() < 3e-6
    path = tiny_model_dir("bert", "base")
    ref, model = torch_model(path, "bert", "base"), models.BertModel.from_pretrained(path)
    with torch.no_grad():
        ref.pooler.dense.weight.mul_(40.0)  # pre-activations of a few units, where the kernel errs most
    model.pooler.dense.weight.set_data(model.pooler.dense.weight * 40.0)
    ids = rand_ids((4, 9))
    with torch.no_grad():
        expected = ref(torch_ids(ids)).pooler_output
    assert max_diff(model(ms_ids(ids))["pooler_output"], expected) < 1e-5
