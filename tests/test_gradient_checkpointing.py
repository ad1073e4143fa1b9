"""Gradient checkpointing (per-layer ``Cell.recompute``) on every mindpeft.models family with LoRA: the same loss and
gradients as without, in PyNative and under jit, dropout included; enable/disable; the activation memory it saves."""
import json
import os
import subprocess
import sys
import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from mindspore.experimental import optim

from mindpeft import LoraConfig, get_peft_model, models, set_seed
from mindpeft.models.gradient_checkpointing import checkpointed_blocks, enable_gradient_checkpointing
from mindpeft.training import TrainStep
from mindpeft.training.train_step import value_and_grad

RNG = np.random.default_rng(0)
IDS = RNG.integers(3, 60, (2, 7))
PIXELS = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
FEATURES = RNG.standard_normal((2, 8, 60)).astype(np.float32)
DROPOUT = 0.1  # recomputed blocks must see the forward's dropout masks

FAMILIES = {  # family: (model with dropout p, names of some checkpointed blocks)
    "gpt2": (lambda p: models.GPT2LMHeadModel(models.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=p, attn_pdrop=p, embd_pdrop=p)),
        ["transformer.h.0", "transformer.h.1"]),
    "bert": (lambda p: models.BertForSequenceClassification(models.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=p, attention_probs_dropout_prob=p)),
        ["bert.encoder.layer.0"]),
    "roberta": (lambda p: models.RobertaForSequenceClassification(models.RobertaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=34, num_labels=3, hidden_dropout_prob=p, attention_probs_dropout_prob=p)),
        ["roberta.encoder.layer.1"]),
    "t5": (lambda p: models.T5ForConditionalGeneration(models.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        decoder_start_token_id=0, dropout_rate=p)), ["encoder.block.0", "decoder.block.1"]),
    "llama": (lambda p: models.LlamaForCausalLM(models.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_dropout=p)), ["model.layers.0"]),
    "bloom": (lambda p: models.BloomForCausalLM(models.BloomConfig(
        vocab_size=64, hidden_size=48, n_layer=2, n_head=6, hidden_dropout=p, attention_dropout=p)),
        ["transformer.h.1"]),
    "opt": (lambda p: models.OPTForCausalLM(models.OPTConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        word_embed_proj_dim=16, max_position_embeddings=32, dropout=p, attention_dropout=p)),
        ["model.decoder.layers.0"]),
    "qwen2": (lambda p: models.Qwen2ForCausalLM(models.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_dropout=p)), ["model.layers.1"]),
    "mistral": (lambda p: models.MistralForCausalLM(models.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, attention_dropout=p)), ["model.layers.0"]),
    "vit": (lambda p: models.ViTForImageClassification(models.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, num_labels=3, hidden_dropout_prob=p, attention_probs_dropout_prob=p)), ["vit.layers.0"]),
    "segformer": (lambda p: models.SegformerForSemanticSegmentation(models.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 2], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=4,
        hidden_dropout_prob=p, attention_probs_dropout_prob=p, classifier_dropout_prob=p, drop_path_rate=p)),
        ["segformer.stages.1.blocks.1"]),
    "whisper": (lambda p: models.WhisperForConditionalGeneration(models.WhisperConfig(
        vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=24, num_mel_bins=8, max_source_positions=30,
        max_target_positions=40, pad_token_id=63, bos_token_id=62, eos_token_id=63, decoder_start_token_id=61,
        dropout=p, attention_dropout=p, activation_dropout=p)), ["model.encoder.layers.0", "model.decoder.layers.1"]),
}


def _batch(family):
    ids = Tensor(IDS, ms.int32)
    if family in ("bert", "roberta"):
        return {"input_ids": ids, "labels": Tensor(np.array([0, 2]), ms.int32)}
    if family == "vit":
        return {"pixel_values": Tensor(PIXELS), "labels": Tensor(np.array([1, 2]), ms.int32)}
    if family == "segformer":
        return {"pixel_values": Tensor(PIXELS), "labels": Tensor(RNG.integers(0, 4, (2, 32, 32)), ms.int32)}
    if family == "whisper":
        return {"input_features": Tensor(FEATURES), "labels": ids}
    return {"input_ids": ids, "labels": ids}


def _lora_model(family, dropout=DROPOUT):
    np.random.seed(0)
    set_seed(0)
    model = FAMILIES[family][0](dropout)
    targets = ["q_proj", "v_proj", "fc1", "fc2"] if family == "segformer" else "all-linear"  # not its convolutions
    config = LoraConfig(r=4, target_modules=targets, lora_dropout=dropout, init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, config)
    peft_model.set_train(True)
    return model, peft_model


