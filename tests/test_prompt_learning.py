"""Prompt tuning, prefix tuning and P-tuning: HF peft's numbers, files, generation and training."""
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor, nn

import mindpeft
from mindpeft import PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
from mindpeft.training import TrainStep
from conftest import max_diff, ms_ids, ms_logits, rand_ids, torch_ids, torch_logits, torch_model

AUTO = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "seq_cls": AutoModelForSequenceClassification}
TASKS = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "seq_cls": "SEQ_CLS"}
METHODS = {
    "prompt": lambda lib, task: lib.PromptTuningConfig(task_type=task, num_virtual_tokens=4),
    "prefix": lambda lib, task: lib.PrefixTuningConfig(task_type=task, num_virtual_tokens=4),
    "prefix_mlp": lambda lib, task: lib.PrefixTuningConfig(task_type=task, num_virtual_tokens=4,
                                                          prefix_projection=True, encoder_hidden_size=16),
    "ptuning_mlp": lambda lib, task: lib.PromptEncoderConfig(task_type=task, num_virtual_tokens=4,
                                                            encoder_hidden_size=16),
    "ptuning_lstm": lambda lib, task: lib.PromptEncoderConfig(task_type=task, num_virtual_tokens=4,
                                                             encoder_hidden_size=16,
                                                             encoder_reparameterization_type="LSTM"),
}
CASES = [(f, h, m) for f, h in [("gpt2", "causal"), ("t5", "seq2seq"), ("bert", "seq_cls")] for m in METHODS] + [
    ("llama", "causal", "prefix"), ("roberta", "seq_cls", "prompt"), ("gpt2", "seq_cls", "ptuning_lstm")]


def _inputs(head, padded=False):
    ids = rand_ids((2, 7))
    mask = np.ones_like(ids)
    if padded:
        mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if head == "seq2seq":
        inputs["decoder_input_ids"] = rand_ids((2, 4), seed=1)
    return inputs


