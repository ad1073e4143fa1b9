"""LoRA training: gradients reach only adapter weights, and jit-compiled steps equal PyNative ones."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from mindpeft import LoraConfig, get_peft_model
from mindpeft.models import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification)
from mindpeft.training import ForwardStep, TrainStep, model_loss
from conftest import ms_ids, rand_ids

CASES = {
    "gpt2": ("causal", AutoModelForCausalLM, "CAUSAL_LM"),
    "bert": ("seq_cls", AutoModelForSequenceClassification, "SEQ_CLS"),
    "t5": ("seq2seq", AutoModelForSeq2SeqLM, "SEQ_2_SEQ_LM"),
    "llama": ("causal", AutoModelForCausalLM, "CAUSAL_LM"),
}


def _batch(family):
    ids = rand_ids((4, 10))
    if family == "bert":
        return {"input_ids": ms_ids(ids), "labels": ms_ids(np.array([0, 1, 2, 1]))}
    if family == "t5":
        labels = rand_ids((4, 6), seed=1)
        labels[:, -1] = -100
        return {"input_ids": ms_ids(ids), "labels": ms_ids(labels)}
    return {"input_ids": ms_ids(ids), "labels": ms_ids(ids)}


def _peft_model(tiny_model_dir, family):
    head, auto, task = CASES[family]
    return get_peft_model(auto.from_pretrained(tiny_model_dir(family, head)),
                          LoraConfig(task_type=task, r=4, lora_dropout=0.1, init_lora_weights=False))


@pytest.mark.parametrize("family", list(CASES))
def test_jit_train_step_matches_pynative_and_updates_only_adapters(tiny_model_dir, family):
    model = _peft_model(tiny_model_dir, family)
    model.set_train(False)  # deterministic (no dropout) for the exact jit vs PyNative comparison
    batch = _batch(family)
    params = model.trainable_params()
    assert params and all("lora_" in p.name or "modules_to_save" in p.name for p in params)
    grad_fn = ms.value_and_grad(model_loss(model), None, params)
    loss_py, grads_py = grad_fn(**batch)
    loss_jit, grads_jit = ms.jit(grad_fn)(**batch)
    assert abs(float(loss_py) - float(loss_jit)) < 1e-5
    for g_py, g_jit in zip(grads_py, grads_jit):
        assert np.abs(g_py.asnumpy() - g_jit.asnumpy()).max() < 1e-5
    assert max(np.abs(g.asnumpy()).max() for g in grads_py) > 0

    frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
    adapters = {p.name: p.asnumpy().copy() for p in params}
    step = TrainStep(model, nn.Adam(params, learning_rate=1e-2))
    model.set_train(True)
    losses = [float(step(**batch)) for _ in range(8)]
    assert losses[-1] < losses[0]
    assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
    assert all(not np.array_equal(p.asnumpy(), adapters[p.name]) for p in params)


def test_train_step_recompiles_when_adapter_state_changes(tiny_model_dir):
    model = _peft_model(tiny_model_dir, "gpt2")
    model.set_train(False)
    batch = _batch("gpt2")
    forward = ForwardStep(model)
    adapted = forward(**batch)["loss"].asnumpy()
    with model.disable_adapter():
        base_py = model(**batch)["loss"].asnumpy()
        base_jit = forward(**batch)["loss"].asnumpy()
    assert abs(base_py - adapted) > 1e-4 and abs(base_jit - base_py) < 1e-5
    assert abs(forward(**batch)["loss"].asnumpy() - adapted) < 1e-5

    model.add_adapter("b", LoraConfig(task_type="CAUSAL_LM", r=2, init_lora_weights=False))
    model.set_adapter("b")
    assert abs(forward(**batch)["loss"].asnumpy() - model(**batch)["loss"].asnumpy()) < 1e-5