def _loss_and_grads(peft_model, batch, jit):
    """Loss and gradients of two calls, so that the second draws new dropout masks."""
    params = peft_model.trainable_params()

    def loss_fn(**inputs):
        return peft_model(**inputs)["loss"]

    grad_fn = value_and_grad(loss_fn, params)
    if jit:
        grad_fn = ms.jit(grad_fn)
    out = []
    for _ in range(2):
        loss, grads = grad_fn(**batch)
        out.append((float(loss), [g.asnumpy() for g in grads]))
    return out


def _assert_same(expected, got):
    for (loss0, grads0), (loss1, grads1) in zip(expected, got):
        assert abs(loss0 - loss1) <= 1e-5
        assert len(grads0) == len(grads1) and any(np.abs(g).max() > 0 for g in grads0)
        for g0, g1 in zip(grads0, grads1):
            np.testing.assert_allclose(g1, g0, atol=1e-5, rtol=1e-5)


def _reseed_dropout(model):
    """Start every dropout stream anew, so that two runs draw the same masks."""
    from mindpeft.models.layers import Dropout
    for index, (_, cell) in enumerate(model.cells_and_names()):
        if isinstance(cell, Dropout):
            cell.reseed(1, index)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_loss_and_gradients_pynative(family):
    model, peft_model = _lora_model(family)
    batch = _batch(family)
    _reseed_dropout(model)
    expected = _loss_and_grads(peft_model, batch, jit=False)
    peft_model.gradient_checkpointing_enable()
    assert peft_model.is_gradient_checkpointing and model.is_gradient_checkpointing
    _reseed_dropout(model)
    _assert_same(expected, _loss_and_grads(peft_model, batch, jit=False))


# One family per distinct model code (RoBERTa runs BERT's, Qwen2 and Mistral LLaMA's): graph compiles are slow.
@pytest.mark.parametrize("family", ["gpt2", "bert", "t5", "llama", "bloom", "opt", "vit", "segformer", "whisper"])
def test_same_loss_and_gradients_jit(family):
    """The compiled graph with recomputed blocks against PyNative without (no dropout: graph mode draws other masks
    than PyNative; jit == PyNative to float32 rounding)."""
    model, peft_model = _lora_model(family, dropout=0.0)
    batch = _batch(family)
    expected = _loss_and_grads(peft_model, batch, jit=False)
    model.gradient_checkpointing_enable()  # on the base model, before or after wrapping: the same
    _assert_same(expected, _loss_and_grads(peft_model, batch, jit=True))


def test_jit_keeps_dropout_masks():
    """Under jit, MindSpore's recompute keeps the forward's dropout masks by itself."""
    model, peft_model = _lora_model("llama")
    batch = _batch("llama")
    _reseed_dropout(model)
    expected = _loss_and_grads(peft_model, batch, jit=True)
    peft_model.gradient_checkpointing_enable()
    _reseed_dropout(model)
    _assert_same(expected, _loss_and_grads(peft_model, batch, jit=True))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_blocks_found(family):
    """One checkpointed block per repeated layer (SegFormer's decode head projections are a layer list too)."""
    model = FAMILIES[family][0](DROPOUT)
    names = {name for name, cell in model.cells_and_names() if any(cell is b for b in checkpointed_blocks(model))}
    for name in FAMILIES[family][1]:
        assert name in names
    layers = {"gpt2": 2, "bert": 2, "roberta": 2, "t5": 4, "llama": 2, "bloom": 2, "opt": 2, "qwen2": 2,
              "mistral": 2, "vit": 2, "segformer": 5, "whisper": 4}
    assert len(names) == layers[family]


