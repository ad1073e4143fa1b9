"""scripts/train.py on mindpeft.Trainer: runs killed (SIGKILL, also inside a checkpoint write) or stopped (Ctrl-C)
resume and end bit for bit like an uninterrupted run, only complete checkpoints are ever visible, damaged ones are
skipped, other settings refused, bad data refused before training, one run per output folder."""
import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindpeft import LoraConfig, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from mindpeft.training import Trainer, TrainingArguments
from mindpeft.training.checkpoint import CHECKPOINT_RE, CheckpointError, folder_checksums
from mindpeft.training.data import load_csv
from mindpeft.training.trainer import check_checkpoint

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TRAIN = os.path.join(ROOT, "scripts", "train.py")
DATA = os.path.join(ROOT, "tutorials", "data", "movie_reviews.csv")
MODEL = os.path.join(ROOT, "tutorials", "data", "tiny-gpt2-reviews")  # n_positions 64, num_labels 2, dropout 0.1
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import train  # noqa: E402

# 40 rows: 36 train / 4 eval, 4 steps of 8 per epoch, 8 steps in 2 epochs; checkpoints at steps 4, 6 (mid-epoch)
# and 8, of which --save-total-limit 2 keeps 6 and 8.
STEPS = 8
# train.py in a subprocess whose checkpoint writes take 2 s more (the tokenizer is the last file written).
SLOW_CHECKPOINTS = ("import sys, time; sys.path.insert(0, {scripts!r}); import train; "
                    "from mindpeft.training.trainer import Trainer; write = Trainer._write_model; "
                    "Trainer._write_model = lambda self, folder: (write(self, folder), time.sleep(2)); "
                    "train.main(sys.argv[1:])").format(scripts=os.path.join(ROOT, "scripts"))


def _args(out, epochs=2, *extra):
    return ["--method", "lora", "--model", MODEL, "--data", DATA, "--output-dir", str(out), "--epochs", str(epochs),
            "--max-rows", "40", "--batch-size", "8", "--max-length", "12", "--lr", "1e-2", "--save-steps", "6",
            "--save-total-limit", "2", "--no-progress", *extra]


def _data_lines():
    with open(DATA, encoding="utf-8") as f:
        return f.readlines()


def _with(args, extra):
    """``args`` with the options in ``extra`` (a flat list) set."""
    args = list(args)
    for option, value in zip(extra[::2], extra[1::2]):
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    return args


def _adapter(out):
    return load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))


