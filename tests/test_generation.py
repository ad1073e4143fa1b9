"""Compiled decoding over a static cache: the same ids as the PyNative growing-cache path and transformers, one
compile per shape, and a new graph after adapter changes."""
import mindspore as ms
import numpy as np
import pytest
from mindspore.graph import api as graph_api

from mindpeft import LoraConfig, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from conftest import ms_ids, rand_ids, torch_ids, torch_model

CASES = [("gpt2", "causal"), ("llama", "causal"), ("t5", "seq2seq")]


def _load(path, head):
    return (AutoModelForSeq2SeqLM if head == "seq2seq" else AutoModelForCausalLM).from_pretrained(path)


def _prompt(head):
    ids = rand_ids((2, 6))
    mask = np.ones_like(ids)
    if head == "causal":
        mask[0, :2] = 0  # left padding
    else:
        mask[0, 4:] = 0  # right padding of the encoder input, which the compiled prefill pads further to 32
    return ids, mask


@pytest.mark.parametrize("family,head", CASES)
def test_compiled_decode_equals_pynative_and_transformers(tiny_model_dir, family, head):
    path = tiny_model_dir(family, head)
    model = _load(path, head)
    ids, mask = _prompt(head)
    inputs = dict(input_ids=ms_ids(ids), attention_mask=ms_ids(mask), eos_token_id=-1)
    # 40 new tokens: the static cache crosses a length bucket (32)
    greedy = model.generate(max_new_tokens=40, **inputs).asnumpy()
    np.testing.assert_array_equal(greedy, model.generate(max_new_tokens=40, jit=False, **inputs).asnumpy())
    expected = torch_model(path, family, head).generate(torch_ids(ids), attention_mask=torch_ids(mask),
                                                        max_new_tokens=40, min_new_tokens=40, do_sample=False,
                                                        pad_token_id=0).numpy()
    # the unpadded row: transformers' cached LLaMA decode of the left-padded row drifts from its own full forward
    np.testing.assert_array_equal(greedy[1], expected[1])
    if head == "seq2seq":
        np.testing.assert_array_equal(greedy, expected)
    sampled = model.generate(max_new_tokens=8, do_sample=True, top_k=20, seed=5, **inputs).asnumpy()
    np.testing.assert_array_equal(
        sampled, model.generate(max_new_tokens=8, do_sample=True, top_k=20, seed=5, jit=False, **inputs).asnumpy())


@pytest.mark.parametrize("family,head", [CASES[0], CASES[2]])
def test_decode_graph_compiles_once_per_shape(tiny_model_dir, family, head):
    model = _load(tiny_model_dir(family, head), head)
    model.generate(ms_ids(rand_ids((2, 6), seed=1)), max_new_tokens=6, eos_token_id=-1)
    compiled = len(graph_api.ms_compile_cache)
    # other prompts, and another prompt length in the same bucket (a seq2seq model's encoder input is padded to it)
    for seed, length in ((2, 6), (3, 9)):
        model.generate(ms_ids(rand_ids((2, length), seed=seed)), max_new_tokens=6, eos_token_id=-1)
    assert len(graph_api.ms_compile_cache) == compiled


def test_adapter_changes_reach_the_compiled_decode(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    model.add_adapter("other", LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=64, init_lora_weights=False))
    ids = ms_ids(rand_ids((1, 5)))

    def both_ways():
        compiled = model.generate(input_ids=ids, max_new_tokens=10, eos_token_id=-1).asnumpy()
        eager = model.generate(input_ids=ids, max_new_tokens=10, eos_token_id=-1, jit=False).asnumpy()
        np.testing.assert_array_equal(compiled, eager)
        return compiled

    first = both_ways()
    model.set_adapter("other")
    second = both_ways()
    with model.disable_adapter():
        base = both_ways()
    np.testing.assert_array_equal(base, _load(path, "causal").generate(input_ids=ids, max_new_tokens=10,
                                                                      eos_token_id=-1).asnumpy())
    assert not np.array_equal(first, second) and not np.array_equal(second, base)