def test_enabled_before_peft_reentrant_ignored_and_disable():
    """HF's recipe enables checkpointing before get_peft_model: the adapters injected afterwards still get their
    gradients (MindSpore's reentrant recompute would give them zeros, so use_reentrant=True is refused with a
    warning); disable restores the plain forward; TrainStep rebuilds its step on each change."""
    model, peft_model = _lora_model("llama")
    batch = _batch("llama")
    _reseed_dropout(model)
    expected = _loss_and_grads(peft_model, batch, jit=False)

    np.random.seed(0)
    set_seed(0)
    base = FAMILIES["llama"][0](DROPOUT)
    with pytest.warns(UserWarning, match="use_reentrant=True is ignored"):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    base.enable_input_require_grads()
    config = LoraConfig(r=4, target_modules="all-linear", lora_dropout=DROPOUT, init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        later = get_peft_model(base, config)
    later.set_train(True)
    _reseed_dropout(base)
    _assert_same(expected, _loss_and_grads(later, batch, jit=False))

    step = TrainStep(later, optim.SGD(later.trainable_params(), lr=0.0), jit=False)
    step(**batch)
    compiled = step._fn
    later.gradient_checkpointing_disable()
    assert not later.is_gradient_checkpointing
    assert all(getattr(b, "_recompute_cell", None) is None for b in checkpointed_blocks(base))
    step(**batch)
    assert step._fn is not compiled
    _reseed_dropout(base)
    _assert_same(expected, _loss_and_grads(later, batch, jit=False))
    later.gradient_checkpointing_enable()  # again after a disable
    assert later.is_gradient_checkpointing


def test_bad_kwargs_and_models_without_layers():
    model = FAMILIES["llama"][0](0.0)
    with pytest.raises(ValueError, match="preserve_rng_state"):
        model.gradient_checkpointing_enable({"preserve_rng_state": True})
    with pytest.raises(ValueError, match="no layer list"):
        enable_gradient_checkpointing(ms.nn.Dense(2, 2))


# ----- activation memory, measured in fresh processes ----------------------------------------------------------------
def _peak_rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def measure_activation_memory(checkpointing, hidden=128, layers=16, heads=8, batch=4, seq=512, vocab=1000, jit=False):
    """The memory one LoRA training step of a LLaMA-shaped model takes at ``batch x seq`` tokens, in MB: peak RSS
    during the step over the RSS before it. PyNative: after a warm-up step on 16 tokens a row (kernels, optimizer
    state and MindSpore's memory pool set up). Compiled: the first step, compile included (a compiled CPU graph
    sets up what its kernels keep on their first run)."""
    np.random.seed(0)
    config = models.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=seq)
    model = models.LlamaForCausalLM(config)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    if checkpointing:
        peft_model.gradient_checkpointing_enable()
    peft_model.set_train(True)
    step = TrainStep(peft_model, optim.AdamW(peft_model.trainable_params(), lr=1e-3), jit=jit)
    rng = np.random.default_rng(0)
    warm_up = Tensor(rng.integers(0, vocab, (batch, 16)), ms.int32)
    ids = Tensor(rng.integers(0, vocab, (batch, seq)), ms.int32)
    if not jit:
        step(input_ids=warm_up, labels=warm_up)
    before = _rss_mb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS
    loss = float(step(input_ids=ids, labels=ids))
    return {"activation_mb": _peak_rss_mb() - before, "loss": loss}


def _start_measuring(checkpointing, **sizes):
    """A child process printing :func:`measure_activation_memory`'s result (each measurement in its own process,
    so that one's peak does not hide the other's; the two run side by side)."""
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            "from test_gradient_checkpointing import measure_activation_memory as m; "
            f"print(json.dumps(m({checkpointing}, **{sizes!r})))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GLOG_v": "3"})


def _result(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_activation_memory_halved_at_4x512_tokens():
    """PyNative, 4 x 512 tokens, 16 layers: checkpointing at least halves the step's memory, with the same loss
    (measured: about 1210 MB without, 460 MB with; the rest is one layer's attention, recomputed in the backward)."""
    processes = [_start_measuring(False), _start_measuring(True)]
    plain, checkpointed = (_result(p) for p in processes)
    assert abs(plain["loss"] - checkpointed["loss"]) < 1e-5
    assert plain["activation_mb"] >= 2 * checkpointed["activation_mb"], (plain, checkpointed)


def test_activation_memory_halved_in_compiled_steps():
    """The same under mindspore.jit. A compiled step's first run also holds the compiled graph (about 35 MB a
    layer, twice that with recomputed layers), so activation memory is the step's memory at 4 x 512 tokens minus
    the same step's at 4 x 16 (measured: about 760 MB without, 270 MB with). Before attention's softmax backward
    and the head transposes stopped broadcasting, kernels of a compiled CPU graph kept index maps of their
    tensors and checkpointing saved almost nothing."""
    runs = [(checkpointing, seq) for checkpointing in (False, True) for seq in (16, 512)]
    results = {}
    for pair in (runs[:2], runs[2:]):
        processes = {run: _start_measuring(run[0], jit=True, layers=12, seq=run[1]) for run in pair}
        results.update({run: _result(process) for run, process in processes.items()})
    plain, checkpointed = (results[(c, 512)]["activation_mb"] - results[(c, 16)]["activation_mb"]
                           for c in (False, True))
    assert abs(results[(False, 512)]["loss"] - results[(True, 512)]["loss"]) < 1e-5
    assert plain >= 2 * checkpointed, results