@pytest.mark.parametrize("family,head,method", CASES)
def test_prompt_methods_match_hf_peft_and_adapters_cross_load(tiny_model_dir, tmp_path, family, head, method):
    path, task = tiny_model_dir(family, head), TASKS[head]
    hf = peft.get_peft_model(torch_model(path, family, head), METHODS[method](peft, task)).eval()
    ours = get_peft_model(AUTO[head].from_pretrained(path), METHODS[method](mindpeft, task))
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    params = dict(ours.parameters_and_names())  # same encoder weights -> same training-mode forward
    for key, value in hf.state_dict().items():
        if key.startswith("prompt_encoder."):
            params[key].set_data(Tensor(value.numpy()))
    inputs = _inputs(head)
    expected = torch_logits(hf, inputs)
    assert max_diff(ms_logits(ours, inputs), expected) < 1e-4

    hf.save_pretrained(str(tmp_path / "hf"))  # HF -> mindpeft
    loaded = PeftModel.from_pretrained(AUTO[head].from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(ms_logits(loaded, inputs), expected) < 1e-4
    ours.save_pretrained(str(tmp_path / "ms"))  # mindpeft -> HF
    hf_loaded = peft.PeftModel.from_pretrained(torch_model(path, family, head), str(tmp_path / "ms")).eval()
    assert max_diff(torch_logits(hf_loaded, inputs), expected) < 1e-4


@pytest.mark.parametrize("family,head", [("gpt2", "causal"), ("llama", "causal"), ("t5", "seq2seq")])
@pytest.mark.parametrize("method", ["prompt", "prefix", "ptuning_mlp"])
def test_generate_through_peft_model_matches_hf_peft(tiny_model_dir, tmp_path, family, head, method):
    path, task = tiny_model_dir(family, head), TASKS[head]
    hf = peft.get_peft_model(torch_model(path, family, head), METHODS[method](peft, task)).eval()
    hf.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(AUTO[head].from_pretrained(path), str(tmp_path))
    ids = rand_ids((2, 6))
    expected = _hf_greedy(hf, ids, head, steps=5)
    for use_cache in (True, False):
        got = ours.generate(input_ids=ms_ids(ids), max_new_tokens=5, eos_token_id=-1, use_cache=use_cache)
        np.testing.assert_array_equal(got.asnumpy(), expected)


def _hf_greedy(hf, ids, head, steps):
    """Greedy decoding with HF peft's full forward at every step: what the adapter computes, free of the
    cache handling of transformers' generate (which for some prompt methods shifts positions)."""
    seq = torch_ids(ids)
    dec = torch.zeros((ids.shape[0], 1), dtype=torch.long)
    with torch.no_grad():
        for _ in range(steps):
            if head == "seq2seq":
                nxt = hf(input_ids=seq, decoder_input_ids=dec).logits[:, -1].argmax(-1, keepdim=True)
                dec = torch.cat([dec, nxt], 1)
            else:
                seq = torch.cat([seq, hf(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return (dec if head == "seq2seq" else seq).numpy()


@pytest.mark.parametrize("family,head,method", [
    ("gpt2", "causal", "prompt"), ("t5", "seq2seq", "prompt"), ("bert", "seq_cls", "prompt"),
    ("gpt2", "causal", "prefix"), ("t5", "seq2seq", "prefix_mlp"), ("bert", "seq_cls", "ptuning_mlp"),
    ("gpt2", "causal", "ptuning_lstm")])
def test_a_few_jit_training_steps_lower_the_loss(tiny_model_dir, family, head, method):
    model = get_peft_model(AUTO[head].from_pretrained(tiny_model_dir(family, head)),
                           METHODS[method](mindpeft, TASKS[head]))
    ids = rand_ids((4, 8))
    labels = {"causal": ids, "seq2seq": rand_ids((4, 3), seed=2), "seq_cls": np.array([0, 1, 2, 0])}[head]
    batch = {"input_ids": ms_ids(ids), "attention_mask": ms_ids(np.ones_like(ids)), "labels": ms_ids(labels)}
    frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
    step = TrainStep(model, nn.Adam(model.trainable_params(), learning_rate=0.1))
    model.set_train(False)
    before = float(model(**batch)["loss"])
    model.set_train(True)
    for _ in range(8):
        step(**batch)
    model.set_train(False)
    assert float(model(**batch)["loss"]) < before - 0.02
    assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)


def test_prompt_tuning_text_init_copies_word_embeddings(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(["[UNK]", "a", "b", "great", "movie", "review"], start=0)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = mindpeft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="TEXT",
                                         prompt_tuning_init_text="great movie review",
                                         tokenizer_name_or_path=str(tmp_path))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")), config)
    table = model.get_base_model().transformer.wte.weight.asnumpy()
    prompts = model.prompt_encoder["default"].embedding.weight.asnumpy()
    np.testing.assert_array_equal(prompts, table[[3, 4, 5, 3, 4]])  # repeated, then cut to 5 tokens


def test_prompt_learning_bad_input_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive integer"):
        mindpeft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=0)
    with pytest.raises(ValueError, match="tokenizer_name_or_path can't be None"):
        mindpeft.PromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT", prompt_tuning_init_text="x")
    with pytest.raises(ValueError, match="encoder_reparameterization_type must be one of"):
        mindpeft.PromptEncoderConfig(num_virtual_tokens=2, encoder_reparameterization_type="GRU")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                           mindpeft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ValueError, match="merge_and_unload is not supported for prompt learning"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="Cannot combine adapters with different peft types"):
        model.add_adapter("lora", mindpeft.LoraConfig())


def test_disable_adapter_runs_the_base_model(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    inputs = {"input_ids": rand_ids((2, 5))}
    base = ms_logits(AutoModelForCausalLM.from_pretrained(path), inputs)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           mindpeft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert ms_logits(model, inputs).shape == (2, 8, base.shape[-1])
    with model.disable_adapter():
        assert max_diff(ms_logits(model, inputs), base) == 0.0
