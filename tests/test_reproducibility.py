"""``mindpeft.set_seed`` makes training repeat exactly: the same losses, bit for bit, in one process and across
processes (also two at once on a busy machine, where MindSpore's own CPU Dropout kernel gave different masks).

The run is the tutorials' recipe, small: tiny GPT-2 + LoRA with dropout, a shuffled ``mindspore.dataset`` pipeline,
``mindspore.experimental.optim.AdamW`` with a linear warm-up schedule and the jit-compiled ``TrainStep``, for more
steps than MindSpore's kernel auto-tuning takes (its first launches try thread splits).
"""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.path.join(ROOT, "tutorials", "data")

TRAIN = r'''
import json, os, sys
import numpy as np
from mindspore.experimental.optim import AdamW
from mindpeft import LoraConfig, TaskType, get_linear_schedule_with_warmup, get_peft_model, set_seed
from mindpeft.models import GPT2ForSequenceClassification, Tokenizer
from mindpeft.training import ClassificationTokenize, TrainStep, build_dataset, read_csv, train_epoch


def train(seed, data, epochs=2, rows=160):
    set_seed(seed)
    base_dir = os.path.join(data, "tiny-gpt2-reviews")
    tokenizer = Tokenizer.from_pretrained(base_dir)
    records = read_csv(os.path.join(data, "movie_reviews.csv"))[:rows]
    dataset = build_dataset(records, ClassificationTokenize(tokenizer, max_length=16), 16, shuffle=True, seed=seed,
                            drop_remainder=True)
    model = get_peft_model(GPT2ForSequenceClassification.from_pretrained(base_dir),
                           LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1,
                                      target_modules=["c_attn", "c_proj"]))
    optimizer = AdamW(model.trainable_params(), lr=5e-3)
    total = epochs * dataset.get_dataset_size()
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=total)
    step = TrainStep(model, optimizer)
    losses = []
    for _ in range(epochs):
        train_epoch(step, dataset, progress=False,
                    on_step=lambda index, loss: (losses.append(float(loss)), scheduler.step()))
    weights = {p.name: p.asnumpy() for p in model.trainable_params()}
    return losses, weights


if __name__ == "__main__":
    losses, weights = train(int(sys.argv[1]), sys.argv[2])
    checksum = float(sum(np.abs(w).astype(np.float64).sum() for w in weights.values()))
    print(json.dumps({"losses": losses, "checksum": checksum}))
'''


def _train_module(tmp_path):
    path = tmp_path / "repro_train.py"
    path.write_text(TRAIN)
    return path


def _load(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("repro_train", _train_module(tmp_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_seed_same_losses_in_one_process(tmp_path):
    module = _load(tmp_path)
    losses_a, weights_a = module.train(0, DATA)
    losses_b, weights_b = module.train(0, DATA)
    assert len(losses_a) == 20
    assert losses_a == losses_b  # exact
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        np.testing.assert_array_equal(weights_a[name], weights_b[name], err_msg=name)
    losses_c, _ = module.train(1, DATA)
    assert losses_c != losses_a  # the seed matters: LoRA init, dropout masks and shuffling follow it


def test_same_seed_same_losses_in_two_processes_at_once(tmp_path):
    script = _train_module(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
           "GLOG_v": "3"}
    runs = [subprocess.Popen([sys.executable, str(script), "0", DATA], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len(results[0]["losses"]) == 20
    assert results[0] == results[1]  # losses and final weights, exactly
