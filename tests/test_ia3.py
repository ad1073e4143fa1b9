"""IA3: HF peft's numbers and files, merging, and training."""
import numpy as np
import peft
import pytest
import torch
from mindspore import nn

from mindpeft import IA3Config, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
from mindpeft.training import TrainStep
from conftest import max_diff, ms_ids, ms_logits, rand_ids, torch_ids, torch_logits, torch_model

AUTO = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "seq_cls": AutoModelForSequenceClassification}
CASES = [("gpt2", "causal", "CAUSAL_LM", {}), ("t5", "seq2seq", "SEQ_2_SEQ_LM", {}),
         ("bert", "seq_cls", "SEQ_CLS", {}), ("llama", "causal", "CAUSAL_LM", {}),
         ("roberta", "seq_cls", "SEQ_CLS", {"target_modules": ["query", "intermediate.dense"],
                                            "feedforward_modules": ["intermediate.dense"]})]


def _inputs(head):
    inputs = {"input_ids": rand_ids((2, 7))}
    if head == "seq2seq":
        inputs["decoder_input_ids"] = rand_ids((2, 4), seed=1)
    return inputs


@pytest.mark.parametrize("family,head,task,extra", CASES)
def test_ia3_matches_hf_peft_both_ways(tiny_model_dir, tmp_path, family, head, task, extra):
    path = tiny_model_dir(family, head)
    hf = peft.get_peft_model(torch_model(path, family, head), peft.IA3Config(task_type=task, **extra)).eval()
    ours = get_peft_model(AUTO[head].from_pretrained(path), IA3Config(task_type=task, **extra))
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path / "hf"))
    inputs = _inputs(head)
    expected = torch_logits(hf, inputs)
    loaded = PeftModel.from_pretrained(AUTO[head].from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(ms_logits(loaded, inputs), expected) < 1e-4
    loaded.save_pretrained(str(tmp_path / "ms"))
    back = peft.PeftModel.from_pretrained(torch_model(path, family, head), str(tmp_path / "ms")).eval()
    assert max_diff(torch_logits(back, inputs), expected) < 1e-4

    if head != "seq_cls":  # generate through the PeftModel, as HF peft's
        with torch.no_grad():
            greedy = back.generate(**{k: torch_ids(v) for k, v in inputs.items() if k == "input_ids"},
                                   max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0).numpy()
        got = loaded.generate(input_ids=ms_ids(inputs["input_ids"]), max_new_tokens=3, eos_token_id=-1)
        np.testing.assert_array_equal(got.asnumpy(), greedy)
    unmerged = ms_logits(loaded, inputs)
    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert max_diff(ms_logits(loaded, inputs), unmerged) < 1e-4
    loaded.unmerge_adapter()
    assert max(np.abs(p.asnumpy() - before[n]).max() for n, p in loaded.parameters_and_names()) < 1e-5
    assert max_diff(ms_logits(loaded.merge_and_unload(), inputs), unmerged) < 1e-4


def test_ia3_initialises_to_identity_and_trains(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    ids = rand_ids((4, 8))
    base = ms_logits(AutoModelForCausalLM.from_pretrained(path), {"input_ids": ids})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), IA3Config(task_type="CAUSAL_LM"))
    assert max_diff(ms_logits(model, {"input_ids": ids}), base) == 0.0
    batch = {"input_ids": ms_ids(ids), "labels": ms_ids(ids)}
    step = TrainStep(model, nn.Adam(model.trainable_params(), learning_rate=0.05))
    losses = [float(step(**batch)) for _ in range(6)]
    assert losses[-1] < losses[0] - 0.01


def test_ia3_bad_config():
    with pytest.raises(ValueError, match="`feedforward_modules` should be a subset of `target_modules`"):
        IA3Config(target_modules=["k"], feedforward_modules=["wo"])


def test_ia3_feedforward_modules_default_per_architecture_or_are_required(tiny_model_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                           IA3Config(target_modules=["c_attn", "c_proj"]))
    assert model.peft_config["default"].feedforward_modules == {"mlp.c_proj"}  # as HF peft
    h0 = model.get_base_model().transformer.h[0]
    assert h0.mlp.c_proj.is_feedforward and not h0.attn.c_proj.is_feedforward
    assert h0.mlp.c_proj.ia3_l["default"].shape == (1, 128) and h0.attn.c_attn.ia3_l["default"].shape == (96, 1)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.proj = nn.Dense(4, 4)

        def construct(self, x):
            return self.proj(x)

    with pytest.raises(ValueError, match="Please specify `feedforward_modules`"):
        get_peft_model(Net(), IA3Config(target_modules=["proj"]))
