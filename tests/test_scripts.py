"""scripts/train.py trains every method, writes adapter + metrics, and resumes; scripts/bench.py runs tiny.
(Checkpoints, kills and data checks: test_train_checkpoints.py.)"""
import json
import os
import subprocess
import sys

import pytest

from mindpeft import PeftModel
from mindpeft.models import GPT2Config, GPT2ForSequenceClassification, train_word_level_tokenizer
from mindpeft.training import read_csv

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "tutorials", "data", "movie_reviews.csv")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import train  # noqa: E402


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_gpt2_cls"))
    tokenizer = train_word_level_tokenizer([r["sentence"] for r in read_csv(DATA)], eos_token=None)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        pad_token_id=tokenizer.pad_token_id, num_labels=2)
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _args(model, out, method, epochs):
    return ["--method", method, "--model", model, "--data", DATA, "--output-dir", str(out), "--epochs", str(epochs),
            "--max-rows", "96", "--batch-size", "16", "--max-length", "12", "--no-progress", "--lr", "1e-2"]


def test_train_resumes_after_the_last_finished_epoch(tiny_classifier, tmp_path, capsys):
    first = train.main(_args(tiny_classifier, tmp_path, "lora", 1))
    assert [m["epoch"] for m in first] == [0]
    history = train.main(_args(tiny_classifier, tmp_path, "lora", 3))
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'checkpoint-5'}: after epoch 0 (step 5)" in out
    assert "--epochs changed from 1 to 3" in out
    assert [m["epoch"] for m in history] == [0, 1, 2] and history[0] == first[0]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert metrics["task"] == "SEQ_CLS" and metrics["history"] == history
    assert 0.0 <= history[-1]["eval_accuracy"] <= 1.0
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("checkpoint")) == ["checkpoint-10", "checkpoint-15"]
    state = json.load(open(tmp_path / "checkpoint-15" / "trainer_state.json"))
    assert state["global_step"] == 15 and state["epochs_completed"] == 3 and state["history"] == history
    train.main(_args(tiny_classifier, tmp_path, "lora", 3))
    assert "nothing to train" in capsys.readouterr().out
    model = PeftModel.from_pretrained(GPT2ForSequenceClassification.from_pretrained(tiny_classifier),
                                      str(tmp_path / "adapter"))
    assert model.peft_config["default"].peft_type.value == "LORA"
    with pytest.raises(SystemExit, match="--method: 'lora' in the checkpoint, 'ia3' now"):
        train.main(_args(tiny_classifier, tmp_path, "ia3", 4))


@pytest.mark.parametrize("method", ["prefix", "ptuning", "prompt", "ia3", "adalora"])
def test_train_every_method(tiny_classifier, tmp_path, method):
    history = train.main(_args(tiny_classifier, tmp_path, method, 2))
    assert len(history) == 2 and all(m["eval_loss"] > 0 for m in history)
    config = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
    assert config["peft_type"] == {"prefix": "PREFIX_TUNING", "ptuning": "P_TUNING", "prompt": "PROMPT_TUNING",
                                   "ia3": "IA3", "adalora": "ADALORA"}[method]
    if method == "adalora":
        assert config["rank_pattern"]


def test_bench_tiny_prints_every_kind_of_row():
    rows = "gpt2-lora,gpt2-full,gpt2-lora-pynative,gpt2-generate-b1,gpt2-inference"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--tiny", "--steps", "1",
                             "--rows", rows], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "GLOG_v": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ["gpt2 LoRA, 4 x 64", "gpt2 full fine-tune, 4 x 64", "gpt2, batch 1, 32 new tokens",
                "GPT-2 LoRA step / full fine-tune step", "GPT-2 LoRA step, jit speed-up over PyNative",
                "GPT-2 inference (jit), merged LoRA / base model time", "adapter / full checkpoint size"]:
        assert f"| {row}" in result.stdout, row
    assert "MiB |" in result.stdout and "MindSpore 2.10.0" in result.stdout
    # r=8 on c_attn (64 -> 192), attn.c_proj (64 -> 64) and mlp.c_proj (256 -> 64) in 2 layers: 2*8*(256+128+320)
    assert "| trainable parameters | 11,264 of 172,288 (6.538%) |" in result.stdout
