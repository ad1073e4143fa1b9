"""scripts/train.py checkpoints: killed (SIGKILL, Ctrl-C) and resumed runs end bit for bit like an uninterrupted one,
only complete checkpoints are ever visible, damaged ones are skipped, other settings refused, bad data refused
before training."""
import contextlib
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindpeft.training.data import load_csv

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TRAIN = os.path.join(ROOT, "scripts", "train.py")
DATA = os.path.join(ROOT, "tutorials", "data", "movie_reviews.csv")
MODEL = os.path.join(ROOT, "tutorials", "data", "tiny-gpt2-reviews")  # n_positions 64, num_labels 2
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import train  # noqa: E402

STEPS = 8

# 40 rows: 36 train / 4 eval, 4 steps of 8 per epoch, 8 steps in 2 epochs; checkpoints at steps 4, 6 (mid-epoch)
# and 8, of which --save-total-limit 2 keeps 6 and 8.


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
    return sorted(int(name.split("-")[1]) for name in os.listdir(out) if train.CHECKPOINT_RE.match(name))


def _assert_visible_checkpoints_complete(out):
    """Every checkpoint-<step> folder present passes the resume checks (a folder deleted meanwhile is skipped)."""
    if not os.path.isdir(out):
        return
    for step in _checkpoints(out):
        path = os.path.join(out, f"checkpoint-{step}")
        try:
            state = train.check_checkpoint_files(path)
        except (train.CheckpointError, FileNotFoundError):
            if os.path.isdir(path):
                raise
            continue
        assert state["global_step"] == step


