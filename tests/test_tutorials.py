"""Every tutorial runs start to finish (small settings) without a warning, and its notebook matches its script and
ships with the outputs of a run."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import make_notebooks  # noqa: E402

TUTORIALS = ["lora_seq2seq_financial_sentiment", "lora_sequence_classification", "prompt_methods",
             "lora_image_classification", "lora_semantic_segmentation", "prompt_tuning_causal_lm"]
# MindSpore logs warnings as "[WARNING] ME(...)"; Python warnings read "...Warning: ..."
WARNING = re.compile(r"WARNING|Warning|deprecated")


def run_tutorial(name, tmp_path, epochs=1, **env):
    script = os.path.join(ROOT, "tutorials", name, f"{name}.py")
    environ = {**os.environ, "TUTORIAL_OUTPUT": str(tmp_path), "TUTORIAL_EPOCHS": str(epochs),
               "TUTORIAL_PROGRESS": "0", **env}
    environ.pop("GLOG_v", None)  # MindSpore's default log level: warnings are shown, and must not appear
    result = subprocess.run([sys.executable, script], env=environ, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if WARNING.search(line)]
    assert not warnings, "\n".join(warnings)
    return result.stdout


def test_lora_seq2seq_financial_sentiment(tmp_path):
    out = run_tutorial("lora_seq2seq_financial_sentiment", tmp_path, epochs=2)
    epochs = re.findall(r"epoch (\d): train loss ([\d.]+)  eval loss ([\d.]+)  eval ppl ([\d.]+)  "
                        r"eval accuracy ([\d.]+)%", out)
    assert [e[0] for e in epochs] == ["0", "1"]
    assert float(epochs[1][2]) < float(epochs[0][1])  # eval loss below the first epoch's train loss
    assert abs(float(epochs[1][3]) - 2.718281828 ** float(epochs[1][2])) < 1e-2  # perplexity = exp(loss)
    assert float(epochs[1][4]) > 85.0  # well above the majority class (39 %) after two epochs already
    assert "['adapter_config.json', 'adapter_model.safetensors']" in out
    assert "in the first quarter .' -> 'positive'" in out  # the reloaded adapter gets the showcased sentence right


def test_lora_sequence_classification(tmp_path):
    out = run_tutorial("lora_sequence_classification", tmp_path, epochs=3)
    base = float(re.search(r"\| base \| ([\d.]+)% \|", out).group(1))
    lora = float(re.search(r"\| base \+ LoRA \| ([\d.]+)% \|", out).group(1))
    assert lora > base and lora >= 70.0
    assert os.path.isfile(tmp_path / "gpt2-lora-movie-reviews" / "adapter_model.safetensors")


def test_prompt_methods(tmp_path):
    out = run_tutorial("prompt_methods", tmp_path, epochs=2)
    first = out.splitlines()[0]
    assert re.fullmatch(r"base model \(no training\): accuracy [\d.]+%", first)  # printed before any training
    base = float(re.search(r"\| base model \(no training\) \| 0 \| - \| ([\d.]+)% \| - \|", out).group(1))
    rows = re.findall(r"\| (prompt tuning|prefix tuning|p-tuning) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+)% \| "
                      r"([\d.]+)% \|", out)
    assert [r[0] for r in rows] == ["prompt tuning", "prefix tuning", "p-tuning"]
    for _, trainable, loss, accuracy, reloaded in rows:
        assert accuracy == reloaded  # the saved adapter reproduces the trained model
        assert float(loss) < 0.75
    assert max(float(r[3]) for r in rows) > base


def test_lora_image_classification(tmp_path):
    out = run_tutorial("lora_image_classification", tmp_path, epochs=2)
    assert "ViTImageProcessor (48, 48, 3) -> (3, 32, 32)" in out  # AutoImageProcessor resized the images
    counts = re.findall(r"trainable params: (\d+) \|\| all params: (\d+) \|\|", out)
    # the base model trains in full; LoRA r=16 on query and value of 2 layers (4 x 2 x 16 x 64) + the classifier
    assert counts[0][0] == counts[0][1] and counts[1][0] == str(4 * 2 * 16 * 64 + 64 * 4 + 4)
    base = float(re.search(r"\| base \(new classifier\) \| ([\d.]+)% \|", out).group(1))
    lora = float(re.search(r"\| base \+ LoRA \| ([\d.]+)% \|", out).group(1))
    assert base < 40.0 and lora >= 80.0  # four balanced classes: chance is 25 %
    assert "['adapter_config.json', 'adapter_model.safetensors']" in out
    predicted, true = re.search(r"Predicted class: (\w+) \(true class: (\w+)\)", out).groups()
    assert predicted == true  # the reloaded adapter


def test_lora_semantic_segmentation(tmp_path):
    out = run_tutorial("lora_semantic_segmentation", tmp_path, epochs=1)
    # the first scene's map holds 0 (unlabelled), 1 (background) and 3 (square): reduced to 255, 0 and 2
    assert "SegformerImageProcessor (96, 96, 3) -> (3, 64, 64) labels (64, 64) [0, 2, 255]" in out
    rows = re.findall(r"\| (base \(new decode head\)|base \+ LoRA) \| ([\d.]+)% \|((?: [\d.]+% \|){5})", out)
    assert [r[0] for r in rows] == ["base (new decode head)", "base + LoRA"]
    for _, mean, per_class in rows:  # the mean IoU is the mean over the five classes
        assert abs(float(mean) - sum(map(float, re.findall(r"([\d.]+)%", per_class))) / 5) < 0.011
    base, lora = float(rows[0][1]), float(rows[1][1])
    assert base < 15.0 and lora > base + 15.0  # one epoch; the notebook's six reach 78 %
    assert "['adapter_config.json', 'adapter_model.safetensors']" in out
    assert float(re.search(r"pixel accuracy on this scene: ([\d.]+)%", out).group(1)) >= 85.0


def test_prompt_tuning_causal_lm(tmp_path):
    out = run_tutorial("prompt_tuning_causal_lm", tmp_path, epochs=2)
    assert "trainable params: 512 ||" in out  # 8 virtual tokens x hidden size 64
    base = float(re.search(r"\| base model \| ([\d.]+)% \|", out).group(1))
    tuned = float(re.search(r"\| \+ prompt tuning \| ([\d.]+)% \|", out).group(1))
    assert tuned >= 80.0 and tuned > base + 20.0
    assert "['adapter_config.json', 'adapter_model.safetensors']" in out
    assert out.rstrip().endswith("-> 'complaint'")  # the reloaded adapter labels a new tweet


def test_notebooks_match_scripts_and_have_outputs():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in TUTORIALS:
        with open(os.path.join(ROOT, "tutorials", name, f"{name}.ipynb"), encoding="utf-8") as f:
            notebook = json.load(f)
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
        text = "".join("".join(o.get("text", "")) for c in code for o in c["outputs"])
        assert text and not WARNING.search(text), name
    with open(os.path.join(ROOT, "tutorials", TUTORIALS[0], f"{TUTORIALS[0]}.ipynb"), encoding="utf-8") as f:
        last = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"][-1]
    assert "-> 'positive'" in "".join(last["outputs"][0]["text"])


def test_notebook_builder_runs_cells_like_a_kernel(tmp_path):
    """Outputs are captured per cell in one namespace, run from the script's folder without ``__file__``; a leading
    docstring becomes the first markdown cell; editing the script makes ``--check`` fail until regenerated."""
    script = tmp_path / "demo.py"
    script.write_text('"""\n# Demo\n\nText.\n"""\n\n# %%\nimport os\nx = 2\nprint("cwd", os.path.basename(os.getcwd()))'
                      '\nprint("file" in globals(), "__file__" in globals())\n\n# %% [markdown]\n# ## Next\n\n'
                      '# %%\nimport sys\nprint(x * 21)\nprint("to stderr", file=sys.stderr)\n')
    outputs = make_notebooks.run_script(str(script))
    assert outputs == [[{"name": "stdout", "text": f"cwd {tmp_path.name}\nFalse False\n"}],
                       [{"name": "stdout", "text": "42\n"}, {"name": "stderr", "text": "to stderr\n"}]]
    source = script.read_text()
    notebook = make_notebooks.script_to_notebook(source, outputs)
    assert [c["cell_type"] for c in notebook["cells"]] == ["markdown", "code", "markdown", "code"]
    assert notebook["cells"][0]["source"] == ["# Demo\n", "\n", "Text."]
    assert notebook["cells"][3]["execution_count"] == 2
    assert notebook["cells"][3]["outputs"][0] == {"name": "stdout", "output_type": "stream", "text": ["42\n"]}
    path = script.with_suffix(".ipynb")
    path.write_text(make_notebooks.notebook_text(notebook))
    assert make_notebooks.stale_reason(str(script)) is None
    script.write_text(source.replace("x * 21", "x * 20"))
    assert "cells differ" in make_notebooks.stale_reason(str(script))
    script.write_text(source + "\n")
    assert "not run from the current script" in make_notebooks.stale_reason(str(script))


