"""Half precision: ``from_pretrained(..., ms_dtype=/dtype=/torch_dtype=)``, float32 adapters on a float16 base
(``autocast_adapter_dtype``), and float16 training with loss scaling in ``TrainStep`` (overflowing steps skipped)."""
import json
import warnings

import mindspore as ms
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor
from mindspore.amp import DynamicLossScaler
from mindspore.experimental import optim
from safetensors import safe_open

from mindpeft import LoraConfig, PeftModel, get_peft_model, models
from mindpeft.models import modeling_utils
from mindpeft.training import Trainer, TrainingArguments, TrainStep
from conftest import ms_ids, rand_ids, torch_ids, torch_model

IDS = rand_ids((2, 9))


def _weights(model):
    return {name: p for name, p in model.parameters_and_names()}


@pytest.mark.parametrize("kwargs", [{"ms_dtype": ms.float16}, {"ms_dtype": "float16"}, {"dtype": "float16"},
                                    {"torch_dtype": "torch.float16"}, {"torch_dtype": torch.float16}])
def test_float16_loading_spellings(tiny_model_dir, kwargs):
    path = tiny_model_dir("llama", "causal")
    model = models.LlamaForCausalLM.from_pretrained(path, **kwargs)
    assert {str(p.dtype) for p in _weights(model).values()} == {"Float16"}
    reference = torch_model(path, "llama", "causal")
    for name, param in reference.state_dict().items():
        np.testing.assert_array_equal(_weights(model)[name].asnumpy(), param.numpy().astype(np.float16))


@pytest.mark.parametrize("family,head,cls", [("llama", "causal", models.LlamaForCausalLM),
                                             ("gpt2", "causal", models.GPT2LMHeadModel),
                                             ("bert", "seq_cls", models.BertForSequenceClassification),
                                             ("t5", "seq2seq", models.T5ForConditionalGeneration),
                                             ("bloom", "causal", models.BloomForCausalLM),
                                             ("opt", "causal", models.OPTForCausalLM)])
@pytest.mark.parametrize("jit", [False, True])
def test_float16_models_match_float32_transformers(tiny_model_dir, family, head, cls, jit):
    """float16 weights and activations; norms, softmax and the loss in float32; logits within float16 rounding of
    transformers' float32 model. T5 keeps ``wo`` in float32 (transformers' ``_keep_in_fp32_modules``)."""
    path = tiny_model_dir(family, head)
    model = cls.from_pretrained(path, ms_dtype="float16")
    kept = sorted({name for name, p in _weights(model).items() if p.dtype == ms.float32})
    assert kept == (sorted(n for n in _weights(model) if n.endswith(".wo.weight")) if family == "t5" else [])
    inputs = {"input_ids": IDS, "decoder_input_ids": IDS} if family == "t5" else {"input_ids": IDS}
    labels = np.array([0, 2]) if head == "seq_cls" else IDS
    forward = ms.jit(model.construct) if jit else model
    out = forward(**{k: ms_ids(v) for k, v in inputs.items()}, labels=ms_ids(labels))
    with torch.no_grad():
        expected = torch_model(path, family, head)(**{k: torch_ids(v) for k, v in inputs.items()},
                                                   labels=torch_ids(labels))
    assert out["logits"].dtype == ms.float16 and out["loss"].dtype == ms.float32
    logits = expected.logits.numpy()
    assert np.abs(out["logits"].asnumpy().astype(np.float64) - logits).max() <= 5e-3 * max(1.0, np.abs(logits).max())
    assert abs(float(out["loss"]) - float(expected.loss)) <= 5e-3


def test_auto_dtype_from_config_and_checkpoint(tmp_path, tiny_model_dir):
    source = torch_model(tiny_model_dir("llama", "causal"), "llama", "causal")
    source.half().save_pretrained(tmp_path / "half")  # config.json says dtype float16
    assert {str(p.dtype) for p in models.LlamaForCausalLM.from_pretrained(tmp_path / "half", dtype="auto")
            .get_parameters()} == {"Float16"}
    assert {str(p.dtype) for p in models.LlamaForCausalLM.from_pretrained(tmp_path / "half").get_parameters()} \
        == {"Float32"}  # the default stays float32
    config = tmp_path / "half" / "config.json"
    values = json.loads(config.read_text())
    assert values.pop("dtype") == "float16"
    config.write_text(json.dumps(values))  # no dtype: the checkpoint's
    model = models.LlamaForCausalLM.from_pretrained(tmp_path / "half", ms_dtype="auto")
    assert {str(p.dtype) for p in model.get_parameters()} == {"Float16"}