class Run:
    """train.py in a subprocess, its output in a file."""

    def __init__(self, tmp_path, out, name, env=None):
        self.log = tmp_path / f"{name}.log"
        self.out = str(out)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, TRAIN, *_args(out)], stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "GLOG_v": "3", **(env or {})})

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
        while self.proc.poll() is None:
            _assert_visible_checkpoints_complete(self.out)
            time.sleep(0.01)
        self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def _temporaries(out, step):
    prefix = f".checkpoint-{step}.mindpeft-"
    return [name for name in os.listdir(out) if name.startswith(prefix)] if os.path.isdir(out) else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (in-process) into a folder holding an old-layout checkpoint and a dead run's temporary
    folder, which it ignores: (output folder, adapter tensors, metrics)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "trainer_state.json").write_text('{"method": "lora", "epoch": 7, "global_step": 99}')
    (out / "optimizer.ckpt").write_bytes(b"junk")
    stale = out / ".checkpoint-8.mindpeft-999999999-new-0123abcd"
    stale.mkdir()
    (stale / "trainer_state.json").write_text("{}")
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        history = train.main(_args(out))
    log = capture.getvalue()
    assert "ignoring" in log and "older train.py" in log and "resuming" not in log
    assert [m["epoch"] for m in history] == [0, 1] and not stale.exists()
    assert _checkpoints(out) == [6, 8]
    _assert_visible_checkpoints_complete(out)
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS and state["epochs_completed"] == 2 and state["history"] == history
    assert state["args"]["r"] == 8 and state["args"]["epochs"] == 2
    mid = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert (mid["epochs_completed"], mid["step_in_epoch"], len(mid["epoch_losses"])) == (1, 2, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"] == history
    return out, _adapter(out), metrics


def test_sigkill_after_a_checkpoint_resumes_exactly(reference, tmp_path):
    out = tmp_path / "out"
    run = Run(tmp_path, out, "killed")
    run.wait_until(lambda: os.path.isdir(out / "checkpoint-4"))
    run.kill()
    assert _checkpoints(out) in ([4], [4, 6], [6, 8])
    _assert_visible_checkpoints_complete(out)
    resumed = Run(tmp_path, out, "resumed")
    assert resumed.finish() == 0, resumed.output()[-3000:]
    assert "resuming from" in resumed.output()
    _assert_same_adapter(_adapter(out), reference[1])
    assert json.loads((out / "metrics.json").read_text()) == reference[2]


def test_sigkill_in_a_checkpoint_write_then_ctrl_c_mid_epoch(reference, tmp_path):
    out = tmp_path / "out"
    # Killed while checkpoint-4 is still a temporary folder: nothing counts as a checkpoint.
    run = Run(tmp_path, out, "killed", env={train.CHECKPOINT_DELAY_ENV: "2"})
    run.wait_until(lambda: _temporaries(out, 4))
    run.kill()
    assert _checkpoints(out) == [] and _temporaries(out, 4)

    # The next run starts over (ignoring and removing the temporary folder); Ctrl-C after the mid-epoch checkpoint.
    run = Run(tmp_path, out, "interrupted")
    run.wait_until(lambda: os.path.isdir(out / "checkpoint-6"))
    assert run.kill(signal.SIGINT) == 130
    log = run.output()
    assert "resuming" not in log and not _temporaries(out, 4)
    assert "the last complete checkpoint is" in log and "To resume, run the same command:" in log
    assert f"--output-dir {out}" in log.split("To resume, run the same command:")[1]
    assert _checkpoints(out) == [4, 6] and not any(name.startswith(".") and "mindpeft" in name
                                                    for name in os.listdir(out))

    resumed = Run(tmp_path, out, "resumed")
    assert resumed.finish() == 0, resumed.output()[-3000:]
    assert f"resuming from {out / 'checkpoint-6'}: epoch 1, step 2 of 4 (step 6)" in resumed.output()
    _assert_same_adapter(_adapter(out), reference[1])
    assert json.loads((out / "metrics.json").read_text()) == reference[2]
    assert _checkpoints(out) == [6, 8]


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_damaged_checkpoints_fall_back(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    _truncate(out / "checkpoint-8" / "optimizer.ckpt")
    assert train.main(_args(out)) == reference[2]["history"]
    log = capsys.readouterr().out
    assert f"checkpoint {out / 'checkpoint-8'} is damaged: optimizer.ckpt is " in log
    assert "falling back to the previous checkpoint" in log
    assert f"resuming from {out / 'checkpoint-6'}: epoch 1, step 2 of 4 (step 6)" in log
    assert (out / "damaged-checkpoint-8").is_dir() and _checkpoints(out) == [6, 8]
    _assert_same_adapter(_adapter(out), reference[1])

    _truncate(out / "checkpoint-8" / "adapter_model.safetensors")
    (out / "checkpoint-6" / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="every checkpoint in .* is damaged"):
        train.main(_args(out))
    log = capsys.readouterr().out
    assert "adapter_model.safetensors is " in log and "must hold a JSON object, found list" in log


@pytest.mark.parametrize("extra, message", [
    (["--r", "4"], r"--r: 8 in the checkpoint, 4 now"),
    (["--lr", "0.02", "--seed", "3"], r"--lr: 0.01 in the checkpoint, 0.02 now\n  --seed: 0 in the checkpoint, 3 now"),
    (["--max-length", "10"], r"--max-length: 12 in the checkpoint, 10 now"),
    (["--batch-size", "4"], r"--batch-size: 8 in the checkpoint, 4 now"),
    (["--method", "ia3"], r"--method: 'lora' in the checkpoint, 'ia3' now"),
    (["--max-rows", "30"], r"--max-rows: 40 in the checkpoint, 30 now"),
])
def test_resume_with_other_settings_is_refused(reference, tmp_path, extra, message):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    args = _with(_args(out, 3), extra)
    with pytest.raises(SystemExit, match=message + r"[\s\S]*Run with the checkpoint's settings"):
        train.main(args)
    assert _checkpoints(out) == [6, 8]


def test_resume_with_other_data_is_refused_the_same_rows_elsewhere_resume(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    shutil.rmtree(out / "adapter")
    rows = _data_lines()
    other = _csv(tmp_path, "".join([rows[0], rows[2], rows[1], *rows[3:]]), "other.csv")  # two rows swapped
    args = _args(out)
    args[args.index("--data") + 1] = other
    with pytest.raises(SystemExit, match=r"--data: '.*movie_reviews.csv \(rows checksum \w+\)' in the checkpoint, "
                                         r"'.*other.csv \(rows checksum \w+\)' now"):
        train.main(args)
    args[args.index("--data") + 1] = _csv(tmp_path, "".join(rows), "same.csv")
    assert train.main(args) == reference[2]["history"]
    log = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-8'}: after epoch 1 (step 8)" in log and "nothing to train" in log
    _assert_same_adapter(_adapter(out), reference[1])  # the final adapter, rewritten from the checkpoint


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
])
def test_bad_data_is_refused_before_training(tmp_path, content, extra, message):
    out = tmp_path / "out"
    args = _with(_args(out, 1), ["--data", _csv(tmp_path, content), *extra])
    with pytest.raises(SystemExit, match=message):
        train.main(args)
    assert not out.exists()


def test_missing_data_file_and_output_dir_that_is_a_file(tmp_path):
    args = _args(tmp_path / "out", 1)
    args[args.index("--data") + 1] = str(tmp_path / "missing.csv")
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
    args = _args(out, 1, "--task", "causal_lm")
    args[args.index("--data") + 1] = path
    args[args.index("--max-rows") + 1] = "20"
    history = train.main(args)
    assert len(history) == 1 and "eval_accuracy" not in history[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "CAUSAL_LM"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("checkpoints kept (0: all) (default: 2)", "(default: 3)", "(default: 0.005)",
                     "{causal_lm,seq2seq,seq_cls}"):
        assert expected in text