DATASET_SCRIPT = """
import numpy as np
import mindpeft
import mindspore.dataset as ds
rows = [(str(i),) for i in range(40)]
dataset = ds.GeneratorDataset(rows, column_names=["a"], shuffle=False)
dataset = dataset.map(operations=lambda a: np.array([1, 2], np.int32), input_columns=["a"], output_columns=["x"])
dataset = dataset.batch(8)
for epoch in range(2):
    for _ in dataset.create_dict_iterator(num_epochs=1):
        pass
print("workers", ds.config.get_num_parallel_workers())
"""


def test_dataset_pipelines_use_one_worker_and_stay_quiet_when_memory_is_short(tmp_path):
    """mindpeft sets one dataset worker at import (mindpeft.utils.runtime), which skips MindSpore's whole-machine
    memory check and its 'Memory consumption is more than 80%' warning. The check is exercised with a fake
    /proc/meminfo (85 % of memory in use) in a private mount namespace, where the machine allows one."""
    import shutil
    import pytest

    with open("/proc/meminfo", encoding="utf-8") as f:
        lines = f.read().splitlines()
    total = int(lines[0].split()[1])
    fake = tmp_path / "meminfo"
    fake.write_text("\n".join(f"MemAvailable:    {total * 15 // 100} kB" if line.startswith("MemAvailable:") else line
                              for line in lines) + "\n")
    script = tmp_path / "pipeline.py"
    script.write_text(DATASET_SCRIPT)
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (unshare -rm)")
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

    def run(workers):
        command = f"mount --bind {fake} /proc/meminfo && exec {sys.executable} {script}"
        result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                                env={**env, **({"MINDPEFT_DATASET_WORKERS": workers} if workers else {})})
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    out = run(None)
    assert "workers 1" in out and "Memory consumption" not in out
    out = run("2")  # MindSpore's behaviour with two workers: the warning this setting avoids
    assert "workers 2" in out and "Memory consumption is more than" in out


def test_dataset_workers_setting(monkeypatch):
    import pytest
    import mindspore.dataset as ds
    from mindpeft.utils.runtime import DATASET_WORKERS_ENV, tune_dataset_runtime

    before = ds.config.get_num_parallel_workers()
    try:
        ds.config.set_num_parallel_workers(2)
        monkeypatch.setenv(DATASET_WORKERS_ENV, "0")  # 0: leave MindSpore's setting alone
        tune_dataset_runtime()
        assert ds.config.get_num_parallel_workers() == 2
        monkeypatch.setenv(DATASET_WORKERS_ENV, "1000")  # MindSpore allows up to one per core
        tune_dataset_runtime()
        assert ds.config.get_num_parallel_workers() == os.cpu_count()
        for bad in ("many", "-1"):
            monkeypatch.setenv(DATASET_WORKERS_ENV, bad)
            with pytest.raises(ValueError, match=DATASET_WORKERS_ENV):
                tune_dataset_runtime()
    finally:
        ds.config.set_num_parallel_workers(before)
