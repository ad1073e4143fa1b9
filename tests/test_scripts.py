"""scripts/train.py trains every method into adapters that reload with the evaluated numbers, --nproc 2 (msrun)
ends like one process with the same global batch, scripts/plot_metrics.py draws a run's log history, and
scripts/bench.py runs tiny. (Checkpoints, resuming, kills and data checks: test_train_checkpoints.py.)"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindpeft import PeftModel
from mindpeft.models import GPT2Config, GPT2ForSequenceClassification, Tokenizer, train_word_level_tokenizer
from mindpeft.training import EvalPrediction, default_data_collator, read_csv
from mindpeft.training.trainer import to_tensors
from conftest import finish_launcher

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.path.join(ROOT, "tutorials", "data", "movie_reviews.csv")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import plot_metrics  # noqa: E402
import train  # noqa: E402

MSRUN_TIMEOUT = 400  # seconds the 2-worker run may take before the test kills it and fails
PEFT_TYPES = {"prefix": "PREFIX_TUNING", "ptuning": "P_TUNING", "prompt": "PROMPT_TUNING", "ia3": "IA3",
              "adalora": "ADALORA"}


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A tiny GPT-2 classifier without dropout (so that 2 data-parallel workers can equal one process)."""
    path = str(tmp_path_factory.mktemp("tiny_gpt2_cls"))
    tokenizer = train_word_level_tokenizer([r["sentence"] for r in read_csv(DATA)], eos_token=None)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        pad_token_id=tokenizer.pad_token_id, num_labels=2, attn_pdrop=0.0, embd_pdrop=0.0,
                        resid_pdrop=0.0)
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _args(model, out, method):
    """40 rows: 36 train (2 steps of 16 per epoch, 4 rows left out) and 4 held out (2 per worker), 2 epochs."""
    return ["--method", method, "--model", model, "--data", DATA, "--output-dir", str(out), "--epochs", "2",
            "--max-rows", "40", "--batch-size", "16", "--max-length", "12", "--no-progress", "--lr", "1e-2"]


@pytest.fixture(scope="module")
def trained(tiny_classifier, tmp_path_factory):
    """``trained(method)``: (output folder, per-epoch metrics) of an in-process train.py run, run once."""
    done = {}

    def run(method):
        if method not in done:
            out = tmp_path_factory.mktemp(method)
            done[method] = out, train.main(_args(tiny_classifier, out, method))
        return done[method]

    return run


@pytest.mark.parametrize("method", ["prefix", "ptuning", "prompt", "ia3", "adalora"])
def test_every_method_trains_an_adapter_that_reloads(tiny_classifier, trained, method):
    out, history = trained(method)
    assert [(m["epoch"], m["step"]) for m in history] == [(1, 2), (2, 4)]
    assert json.loads((out / "metrics.json").read_text()) == {"method": method, "task": "SEQ_CLS",
                                                               "history": history}
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == PEFT_TYPES[method]
    if method == "adalora":
        assert config["rank_pattern"]
    # The saved adapter on a fresh base model gives the last evaluation's loss and accuracy on the held-out rows.
    eval_rows = train.prepare(train.parse_args(_args(tiny_classifier, out, method))).eval_rows
    batch = to_tensors(default_data_collator(eval_rows))
    model = PeftModel.from_pretrained(GPT2ForSequenceClassification.from_pretrained(tiny_classifier),
                                      str(out / "adapter"))
    model.set_train(False)
    logits, labels = model(**batch)["logits"].asnumpy().astype(np.float64), batch["labels"].asnumpy()
    assert float((logits.argmax(-1) == labels).mean()) == history[-1]["eval_accuracy"]
    shifted = logits - logits.max(-1, keepdims=True)
    cross_entropy = float(np.mean(np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(len(labels)), labels]))
    if method == "adalora":  # its training loss adds the orthogonal regularisation of the unpruned matrices
        assert history[-1]["eval_loss"] > cross_entropy
    else:
        assert abs(cross_entropy - history[-1]["eval_loss"]) < 1e-5


def _env():
    return {**os.environ, "GLOG_v": "3", "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def test_train_py_runs_quietly(tiny_classifier, tmp_path):
    """At MindSpore's default log level a train.py run prints no warning (deprecations, dataset memory,
    recompilation, fan_in_fan_out) and its metrics."""
    env = {k: v for k, v in _env().items() if k != "GLOG_v"}
    args = _args(tiny_classifier, tmp_path / "run", "lora")
    args[args.index("--epochs") + 1] = "1"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py")] + args, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    noise = [line for line in (result.stdout + result.stderr).splitlines()
             if re.search(r"WARNING|Warning|deprecated", line)]
    assert noise == []
    assert [entry["epoch"] for entry in json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]] == [1]


def test_accuracy_metrics(tiny_classifier):
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert train.classification_accuracy(EvalPrediction(logits, np.array([1, 0, 0]))) == {"accuracy": 2 / 3}
    tokenizer = Tokenizer.from_pretrained(tiny_classifier)
    charming, dull = (list(tokenizer(f"a {word} film")["input_ids"]) for word in ("charming", "dull"))
    pad = tokenizer.pad_token_id
    generated = np.array([[pad, *charming, pad], [pad, *charming, -100]])  # decoder start, ids, padding
    labels = np.array([[*charming, -100, -100], [*dull, -100, -100]])
    assert train.generation_accuracy(tokenizer)(EvalPrediction(generated, labels)) == {"accuracy": 0.5}


def _adapter(out):
    return load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))


