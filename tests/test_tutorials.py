"""Every tutorial runs start to finish (small settings) and its notebook matches its script."""
import os
import re
import subprocess
import sys


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run_tutorial(name, tmp_path, epochs=1, **env):
    script = os.path.join(ROOT, "tutorials", name, f"{name}.py")
    environ = {**os.environ, "TUTORIAL_OUTPUT": str(tmp_path), "TUTORIAL_EPOCHS": str(epochs),
               "TUTORIAL_PROGRESS": "0", "GLOG_v": "3", **env}
    result = subprocess.run([sys.executable, script], env=environ, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_lora_seq2seq_financial_sentiment(tmp_path):
    out = run_tutorial("lora_seq2seq_financial_sentiment", tmp_path, epochs=2)
    epochs = re.findall(r"epoch (\d): train loss ([\d.]+)  eval loss ([\d.]+)  eval ppl ([\d.]+)  "
                        r"eval accuracy ([\d.]+)%", out)
    assert [e[0] for e in epochs] == ["0", "1"]
    assert float(epochs[1][2]) < float(epochs[0][1])  # eval loss below the first epoch's train loss
    assert abs(float(epochs[1][3]) - 2.718281828 ** float(epochs[1][2])) < 1e-2  # perplexity = exp(loss)
    assert "['adapter_config.json', 'adapter_model.safetensors']" in out
    assert re.search(r"-> '(negative|neutral|positive)'", out)


def test_lora_sequence_classification(tmp_path):
    out = run_tutorial("lora_sequence_classification", tmp_path, epochs=3)
    base = float(re.search(r"\| base \| ([\d.]+)% \|", out).group(1))
    lora = float(re.search(r"\| base \+ LoRA \| ([\d.]+)% \|", out).group(1))
    assert lora > base and lora >= 70.0
    assert os.path.isfile(tmp_path / "gpt2-lora-movie-reviews" / "adapter_model.safetensors")


def test_prompt_methods(tmp_path):
    out = run_tutorial("prompt_methods", tmp_path, epochs=2)
    rows = re.findall(r"\| (prompt tuning|prefix tuning|p-tuning) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+)% \| "
                      r"([\d.]+)% \|", out)
    assert [r[0] for r in rows] == ["prompt tuning", "prefix tuning", "p-tuning"]
    for _, trainable, loss, accuracy, reloaded in rows:
        assert accuracy == reloaded  # the saved adapter reproduces the trained model
        assert float(loss) < 0.75


def test_notebooks_match_scripts():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
