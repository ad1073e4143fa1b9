"""LLaMA-Adapter (adaption prompt): HF peft's outputs and files, zero-init gate, generation, training."""
import numpy as np
import peft
import pytest
import torch
from mindspore import nn

from mindpeft import AdaptionPromptConfig, PeftModel, get_peft_model
from mindpeft.models import LlamaForCausalLM
from mindpeft.training import TrainStep
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model


def test_adaption_prompt_matches_hf_peft_both_ways(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    config = dict(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=1)
    hf = peft.get_peft_model(torch_model(path, "llama", "causal"), peft.AdaptionPromptConfig(**config)).eval()
    ours = get_peft_model(LlamaForCausalLM.from_pretrained(path), AdaptionPromptConfig(**config))
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ids = rand_ids((2, 7))
    base = ours(input_ids=ms_ids(ids))["logits"].asnumpy()
    with torch.no_grad():  # the zero gate makes a fresh adapter the identity; open it for the comparison
        for name, p in hf.named_parameters():
            if "adaption_gate" in name:
                p.fill_(0.7)
        expected = hf(input_ids=torch_ids(ids)).logits.numpy()
    assert max_diff(expected, base) > 1e-3
    hf.save_pretrained(str(tmp_path / "hf"))
    loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(loaded(input_ids=ms_ids(ids))["logits"], expected) < 1e-4
    greedy = hf.generate(input_ids=torch_ids(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                         pad_token_id=0).numpy()
    np.testing.assert_array_equal(loaded.generate(ms_ids(ids), max_new_tokens=4, eos_token_id=-1).asnumpy(), greedy)
    loaded.save_pretrained(str(tmp_path / "ms"))
    back = peft.PeftModel.from_pretrained(torch_model(path, "llama", "causal"), str(tmp_path / "ms")).eval()
    with torch.no_grad():
        assert max_diff(back(input_ids=torch_ids(ids)).logits, expected) < 1e-4
    with loaded.disable_adapter():
        assert max_diff(loaded(input_ids=ms_ids(ids))["logits"], base) < 1e-6


def test_adaption_prompt_starts_as_identity_and_trains(tiny_model_dir):
    path = tiny_model_dir("llama", "causal")
    ids = rand_ids((4, 8))
    base = LlamaForCausalLM.from_pretrained(path)(input_ids=ms_ids(ids))["logits"].asnumpy()
    model = get_peft_model(LlamaForCausalLM.from_pretrained(path),
                           AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=2))
    assert max_diff(model(input_ids=ms_ids(ids))["logits"], base) == 0.0
    batch = {"input_ids": ms_ids(ids), "labels": ms_ids(ids)}
    step = TrainStep(model, nn.Adam(model.trainable_params(), learning_rate=0.2))
    losses = [float(step(**batch)) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.01
    gate = model.get_base_model().model.layers[1].self_attn.adaption_gate.asnumpy()
    assert abs(gate[0]) > 0


def test_adaption_prompt_errors(tiny_model_dir):
    with pytest.raises(ValueError, match="adapter_len must be a positive integer"):
        AdaptionPromptConfig(adapter_len=0, adapter_layers=1)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir("llama", "causal"))
    with pytest.raises(ValueError, match="more adapter layers '5' than the model has '2'"):
        get_peft_model(model, AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=2, adapter_layers=5))
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir("llama", "causal")),
                                AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=2, adapter_layers=1))
    with pytest.raises(ValueError, match="cannot be merged"):
        peft_model.merge_adapter()