def test_bfloat16(tmp_path, tiny_model_dir, monkeypatch):
    """bfloat16: refused on CPU (no kernels) with a clear error; elsewhere the weights are loaded in bfloat16. A
    bfloat16 checkpoint loads in float32 exactly (widened)."""
    path = tiny_model_dir("llama", "causal")
    with pytest.raises(ValueError, match="bfloat16 weights need bfloat16 MatMul and Softmax kernels, which "
                                         "MindSpore's CPU backend lacks"):
        models.LlamaForCausalLM.from_pretrained(path, torch_dtype="bfloat16")
    get_context = ms.get_context
    monkeypatch.setattr(modeling_utils.ms, "get_context",
                        lambda key: "Ascend" if key == "device_target" else get_context(key))
    model = models.LlamaForCausalLM.from_pretrained(path, ms_dtype=ms.bfloat16)
    assert {str(p.dtype) for p in model.get_parameters()} == {"BFloat16"}
    monkeypatch.undo()
    reference = torch_model(path, "llama", "causal").to(torch.bfloat16)
    reference.save_pretrained(tmp_path / "bf16")
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "numpy") as f:
        assert f.get_slice("lm_head.weight").get_dtype() == "BF16"
    loaded = _weights(models.LlamaForCausalLM.from_pretrained(tmp_path / "bf16"))
    for name, param in reference.state_dict().items():
        np.testing.assert_array_equal(loaded[name].asnumpy(), param.float().numpy())


@pytest.mark.parametrize("kwargs,match", [({"ms_dtype": "int8"}, "ms_dtype='int8' is not a dtype"),
                                          ({"torch_dtype": "float64"}, "torch_dtype='float64' is not a dtype"),
                                          ({"ms_dtype": "float16", "dtype": "float32"}, "Conflicting dtypes")])
def test_bad_dtypes(tiny_model_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.LlamaForCausalLM.from_pretrained(tiny_model_dir("llama", "causal"), **kwargs)


def _lora(path, autocast=True, **config):
    model = models.LlamaForCausalLM.from_pretrained(path, ms_dtype="float16")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, lora, autocast_adapter_dtype=autocast)


def _dtypes(peft_model, trainable):
    return {str(p.dtype) for p in peft_model.get_parameters() if p.requires_grad == trainable}


def test_adapters_float32_on_float16_base_and_parity_with_hf_peft(tmp_path, tiny_model_dir):
    """autocast_adapter_dtype=True (default): float32 adapters on the float16 base, whose outputs stay float16;
    the same logits as HF peft's float32 model with these adapters, within float16 rounding; saved in float32.
    False: the adapters take the base layers' float16, as in HF peft."""
    path = tiny_model_dir("llama", "causal")
    peft_model = _lora(path, init_lora_weights=False)
    assert _dtypes(peft_model, True) == {"Float32"} and _dtypes(peft_model, False) == {"Float16"}
    logits = peft_model(input_ids=ms_ids(IDS))["logits"]
    assert logits.dtype == ms.float16
    peft_model.save_pretrained(tmp_path / "adapter")
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "numpy") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    reference = peft.PeftModel.from_pretrained(torch_model(path, "llama", "causal"), tmp_path / "adapter").eval()
    with torch.no_grad():
        expected = reference(input_ids=torch_ids(IDS)).logits.numpy()
    assert np.abs(logits.asnumpy().astype(np.float64) - expected).max() <= 5e-3 * max(1.0, np.abs(expected).max())

    added = _lora(path, autocast=False)
    assert _dtypes(added, True) == {"Float16"}
    added.add_adapter("second", LoraConfig(r=2, target_modules=["q_proj"]))
    assert {str(p.dtype) for n, p in added.parameters_and_names() if ".second" in n} == {"Float32"}
    assert added(input_ids=ms_ids(IDS))["logits"].dtype == ms.float16


def _train(path, jit, steps=6, loss_scale="dynamic"):
    np.random.seed(0)
    peft_model = _lora(path, init_lora_weights=False)
    peft_model.set_train(True)
    step = TrainStep(peft_model, optim.AdamW(peft_model.trainable_params(), lr=1e-2), jit=jit, loss_scale=loss_scale)
    batch = {"input_ids": ms_ids(IDS), "labels": ms_ids(IDS)}
    losses = [float(step(**batch)) for _ in range(steps)]
    return peft_model, step, losses


def test_float16_lora_training_with_dynamic_loss_scale(tiny_model_dir):
    """The loss falls, the adapters stay float32 and the base float16, jit == PyNative (float16 rounding)."""
    path = tiny_model_dir("llama", "causal")
    trained, step, eager = _train(path, jit=False)
    _, _, compiled = _train(path, jit=True)
    assert eager[-1] < eager[0] - 0.05
    np.testing.assert_allclose(compiled, eager, rtol=2e-4, atol=2e-4)
    assert _dtypes(trained, True) == {"Float32"} and _dtypes(trained, False) == {"Float16"}
    assert float(step.loss_scaler.scale_value.asnumpy()) == 2.0 ** 16  # no overflow: not reduced


