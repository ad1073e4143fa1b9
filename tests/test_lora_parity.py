"""LoRA in mindpeft gives HF peft's numbers, and adapters move between the two libraries."""
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor

import mindpeft
from mindpeft import LoraConfig, PeftModel, get_peft_model
from mindpeft.models import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                             AutoModelForTokenClassification)
from conftest import max_diff, ms_logits, rand_ids, torch_logits, torch_model

MS_AUTO = {"causal": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification,
           "seq2seq": AutoModelForSeq2SeqLM, "token_cls": AutoModelForTokenClassification}

CASES = [  # family, head, task, extra LoraConfig kwargs
    ("gpt2", "causal", "CAUSAL_LM", {}),
    ("bert", "seq_cls", "SEQ_CLS", {}),
    ("t5", "seq2seq", "SEQ_2_SEQ_LM", {}),
    ("llama", "causal", "CAUSAL_LM", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]}),
    ("roberta", "token_cls", "TOKEN_CLS", {"target_modules": ["query", "value", "dense"]}),
    ("gpt2", "seq_cls", "SEQ_CLS", {"target_modules": ["c_attn", "c_proj", "c_fc"], "bias": "lora_only"}),
    ("bert", "seq_cls", "SEQ_CLS", {"bias": "all", "modules_to_save": ["pooler"]}),
    ("llama", "causal", "CAUSAL_LM", {"target_modules": ["embed_tokens", "q_proj"], "use_rslora": True}),
    ("gpt2", "causal", "CAUSAL_LM", {"target_modules": ["wte", "c_attn", "c_fc"],
                                     "rank_pattern": {"c_fc": 2}, "alpha_pattern": {"wte": 3}}),
    ("bert", "seq_cls", "SEQ_CLS", {"target_modules": ["query", "value"], "layers_to_transform": [1],
                                    "layers_pattern": "layer"}),
    ("t5", "seq2seq", "SEQ_2_SEQ_LM", {"target_modules": r".*decoder.*(SelfAttention|EncDecAttention)\.(q|v)$",
                                       "bias": "all"}),  # T5's relative_attention_bias.weight is no bias
]


def _inputs(head):
    ids = rand_ids((2, 8))
    if head == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": rand_ids((2, 5), seed=1)}
    return {"input_ids": ids}


def _config(lib, task, extra, **kwargs):
    return lib.LoraConfig(task_type=task, r=4, lora_alpha=8, init_lora_weights=False, **extra, **kwargs)


@pytest.mark.parametrize("family,head,task,extra", CASES)
def test_hf_adapter_loads_in_mindpeft_with_same_outputs(tiny_model_dir, tmp_path, family, head, task, extra):
    path = tiny_model_dir(family, head)
    hf = peft.get_peft_model(torch_model(path, family, head), _config(peft, task, extra))
    with torch.no_grad():  # make trained-looking biases and heads so they must be saved and loaded too
        for name, p in hf.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    ours = PeftModel.from_pretrained(MS_AUTO[head].from_pretrained(path), str(tmp_path))
    inputs = _inputs(head)
    expected = torch_logits(hf.eval(), inputs)
    assert max_diff(ms_logits(ours, inputs), expected) < 1e-4
    with ours.disable_adapter(), hf.disable_adapter():
        assert max_diff(ms_logits(ours, inputs), torch_logits(hf, inputs)) < 1e-4


@pytest.mark.parametrize("family,head,task,extra", CASES)
def test_mindpeft_adapter_loads_in_hf_peft_with_same_outputs(tiny_model_dir, tmp_path, family, head, task, extra):
    path = tiny_model_dir(family, head)
    ours = get_peft_model(MS_AUTO[head].from_pretrained(path), _config(mindpeft, task, extra))
    for _, p in ours.parameters_and_names():  # trained-looking biases and heads
        if p.requires_grad and "lora_" not in p.name:
            p.set_data(Tensor(p.asnumpy() + 0.1 * np.random.randn(*p.shape).astype(np.float32)))
    ours.save_pretrained(str(tmp_path))
    hf = peft.PeftModel.from_pretrained(torch_model(path, family, head), str(tmp_path)).eval()
    inputs = _inputs(head)
    assert max_diff(ms_logits(ours, inputs), torch_logits(hf, inputs)) < 1e-4


@pytest.mark.parametrize("family,head,task,extra", CASES)
def test_trainable_parameter_counts_match_hf_peft(tiny_model_dir, family, head, task, extra):
    path = tiny_model_dir(family, head)
    ours = get_peft_model(MS_AUTO[head].from_pretrained(path), _config(mindpeft, task, extra))
    hf = peft.get_peft_model(torch_model(path, family, head), _config(peft, task, extra))
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    trainable = {p.name for p in ours.trainable_params()}
    expected = {n for n, p in hf.named_parameters() if p.requires_grad}
    assert trainable == expected


def test_default_initialisation_is_identity_and_a_matches_kaiming_bound(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    base = AutoModelForCausalLM.from_pretrained(path)
    inputs = _inputs("causal")
    before = ms_logits(base, inputs)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=8))
    assert max_diff(ms_logits(model, inputs), before) == 0.0
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    a = layer.lora_A["default"].weight.asnumpy()
    assert a.shape == (8, 32) and np.abs(a).max() <= 1 / np.sqrt(32) and a.std() > 0.05
    assert not layer.lora_B["default"].weight.asnumpy().any()
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=8, init_lora_weights="gaussian"))
    a = model.base_model.model.transformer.h[0].attn.c_attn.lora_A["default"].weight.asnumpy()
    assert abs(a.std() - 1 / 8) < 0.03
