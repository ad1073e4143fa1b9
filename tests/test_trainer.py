"""Trainer and TrainingArguments: the same losses and adapter as a hand-written jit loop (GPT-2 and T5, with and
without gradient accumulation, with clipping), evaluation metrics, generation, checkpoint folders, rotation, the best
model reloaded at the end, exact resume after kill -9, TensorBoard files, collators against transformers', and an
Optuna search."""
import json
import os
import signal
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
import mindspore as ms
from mindspore import ops
from mindspore.experimental import optim
from safetensors.numpy import load_file

import mindpeft
from mindpeft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSeq2SeqLM, Tokenizer
from mindpeft.training import (DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, DataCollatorWithPadding,
                               Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainerCallback,
                               TrainingArguments, get_linear_schedule_with_warmup, model_loss)
from mindpeft.training.checkpoint import verify_checksums
from mindpeft.training.trainer import dataset_rows

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.join(HERE, "..", "tutorials", "data", "tiny-gpt2-reviews")
VOCAB = 96  # conftest's tiny models
SEED = 7
LR = 1e-2
CLIP = 0.5
# MindSpore caches parsed functions by name and id(): the reference loops' functions stay alive so that a later
# one never lands on a freed one's address (conftest does the same for Cells).
_KEEP_ALIVE = []


def _rows(family, n=16, seed=0):
    rng = np.random.default_rng(seed)
    if family == "gpt2":
        return [{"input_ids": ids, "labels": ids} for ids in rng.integers(3, VOCAB, (n, 10))]
    return [{"input_ids": ids, "labels": labels}
            for ids, labels in zip(rng.integers(3, VOCAB, (n, 8)), rng.integers(3, VOCAB, (n, 5)))]


def _lora_model(model_dir, family, dropout=0.0):
    mindpeft.set_seed(SEED)
    if family == "gpt2":
        base = AutoModelForCausalLM.from_pretrained(model_dir, attn_pdrop=dropout, embd_pdrop=dropout,
                                                    resid_pdrop=dropout)
        task = "CAUSAL_LM"
    else:
        base = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dropout_rate=dropout)
        task = "SEQ_2_SEQ_LM"
    return get_peft_model(base, LoraConfig(task_type=task, r=4, lora_dropout=dropout, init_lora_weights=False))


def _model_dir(tiny_model_dir, family):
    return tiny_model_dir(family, "causal" if family == "gpt2" else "seq2seq")