def test_trainer_fp16_uses_dynamic_loss_scaling(tiny_model_dir, tmp_path):
    """``TrainingArguments(fp16=True)`` on a float16 model: the same losses as TrainStep's dynamic loss scaling;
    on a float32 model it asks for ms_dtype=float16."""
    path = tiny_model_dir("llama", "causal")
    expected = _train(path, jit=True)[2]
    np.random.seed(0)
    model = _lora(path, init_lora_weights=False)
    rows = [{"input_ids": row, "labels": row} for row in IDS]
    args = TrainingArguments(output_dir=str(tmp_path), fp16=True, per_device_train_batch_size=2, num_train_epochs=6,
                             learning_rate=1e-2, weight_decay=1e-2, lr_scheduler_type="constant", max_grad_norm=0,
                             logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model, args, train_dataset=rows)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    np.testing.assert_allclose(losses, expected, rtol=2e-4, atol=2e-4)  # rows in another order: float16 sums
    assert float(trainer._step.loss_scaler.scale_value.asnumpy()) == 2.0 ** 16
    float32 = get_peft_model(models.LlamaForCausalLM.from_pretrained(path), LoraConfig(r=2))
    with pytest.raises(ValueError, match="fp16=True trains a float16 model .* ms_dtype=mindspore.float16"):
        Trainer(float32, TrainingArguments(output_dir=str(tmp_path / "f32"), fp16=True, disable_tqdm=True),
                train_dataset=rows).train()


@pytest.mark.parametrize("jit", [False, True])
def test_overflowing_step_is_skipped_and_scale_adjusted(tiny_model_dir, jit):
    """As torch's GradScaler: an overflow (forced here by an infinite loss factor) skips the optimizer step and
    halves the scale; ``scale_window`` finite steps in a row double it."""
    peft_model = _lora(tiny_model_dir("llama", "causal"), init_lora_weights=False)
    peft_model.set_train(True)
    params = peft_model.trainable_params()

    def loss_fn(input_ids, labels, factor):
        return peft_model(input_ids=input_ids, labels=labels)["loss"] * factor

    scaler = DynamicLossScaler(scale_value=1024, scale_factor=2, scale_window=2)
    step = TrainStep(peft_model, optim.AdamW(params, lr=1e-2), loss_fn=loss_fn, jit=jit, loss_scale=scaler)
    batch = {"input_ids": ms_ids(IDS), "labels": ms_ids(IDS)}
    before = [p.asnumpy().copy() for p in params]
    loss = step(**batch, factor=Tensor(np.inf, ms.float32))
    assert not np.isfinite(float(loss))
    assert all(np.array_equal(b, p.asnumpy()) for b, p in zip(before, params))  # skipped
    assert float(scaler.scale_value.asnumpy()) == 512
    step(**batch, factor=Tensor(1.0, ms.float32))
    assert not all(np.array_equal(b, p.asnumpy()) for b, p in zip(before, params))  # taken
    assert float(scaler.scale_value.asnumpy()) == 512
    step(**batch, factor=Tensor(1.0, ms.float32))
    assert float(scaler.scale_value.asnumpy()) == 1024  # two finite steps in a row


def test_static_loss_scale_and_bad_values(tiny_model_dir):
    path = tiny_model_dir("llama", "causal")
    _, _, scaled = _train(path, jit=False, steps=3, loss_scale=128)
    _, _, plain = _train(path, jit=False, steps=3, loss_scale=None)
    np.testing.assert_allclose(scaled, plain, rtol=1e-3, atol=1e-3)  # scaling changes no result
    for bad in ("static", 0.5, True):
        with pytest.raises(ValueError, match=f"loss_scale={bad!r} is not a loss scale"):
            TrainStep(None, None, loss_fn=lambda: None, loss_scale=bad)


def test_peft_model_from_pretrained_on_float16_base(tmp_path, tiny_model_dir):
    """An adapter loaded onto a float16 base is float32, as HF peft's autocast does."""
    path = tiny_model_dir("llama", "causal")
    _lora(path, init_lora_weights=False).save_pretrained(tmp_path)
    base = models.LlamaForCausalLM.from_pretrained(path, ms_dtype="float16")
    loaded = PeftModel.from_pretrained(base, tmp_path)
    assert {str(p.dtype) for n, p in loaded.parameters_and_names() if "lora_" in n} == {"Float32"}


def test_float16_training_with_gradient_checkpointing(tiny_model_dir):
    """float16 base, float32 adapters and checkpointed layers together: the same loss and gradients as without."""
    peft_model = _lora(tiny_model_dir("llama", "causal"), init_lora_weights=False)
    peft_model.set_train(True)
    params = peft_model.trainable_params()

    def loss_fn(input_ids, labels):
        return peft_model(input_ids=input_ids, labels=labels)["loss"]

    grad_fn = ms.value_and_grad(loss_fn, None, params)
    expected_loss, expected = grad_fn(ms_ids(IDS), ms_ids(IDS))
    peft_model.gradient_checkpointing_enable()
    loss, grads = grad_fn(ms_ids(IDS), ms_ids(IDS))
    assert float(loss) == float(expected_loss)
    for g, e in zip(grads, expected):
        assert g.dtype == ms.float32
        np.testing.assert_array_equal(g.asnumpy(), e.asnumpy())