def test_nproc_2_equals_one_process_with_the_global_batch(tiny_classifier, trained, tmp_path):
    single, single_history = trained("ia3")
    out = tmp_path / "parallel"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train.py"),
                                *_args(tiny_classifier, out, "ia3"), "--nproc", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True)
    code, output = finish_launcher(process, str(out / "msrun_logs"), MSRUN_TIMEOUT, "train.py --nproc 2")
    assert code == 0, output[-6000:]
    a, b = _adapter(out), _adapter(single)  # batches of 8 rows on each of 2 workers = batches of 16 in one process
    assert a.keys() == b.keys() and max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [(m["epoch"], m["step"]) for m in history] == [(m["epoch"], m["step"]) for m in single_history]
    for got, want in zip(history, single_history):
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-5 for k in got), (got, want)
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]
    assert "rng_state_1.json" in os.listdir(out / "checkpoint-4")  # rank 1's random state, written by rank 0
    assert "worker_1.log" in os.listdir(out / "msrun_logs")


def test_plot_metrics_draws_the_log_history(trained, tmp_path):
    out, _ = trained("ia3")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    series = plot_metrics.metric_series(history)
    assert sorted(series) == ["eval_accuracy", "eval_loss", "learning_rate", "loss"]
    for name, (steps, values) in series.items():
        assert list(zip(steps, values)) == [(e["step"], e[name]) for e in history if name in e] and len(steps) == 2
    assert plot_metrics.panels(series) == [("loss", ["loss", "eval_loss"]), ("learning rate", ["learning_rate"]),
                                           ("accuracy", ["eval_accuracy"])]
    drawn = plot_metrics.plot(series, str(tmp_path / "direct.png"), "test")
    assert drawn == series  # what matplotlib holds in its lines

    png = tmp_path / "curves.png"
    assert plot_metrics.main([str(out), "--output", str(png)]) == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (800, 3 * 300)  # 8 x 3 inches per panel at 100 dpi, 3 panels

    # Without OUTPUT/trainer_state.json the newest checkpoint's is drawn.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    os.remove(copy / "trainer_state.json")
    assert plot_metrics.state_file(str(copy)) == str(copy / "checkpoint-4" / "trainer_state.json")
    assert plot_metrics.main([str(copy)]) == str(copy / "metrics.png") and (copy / "metrics.png").is_file()


def test_plot_metrics_errors_name_the_file(tmp_path):
    with pytest.raises(SystemExit, match=r"empty/trainer_state.json does not exist"):
        plot_metrics.main([str(tmp_path / "empty")])
    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path}/trainer_state.json is not a readable JSON file")):
        plot_metrics.main([str(tmp_path)])
    (tmp_path / "trainer_state.json").write_text('{"global_step": 3}')
    with pytest.raises(SystemExit, match=r"trainer_state.json holds no log_history list"):
        plot_metrics.main([str(tmp_path)])
    (tmp_path / "trainer_state.json").write_text('{"log_history": [{"train_runtime": 1.0, "step": 3}]}')
    with pytest.raises(SystemExit, match=r"trainer_state.json logs no loss, learning rate or evaluation metric"):
        plot_metrics.main([str(tmp_path)])


def test_bench_tiny_prints_every_kind_of_row():
    rows = "gpt2-lora,gpt2-full,gpt2-lora-pynative,gpt2-generate-b1,gpt2-inference"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--tiny", "--steps", "1",
                             "--rows", rows], capture_output=True, text=True, timeout=600, env=_env())
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ["gpt2 LoRA, 4 x 64", "gpt2 full fine-tune, 4 x 64", "gpt2, batch 1, 32 new tokens",
                "GPT-2 LoRA step / full fine-tune step", "GPT-2 LoRA step, jit speed-up over PyNative",
                "GPT-2 inference (jit), merged LoRA / base model time", "adapter / full checkpoint size"]:
        assert f"| {row}" in result.stdout, row
    assert "MiB |" in result.stdout and "MindSpore 2.10.0" in result.stdout
    # r=8 on c_attn (64 -> 192), attn.c_proj (64 -> 64) and mlp.c_proj (256 -> 64) in 2 layers: 2*8*(256+128+320)
    assert "| trainable parameters | 11,264 of 172,288 (6.538%) |" in result.stdout


def test_bench_big_rows_tiny(tmp_path):
    """The --big rows (issue 15's table) on a 2-layer LLaMA: a checkpoint written once, each precision loaded from it,
    the table and the three target ratios printed."""
    rows = "1b-fp32-lora,1b-fp32-lora-checkpointing,1b-4bit-lora"
    command = [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--big", "--tiny", "--rows", rows,
               "--big-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.listdir(tmp_path) == ["llama-tiny-2-layers"]
    lines = {line.split(" | ")[0].lstrip("| "): line for line in result.stdout.splitlines() if line.startswith("| ")}
    four_bit = lines["4-bit NF4 double-quant + LoRA (+ checkpointing, prepare_model_for_kbit_training)"]
    fp32 = lines["fp32 + LoRA"]
    # weights: 4-bit projections are 0.516 bytes a value (codes, 8-bit scales, nested scales) against 4
    projection = [float(line.split(" | ")[2]) for line in (four_bit, fp32)]
    assert projection[0] < 0.16 * projection[1]
    assert "4-bit projection weights / fp32: 12.9 % (target <= 16 %)" in result.stdout
    assert "4-bit + LoRA training peak / fp32 + LoRA training peak:" in result.stdout
    assert "gradient checkpointing: training memory above the model" in result.stdout