def _assert_same_adapter(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _checkpoints(out):
    return sorted(int(name.split("-")[1]) for name in os.listdir(out) if CHECKPOINT_RE.match(name))


def _assert_visible_checkpoints_complete(out):
    """Every checkpoint-<step> folder present passes the resume checks (a folder deleted meanwhile is skipped)."""
    if not os.path.isdir(out):
        return
    for step in _checkpoints(out):
        path = os.path.join(out, f"checkpoint-{step}")
        try:
            state = check_checkpoint(path)
        except (CheckpointError, FileNotFoundError):
            if os.path.isdir(path):
                raise
            continue
        assert state.global_step == step


def _env():
    return {**os.environ, "GLOG_v": "3", "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


class Run:
    """train.py in a subprocess, its output in a file."""

    def __init__(self, tmp_path, out, name, slow_checkpoints=False):
        self.log = tmp_path / f"{name}.log"
        self.out = str(out)
        command = ["-c", SLOW_CHECKPOINTS] if slow_checkpoints else [TRAIN]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, *command, *_args(out)], stdout=log,
                                         stderr=subprocess.STDOUT, env=_env())

    def output(self):
        return self.log.read_text()

    def wait_until(self, predicate, timeout=300):
        """Poll ``predicate`` (checking that visible checkpoints are complete) until it holds; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            assert self.proc.poll() is None, f"train.py ended early:\n{self.output()[-3000:]}"
            _assert_visible_checkpoints_complete(self.out)
            time.sleep(0.005)
        self.proc.kill()
        raise AssertionError(f"timed out:\n{self.output()[-3000:]}")

    def finish(self, timeout=300):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            _assert_visible_checkpoints_complete(self.out)
            time.sleep(0.01)
        self.proc.kill()
        return self.proc.wait()

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def _temporaries(out, step):
    prefix = f".checkpoint-{step}.mindpeft-"
    return [name for name in os.listdir(out) if name.startswith(prefix)] if os.path.isdir(out) else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (in-process) into a folder holding a dead run's temporary checkpoint folder, which it
    removes, and stray optimizer/state files, which it does not resume from: (output folder, adapter tensors,
    metrics.json)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    stale = out / ".checkpoint-8.mindpeft-999999999-new-0123abcd"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    (out / "optimizer.ckpt").write_bytes(b"stray")  # an older train.py's in-place files: never read
    (out / "trainer_state.json").write_text('{"global_step": 4, "epoch": 1.0}')
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        history = train.main(_args(out))
    assert "resuming" not in capture.getvalue() and not stale.exists()
    assert [(m["epoch"], m["step"]) for m in history] == [(1, 4), (2, 8)]
    assert all(set(m) == {"epoch", "step", "train_loss", "eval_loss", "eval_accuracy"} for m in history)
    assert _checkpoints(out) == [6, 8]
    _assert_visible_checkpoints_complete(out)
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS and state["max_steps"] == STEPS and state["epoch"] == 2.0
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert [(e["step"], e["eval_loss"], e["eval_accuracy"]) for e in evals] == \
        [(m["step"], m["eval_loss"], m["eval_accuracy"]) for m in history]
    settings = state["stateful_callbacks"]["RunSettings"]["args"]["settings"]
    assert (settings["--r"], settings["--epochs"], settings["--method"], settings["--task"]) == (8, 2, "lora",
                                                                                                 "seq_cls")
    mid = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert (mid["global_step"], mid["epoch"], mid["loss_sums"]["steps_since_log"]) == (6, 1.5, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"method": "lora", "task": "SEQ_CLS", "history": history}
    final = json.loads((out / "trainer_state.json").read_text())
    assert final["log_history"][:-1] == state["log_history"] and "train_runtime" in final["log_history"][-1]
    return out, _adapter(out), metrics


def test_killed_and_interrupted_runs_resume_exactly(reference, tmp_path):
    out = tmp_path / "out"
    # Killed while checkpoint-4 is still a temporary folder: nothing counts as a checkpoint.
    run = Run(tmp_path, out, "killed-in-write", slow_checkpoints=True)
    run.wait_until(lambda: _temporaries(out, 4))
    run.kill()
    assert _checkpoints(out) == [] and _temporaries(out, 4)

    # The next run starts over (removing the temporary folder); Ctrl-C after checkpoint-4 stops it after the step
    # in progress, with exit status 130 and the command to resume.
    run = Run(tmp_path, out, "interrupted")
    run.wait_until(lambda: os.path.isdir(out / "checkpoint-4"))
    assert run.kill(signal.SIGINT) == 130
    log = run.output()
    assert "resuming" not in log and not _temporaries(out, 4) and _checkpoints(out) == [4]
    assert f"the last complete checkpoint is {out / 'checkpoint-4'} (step 4)" in log
    assert f"--output-dir {out}" in log.split("To resume, run the same command:")[1]
    assert not any(name.startswith(".") and "mindpeft" in name for name in os.listdir(out))

    # Resumed, then killed (SIGKILL) after the mid-epoch checkpoint-6.
    run = Run(tmp_path, out, "killed")
    run.wait_until(lambda: os.path.isdir(out / "checkpoint-6"))
    run.kill()
    assert f"resuming from {out / 'checkpoint-4'} (step 4)" in run.output()
    assert _checkpoints(out) in ([4, 6], [6, 8])
    _assert_visible_checkpoints_complete(out)

    resumed = Run(tmp_path, out, "resumed")
    assert resumed.finish() == 0, resumed.output()[-3000:]
    assert "resuming from" in resumed.output()
    _assert_same_adapter(_adapter(out), reference[1])
    assert json.loads((out / "metrics.json").read_text()) == reference[2]
    assert _checkpoints(out) == [6, 8]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_damaged_checkpoints_fall_back(reference, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    _truncate(out / "checkpoint-8" / "optimizer.ckpt")
    with caplog.at_level(logging.WARNING):
        assert train.main(_args(out)) == reference[2]["history"]
    assert f"Checkpoint {out / 'checkpoint-8'} is damaged (optimizer.ckpt is " in caplog.text
    assert f"resuming from {out / 'checkpoint-6'} (step 6)" in capsys.readouterr().out
    assert _checkpoints(out) == [6, 8]  # checkpoint-8 written again
    _assert_visible_checkpoints_complete(out)
    _assert_same_adapter(_adapter(out), reference[1])

    _truncate(out / "checkpoint-8" / "adapter_model.safetensors")
    (out / "checkpoint-6" / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match=r"every checkpoint is damaged \(checkpoint-8: adapter_model.safetensors is "
                                         r"\d+ bytes, .*; checkpoint-6: trainer_state.json is 6 bytes"):
        train.main(_args(out))


@pytest.mark.parametrize("extra, message", [
    (["--r", "4"], r"--r: 8 in the checkpoint, 4 now"),
    (["--lr", "0.02", "--seed", "3"], r"--lr: 0.01 in the checkpoint, 0.02 now\n  --seed: 0 in the checkpoint, 3 now"),
    (["--max-length", "10"], r"--max-length: 12 in the checkpoint, 10 now"),
    (["--batch-size", "4"], r"--batch-size: 8 in the checkpoint, 4 now"),
    (["--method", "ia3"], r"--method: 'lora' in the checkpoint, 'ia3' now"),
    (["--max-rows", "30"], r"--max-rows: 40 in the checkpoint, 30 now"),
    (["--max-grad-norm", "0.5"], r"--max-grad-norm: 1.0 in the checkpoint, 0.5 now"),
])
def test_resume_with_other_settings_is_refused(reference, tmp_path, extra, message):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    with pytest.raises(SystemExit, match=message + r"[\s\S]*Run with the checkpoint's settings"):
        train.main(_with(_args(out, 3), extra))
    assert _checkpoints(out) == [6, 8]


def test_resume_with_other_data_is_refused_the_same_rows_elsewhere_resume(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    shutil.rmtree(out / "adapter")
    rows = _data_lines()
    other = _csv(tmp_path, "".join([rows[0], rows[2], rows[1], *rows[3:]]), "other.csv")  # two rows swapped
    args = _with(_args(out), ["--data", other])
    with pytest.raises(SystemExit, match=r"--data: '.*movie_reviews.csv \(rows checksum \w+\)' in the checkpoint, "
                                         r"'.*other.csv \(rows checksum \w+\)' now"):
        train.main(args)
    args = _with(args, ["--data", _csv(tmp_path, "".join(rows), "same.csv")])
    assert train.main(args) == reference[2]["history"]
    log = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-8'} (step 8)" in log and "nothing to train" in log
    _assert_same_adapter(_adapter(out), reference[1])  # the final adapter, rewritten from the checkpoint


def test_more_epochs_continue_the_run(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    history = train.main(_args(out, 3))
    log = capsys.readouterr().out
    assert "--epochs changed from 2 to 3" in log and f"resuming from {out / 'checkpoint-8'} (step 8)" in log
    assert history[:2] == reference[2]["history"] and [m["step"] for m in history] == [4, 8, 12]
    assert _checkpoints(out) == [8, 12]


def test_a_checkpoint_without_train_settings_is_refused(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    checkpoint = out / "checkpoint-8"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["stateful_callbacks"] = {}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (checkpoint / "checksums.json").write_text(json.dumps(folder_checksums(checkpoint, skip=("checksums.json",))))
    with pytest.raises(SystemExit, match=r"checkpoint-8 holds no train.py settings"):
        train.main(_args(out))


def _csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


GOOD = "".join(_data_lines()[:21])


@pytest.mark.parametrize("content, extra, message", [
    ("text,score\nfine film,1\nbad film,0\n", [], r"has no label column 'label' \(--label-column\); its columns are "
                                                 r"'text', 'score'.*--task causal_lm"),
    (GOOD, ["--label-column", "stars", "--task", "seq_cls"],
     r"has no column 'stars' \(--label-column\); its columns are 'sentence', 'label'"),
    (GOOD, ["--text-column", "review"], r"has no column 'review' \(--text-column\); its columns are 'sentence', "
                                        r"'label'"),
    ("sentence,label\ngreat,1\nawful,pos\n", [], r"line 3: label 'pos' in column 'label' is not an integer"),
    ("sentence,label\ngreat,1\nawful,-1\n", [], r"line 3: label -1 in column 'label' is out of range"),
    ("sentence,label\ngreat,2\nawful,0\n", [], r"line 2: label 2 in column 'label' is out of range: the model has "
                                               r"num_labels=2, so labels must be 0 to 1"),
    ("sentence,label\ngreat,1.5\nawful,0\n", [], r"line 2: label '1.5' .* is not an integer"),
    ("sentence,label\n\"a\nb\",1\n,0\n", [], r"line 4: column 'sentence' is empty"),
    ("sentence,label\ngreat,1,extra\nawful,0\n", [], r"line 2: 3 fields, but the header has 2 columns"),
    (b"sentence,label\ngreat,1\ncaf\xe9 ok,0\n", [], r"is not UTF-8 text: line 3 holds the byte b'\\xe9'"),
    ("sentence,label\ngreat,1\n", [], r"has only 1 data row: at least 2 are needed"),
    (GOOD, ["--max-rows", "1"], r"has only 1 data row \(--max-rows 1\)"),
    ("sentence,label\n", [], r"has no data rows"),
    ("", [], r"is empty: expected a header row"),
    ("\n\n", [], r"is empty"),
    ("sentence,sentence\na,b\nc,d\n", [], r"names the column\(s\) \['sentence'\] more than once"),
    (GOOD, ["--max-length", "65"], r"--max-length 65 is more than the 64 positions of the model's position table "
                                   r"\(n_positions in .*config.json\); use --max-length 64 or less"),
    (GOOD, ["--method", "prompt", "--max-length", "60"], r"--max-length 60 \+ --num-virtual-tokens 8 is more than "
                                                         r"the 64 positions"),
    (GOOD, ["--task", "seq2seq"], r"is a 'gpt2' model, which cannot do task seq2seq"),
    (GOOD, ["--epochs", "0"], r"--epochs must be at least 1, got 0"),
    (GOOD, ["--lr", "0"], r"--lr must be positive"),
    (GOOD, ["--max-grad-norm", "-1"], r"--max-grad-norm must be 0 or more, got -1.0"),
    (GOOD, ["--batch-size", "7", "--nproc", "2"], r"--batch-size 7 does not split evenly over --nproc 2 workers"),
])
def test_bad_data_is_refused_before_training(tmp_path, content, extra, message):
    out = tmp_path / "out"
    args = _with(_args(out, 1), ["--data", _csv(tmp_path, content), *extra])
    with pytest.raises(SystemExit, match=message):
        train.main(args)
    assert not out.exists()


def test_missing_data_file_and_output_dir_that_is_a_file(tmp_path):
    args = _with(_args(tmp_path / "out", 1), ["--data", str(tmp_path / "missing.csv")])
    with pytest.raises(SystemExit, match=r"missing.csv: no such file"):
        train.main(args)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit, match=r"--output-dir .*taken is an existing file, not a folder"):
        train.main(_args(tmp_path / "taken", 1))
    assert not (tmp_path / "out").exists()


def test_a_second_run_on_the_same_output_dir_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / train.LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit, match="another train.py run is writing to"):
            train.main(_args(out, 1))
    assert _checkpoints(out) == []


def test_bom_header_is_accepted_and_causal_lm_needs_no_labels(tmp_path):
    path = _csv(tmp_path, "\ufeff" + GOOD)
    table = load_csv(path)
    assert table.columns == ["sentence", "label"] and len(table) == 20 and table.lines[:2] == [2, 3]
    out = tmp_path / "out"
    history = train.main(_with(_args(out, 1, "--task", "causal_lm"), ["--data", path, "--max-rows", "20"]))
    assert len(history) == 1 and "eval_accuracy" not in history[0] and history[0]["eval_loss"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "CAUSAL_LM"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("checkpoints kept (0: all) (default: 2)", "(default: 3)", "(default: 0.005)",
                     "{causal_lm,seq2seq,seq_cls}", "worker processes (started with msrun) (default: 1)"):
        assert expected in text


def test_damaged_model_folder_and_uncreatable_output_dir_are_refused(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"train.py: error: .*model.safetensors is not a readable safetensors file"):
        train.main(_with(_args(tmp_path / "out", 1), ["--model", str(model)]))
    assert _checkpoints(tmp_path / "out") == []
    os.remove(model / "tokenizer.json")
    with pytest.raises(SystemExit, match=r"train.py: error: No tokenizer.json in"):
        train.main(_with(_args(tmp_path / "out2", 1), ["--model", str(model)]))
    assert not (tmp_path / "out2").exists()
    with pytest.raises(SystemExit, match=r"cannot create --output-dir .*movie_reviews.csv/out: Not a directory"):
        train.main(_args(os.path.join(DATA, "out"), 1))


def _rows(labels, per_token=False, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for label in labels:
        ids = rng.integers(3, 30, 6).astype(np.int32)
        rows.append({"input_ids": ids, "attention_mask": np.ones(6, np.int32),
                     "labels": np.full(6, label) if per_token else np.array(label)})
    return rows


@pytest.mark.parametrize("head, train_rows, eval_rows, message", [
    ("seq_cls", _rows([0, 1, -1, 1]), None,
     r"The training set row 2: labels must be in \[0, 2\) or -100 \(ignored\) \(num_labels=2 of "
     r"GPT2ForSequenceClassification\), got -1"),
    ("seq_cls", _rows([0, 1, 0, 2]), None, r"The training set row 3: labels must be in \[0, 2\) .*got 2"),
    ("seq_cls", [{**row, "labels": np.float32(0.5)} for row in _rows([0, 1])], None,
     r"labels must be whole-number indices, got 0.5 \(float labels of multi-label classification are not "
     r"supported\)"),
    ("seq_cls", _rows([0, 1, -100, 1]), _rows([1, 5]), r"The evaluation set row 1: labels must be in \[0, 2\)"),
    ("causal", _rows([5, 200], per_token=True), None,
     r"The training set row 1: labels must be in \[0, 39\) or -100 \(ignored\) \(vocab_size=39\), got 200"),
    ("causal", [{**row, "input_ids": np.r_[row["input_ids"][:5], 39]} for row in _rows([5, 5], per_token=True)],
     None, r"The training set row 0: input_ids must be in \[0, 39\) \(vocab_size=39\), got 39"),
], ids=["label -1", "label 2 of 2 classes", "label 0.5", "evaluation label", "token label", "token id"])
def test_trainer_refuses_out_of_range_ids_and_labels_before_training(tmp_path, head, train_rows, eval_rows,
                                                                     message):
    """The compiled step cannot check values: without the Trainer's check a label of -1 trained the last class and
    other values failed deep in a GatherD kernel. Refused before any step: no weight changes, nothing written."""
    auto = AutoModelForSequenceClassification if head == "seq_cls" else AutoModelForCausalLM
    task = "SEQ_CLS" if head == "seq_cls" else "CAUSAL_LM"
    model = get_peft_model(auto.from_pretrained(MODEL), LoraConfig(task_type=task, r=2))
    weights = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_train_epochs=1,
                             eval_strategy="epoch" if eval_rows else "no", disable_tqdm=True, report_to=[])
    trainer = Trainer(model, args, train_dataset=train_rows, eval_dataset=eval_rows)
    with pytest.raises(ValueError, match=message):
        trainer.train() if eval_rows is None else trainer.evaluate()
    assert trainer.state.global_step == 0 and not (tmp_path / "out").exists()
    assert all(np.array_equal(p.asnumpy(), weights[p.name]) for p in model.trainable_params())