def _adapter(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def _hand_written_loop(model, rows, batch_size, epochs):
    """AdamW (no weight decay), linear decay without warm-up, clipping to CLIP; rows of each epoch in the order
    numpy.random.default_rng([seed, epoch]).permutation — what the Trainer documents."""
    params = model.trainable_params()
    optimizer = optim.AdamW(params, lr=LR, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, epochs * len(rows) // batch_size)
    grad_fn = ms.value_and_grad(model_loss(model), None, params)

    def step(**batch):
        loss, grads = grad_fn(**batch)
        norm = ops.sqrt(ops.addn([ops.reduce_sum(ops.square(g)) for g in grads]))
        scale = ops.clamp(CLIP / (norm + 1e-6), max=1.0)
        return ops.depend(loss, optimizer(tuple(g * scale for g in grads)))

    _KEEP_ALIVE.extend([step, grad_fn])
    step = ms.jit(step)
    model.set_train(True)
    losses = []
    for epoch in range(epochs):
        order = np.random.default_rng([SEED, epoch]).permutation(len(rows))
        for start in range(0, len(rows), batch_size):
            chunk = [rows[i] for i in order[start:start + batch_size]]
            batch = {k: ms.Tensor(np.stack([r[k] for r in chunk]).astype(np.int32)) for k in chunk[0]}
            losses.append(float(step(**batch)))
            scheduler.step()
    model.set_train(False)
    return losses


def _token_accuracy(eval_pred):
    logits, labels = eval_pred
    predictions = logits[:, :-1].argmax(-1)
    labels = labels[:, 1:]
    return {"token_accuracy": float((predictions == labels).mean()), "rows": float(len(labels))}


def _train_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_trainer_equals_hand_written_loop(tiny_model_dir, tmp_path, family):
    model_dir, rows, eval_rows = _model_dir(tiny_model_dir, family), _rows(family), _rows(family, n=6, seed=1)
    reference = _lora_model(model_dir, family)
    expected = _hand_written_loop(reference, rows, batch_size=4, epochs=2)
    assert expected[-1] < expected[0]

    common = dict(num_train_epochs=2, learning_rate=LR, max_grad_norm=CLIP, logging_steps=1, seed=SEED,
                  save_strategy="no", disable_tqdm=True, per_device_eval_batch_size=6)
    if family == "gpt2":
        args = TrainingArguments(output_dir=str(tmp_path / "b4"), per_device_train_batch_size=4,
                                 eval_strategy="epoch", **common)
        trainer = Trainer(_lora_model(model_dir, family), args, train_dataset=rows, eval_dataset=eval_rows,
                          compute_metrics=_token_accuracy)
    else:
        args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "b4"), per_device_train_batch_size=4,
                                        eval_strategy="steps", eval_steps=8, predict_with_generate=True,
                                        generation_max_length=5, **common)
        trainer = Seq2SeqTrainer(_lora_model(model_dir, family), args, train_dataset=rows, eval_dataset=eval_rows,
                                 compute_metrics=lambda p: {"exact": float((p.predictions[:, 1:] ==
                                                                            p.label_ids[:, :4]).all(-1).mean())})
    output = trainer.train()
    assert np.abs(np.array(_train_losses(trainer)) - expected).max() < 1e-6
    assert _max_diff(_adapter(trainer.model), _adapter(reference)) < 1e-6
    assert output.global_step == 8 and abs(output.training_loss - np.mean(expected)) < 1e-6
    lrs = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert np.allclose(lrs, [LR * (8 - s) / 8 for s in range(1, 9)])
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == ([4, 8] if family == "gpt2" else [8]) and evals[-1]["epoch"] == 2.0

    batch = {k: ms.Tensor(np.stack([r[k] for r in eval_rows]).astype(np.int32)) for k in eval_rows[0]}
    assert abs(evals[-1]["eval_loss"] - float(reference(**batch)["loss"])) < 1e-5
    if family == "gpt2":
        logits = reference(**batch)["logits"].asnumpy()
        assert evals[-1]["eval_token_accuracy"] == _token_accuracy((logits, batch["labels"].asnumpy()))[
            "token_accuracy"]
        assert evals[-1]["eval_rows"] == 6.0
        saved = str(tmp_path / "final")
        trainer.save_model(saved)
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), saved)
        loaded.set_train(False)
        trainer.model.set_train(False)
        assert np.abs(loaded(**batch)["logits"].asnumpy() - trainer.model(**batch)["logits"].asnumpy()).max() < 1e-6
    else:
        prediction = trainer.predict(eval_rows[:4])
        generated = trainer.model.generate(input_ids=batch["input_ids"][:4], max_new_tokens=4).asnumpy()
        assert np.array_equal(prediction.predictions, generated)
        assert np.array_equal(prediction.label_ids, batch["labels"].asnumpy()[:4])
        assert set(prediction.metrics) >= {"test_loss", "test_exact", "test_runtime"}
        assert "eval_exact" in evals[-1]

    if family == "gpt2":  # accumulating 2 x 2 rows inside the compiled step equals batches of 4
        args = TrainingArguments(output_dir=str(tmp_path / "b2x2"), per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, **common)
        accumulated = Trainer(_lora_model(model_dir, family), args, train_dataset=rows)
        accumulated.train()
        assert np.abs(np.array(_train_losses(accumulated)) - expected).max() < 1e-5
        assert _max_diff(_adapter(accumulated.model), _adapter(reference)) < 1e-5


# ----- checkpoints, rotation, best model, exact resume ----------------------------------------------------------
SCORES = {2: 0.9, 4: 0.5, 6: 0.1}  # "score" of the evaluation at each step: the best is the first


def checkpointing_trainer(model_dir, output_dir, callbacks=()):
    """6 steps with dropout, evaluated and saved every 2, keeping 1 checkpoint plus the best (used in a killed
    subprocess too)."""
    rows = _rows("gpt2", n=12)
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=4, num_train_epochs=2,
                             learning_rate=LR, logging_steps=1, eval_strategy="steps", eval_steps=2,
                             save_strategy="steps", save_steps=2, save_total_limit=1, load_best_model_at_end=True,
                             metric_for_best_model="score", seed=SEED, report_to="tensorboard", disable_tqdm=True)
    holder = {}
    trainer = Trainer(_lora_model(model_dir, "gpt2", dropout=0.1), args, train_dataset=rows,
                      eval_dataset=_rows("gpt2", n=4, seed=1), callbacks=list(callbacks),
                      compute_metrics=lambda _: {"score": SCORES[holder["trainer"].state.global_step]})
    holder["trainer"] = trainer
    return trainer


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    trainer = checkpointing_trainer(tiny_model_dir("gpt2", "causal"), out)
    trainer.train()
    return trainer, out


def _tensorboard_tags(folder):
    """Scalar tags in the TensorBoard event files under ``folder`` (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for root, _, files in os.walk(folder):
        for name in files:
            if "tfevents" not in name:
                continue
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            offset = 0
            while offset < len(data):
                (length,) = struct.unpack("<Q", data[offset:offset + 8])
                event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
                tags.update(v.tag for v in event.summary.value)
                offset += 12 + length + 4
    return tags


def test_checkpoints_rotation_best_model_and_logs(uninterrupted):
    trainer, out = uninterrupted
    best, last = os.path.join(out, "checkpoint-2"), os.path.join(out, "checkpoint-6")
    assert sorted(e for e in os.listdir(out) if e.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-6"]
    assert trainer.state.best_model_checkpoint == best and trainer.state.best_metric == 0.9
    assert trainer.state.best_global_step == 2
    assert _max_diff({k.replace("base_model.model.", "").replace(".default", ""): v
                      for k, v in load_file(os.path.join(best, "adapter_model.safetensors")).items()},
                     {k.replace("base_model.model.", "").replace(".default", ""): v
                      for k, v in _adapter(trainer.model).items()}) == 0

    assert sorted(os.listdir(last)) == ["adapter_config.json", "adapter_model.safetensors", "checksums.json",
                                        "optimizer.ckpt", "rng_state.json", "scheduler.json", "trainer_state.json",
                                        "training_args.json"]
    with open(os.path.join(last, "checksums.json")) as f:
        verify_checksums(last, json.load(f), "checksums.json")
    with open(os.path.join(last, "trainer_state.json")) as f:
        state = json.load(f)
    assert state["global_step"] == 6 and state["best_model_checkpoint"] == best and state["max_steps"] == 6
    history = state["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert [(e["step"], e["eval_score"]) for e in history if "eval_score" in e] == [(2, 0.9), (4, 0.5), (6, 0.1)]
    assert set(history[0]) == {"loss", "grad_norm", "learning_rate", "epoch", "step"}
    assert history == trainer.state.log_history[:len(history)]
    assert set(trainer.state.log_history[-1]) >= {"train_runtime", "train_loss", "train_samples_per_second"}
    with open(os.path.join(last, "scheduler.json")) as f:
        assert json.load(f)["last_epoch"] == 6
    assert {"train/loss", "train/learning_rate", "eval/loss", "eval/score"} <= _tensorboard_tags(
        trainer.args.logging_dir)


def test_kill_9_then_resume_equals_the_uninterrupted_run(uninterrupted, tiny_model_dir, tmp_path):
    reference, reference_out = uninterrupted
    out = str(tmp_path / "run")
    model_dir = tiny_model_dir("gpt2", "causal")
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import test_trainer as t; "
            f"t.checkpointing_trainer({model_dir!r}, {out!r}, [t.KillAt(5)]).train()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert sorted(e for e in os.listdir(out) if e.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]

    resumed = checkpointing_trainer(model_dir, out)
    resumed.train(resume_from_checkpoint=True)
    assert _train_losses(resumed) == _train_losses(reference)
    assert [e for e in resumed.state.log_history if "eval_loss" in e][-1]["eval_loss"] == \
        [e for e in reference.state.log_history if "eval_loss" in e][-1]["eval_loss"]
    for name in ("adapter_model.safetensors", "optimizer.ckpt"):
        with open(os.path.join(out, "checkpoint-6", name), "rb") as a, \
                open(os.path.join(reference_out, "checkpoint-6", name), "rb") as b:
            assert a.read() == b.read(), name
    assert _max_diff(_adapter(resumed.model), _adapter(reference.model)) == 0


def test_resume_errors_name_the_folder(tiny_model_dir, tmp_path):
    trainer = Trainer(_lora_model(tiny_model_dir("gpt2", "causal"), "gpt2"),
                      TrainingArguments(output_dir=str(tmp_path), jit=False, disable_tqdm=True),
                      train_dataset=_rows("gpt2", n=4))
    with pytest.raises(ValueError, match="No valid checkpoint found in output directory"):
        trainer.train(resume_from_checkpoint=True)
    damaged = tmp_path / "checkpoint-3"
    damaged.mkdir()
    (damaged / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match="checkpoint-3: checksums.json is missing"):
        trainer.train(resume_from_checkpoint=str(damaged))


# ----- arguments, data, collators ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"eval_strategy": "sometimes"}, "eval_strategy must be one of"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be an integer >= 1, got 0"),
    ({"learning_rate": -1.0}, "learning_rate must be a number > 0, got -1.0"),
    ({"lr_scheduler_type": "wavy"}, "lr_scheduler_type must be one of"),
    ({"max_steps": 0}, "max_steps must be a positive integer"),
    ({"load_best_model_at_end": True, "eval_strategy": "epoch"},
     "load_best_model_at_end requires the save and eval strategy to match"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 3, "save_steps": 4},
     "save_steps to be a multiple of eval_steps"),
    ({"report_to": "wandb"}, "report_to must be"),
    ({"bf16": True}, "bf16 must be False"),
])
def test_bad_training_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(output_dir="unused", **kwargs)


def test_argument_defaults_follow_transformers():
    args = TrainingArguments(output_dir="x", evaluation_strategy="epoch", load_best_model_at_end=True,
                             save_strategy="epoch")
    assert args.eval_strategy == "epoch" and args.metric_for_best_model == "loss" and not args.greater_is_better
    assert (args.learning_rate, args.per_device_train_batch_size, args.num_train_epochs, args.seed,
            args.lr_scheduler_type, args.max_grad_norm, args.logging_steps) == (5e-5, 8, 3.0, 42, "linear", 1.0, 500)
    assert TrainingArguments(output_dir="x", warmup_ratio=0.1).warmup_for(50) == 5
    assert TrainingArguments(output_dir="x", warmup_steps=0.2).warmup_for(50) == 10


def test_datasets_of_every_shape_give_the_same_rows():
    import mindspore.dataset as ds

    rows = [{"input_ids": np.arange(i, i + 4), "labels": np.array(i)} for i in range(6)]
    columns = {"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]}
    pipeline = ds.NumpySlicesDataset(columns, shuffle=False).batch(4)
    for source in (columns, pipeline, ds.NumpySlicesDataset(columns, shuffle=False)):
        got = dataset_rows(source, "test")
        assert len(got) == 6
        assert all(np.array_equal(g["input_ids"], r["input_ids"]) and int(g["labels"]) == int(r["labels"])
                   for g, r in zip(got, rows))


def test_collators_equal_transformers():
    import torch  # noqa: F401 (transformers' collators return torch tensors)
    import transformers

    ours = Tokenizer.from_pretrained(TOKENIZER_DIR)
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(TOKENIZER_DIR)
    texts = ["a good film", "bad", "not bad at all, really"]
    features = [{"input_ids": ours(t)["input_ids"], "labels": ours(t[::-1])["input_ids"]} for t in texts]
    pairs = [
        (DataCollatorForSeq2Seq(ours), transformers.DataCollatorForSeq2Seq(theirs, return_tensors="np")),
        (DataCollatorForSeq2Seq(ours, pad_to_multiple_of=8),
         transformers.DataCollatorForSeq2Seq(theirs, pad_to_multiple_of=8, return_tensors="np")),
        (DataCollatorForLanguageModeling(ours, mlm=False),
         transformers.DataCollatorForLanguageModeling(theirs, mlm=False, return_tensors="np")),
    ]
    for mine, reference in pairs:
        inputs = features if isinstance(mine, DataCollatorForSeq2Seq) else \
            [{"input_ids": f["input_ids"]} for f in features]
        got, want = mine(inputs), reference(inputs)
        assert sorted(got) == sorted(want)
        for key in got:
            assert np.array_equal(got[key], np.asarray(want[key])), key
    no_labels = [{"input_ids": f["input_ids"]} for f in features]
    got = DataCollatorWithPadding(ours)(no_labels)
    want = transformers.DataCollatorWithPadding(theirs, return_tensors="np")(no_labels)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert (DataCollatorForSeq2Seq(ours)(features)["labels"] == -100).any()
    with pytest.raises(ValueError, match="no mask token.*mlm=False"):
        DataCollatorForLanguageModeling(ours)


# ----- hyper-parameter search ---------------------------------------------------------------------------------
def test_hyperparameter_search_with_optuna_returns_the_best_trial(tiny_model_dir, tmp_path):
    optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install 'mindpeft[optuna]')")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model_dir = tiny_model_dir("gpt2", "causal")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                             learning_rate=1e-3, save_strategy="no", disable_tqdm=True, jit=False, seed=SEED)
    trainer = Trainer(model_init=lambda: _lora_model(model_dir, "gpt2"), args=args, train_dataset=_rows("gpt2", 8),
                      eval_dataset=_rows("gpt2", 4, seed=1))
    study_losses = {}

    def hp_space(trial):
        return {"learning_rate": trial.suggest_categorical("learning_rate", [1e-3, 3e-2])}

    def objective(metrics):
        study_losses[trainer.args.learning_rate] = metrics["eval_loss"]
        return metrics["eval_loss"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.BruteForceSampler(seed=0)  # both learning rates, in some order
    best = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective, n_trials=2,
                                         direction="minimize", sampler=sampler)
    assert len(study_losses) == 2
    winner = min(study_losses, key=study_losses.get)
    assert best.params == {"learning_rate": winner} and best.hyperparameters == best.params
    assert best.objective == study_losses[winner]
    assert trainer.args is args and sorted(os.listdir(tmp_path)) == ["run-0", "run-1"]


def test_adalora_budget_is_allocated_during_training(tiny_model_dir, tmp_path, capsys):
    mindpeft.set_seed(SEED)
    config = AdaLoraConfig(task_type="CAUSAL_LM", init_r=6, target_r=2, tinit=0, tfinal=1, deltaT=1, total_step=4)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")), config)
    assert config.rank_pattern is None
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                             learning_rate=LR, save_strategy="no", logging_steps=2)
    Trainer(model, args, train_dataset=_rows("gpt2", 8)).train()
    pattern = model.peft_config["default"].rank_pattern
    assert pattern and sum(sum(mask) for mask in pattern.values()) == 2 * len(pattern)  # pruned to target_r
    output = capsys.readouterr()
    assert "'loss':" in output.out + output.err and "4/4" in output.err  # logs above a tqdm bar


def test_a_model_holding_adapters_trains_and_reloads_its_best_checkpoint(tiny_model_dir, tmp_path):
    """transformers' integration (``model.add_adapter``) under the Trainer: the same losses as the PeftModel,
    the best checkpoint's adapter reloaded at the end."""
    model_dir, rows, eval_rows = _model_dir(tiny_model_dir, "gpt2"), _rows("gpt2"), _rows("gpt2", n=4, seed=1)
    common = dict(num_train_epochs=3, learning_rate=0.5, per_device_train_batch_size=8, logging_steps=1, seed=SEED,
                  eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True, disable_tqdm=True)
    reference = Trainer(_lora_model(model_dir, "gpt2"), TrainingArguments(output_dir=str(tmp_path / "peft"),
                                                                         **common),
                        train_dataset=rows, eval_dataset=eval_rows)
    reference.train()
    mindpeft.set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    model.add_adapter(LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    evaluations = []

    def first_is_best(_):  # which epoch has the lowest eval loss here turns on rounding
        evaluations.append(None)
        return {"earliness": -len(evaluations)}

    trainer = Trainer(model, TrainingArguments(output_dir=str(tmp_path / "plain"), metric_for_best_model="earliness",
                                               greater_is_better=True, **common),
                      train_dataset=rows, eval_dataset=eval_rows, compute_metrics=first_is_best)
    trainer.train()
    assert np.abs(np.array(_train_losses(trainer)) - _train_losses(reference)).max() < 1e-6
    best = trainer.state.best_model_checkpoint
    assert best == os.path.join(str(tmp_path / "plain"), "checkpoint-2")  # not the last epoch's
    saved = load_file(os.path.join(best, "adapter_model.safetensors"))
    current = model.get_adapter_state_dict()
    assert saved.keys() == {f"base_model.model.{k}" for k in current} or saved.keys() == current.keys()
    for key, value in current.items():
        stored = saved.get(key, saved.get(f"base_model.model.{key}"))
        np.testing.assert_array_equal(value.asnumpy() if hasattr(value, "asnumpy") else value, stored)
