"""Data-parallel Trainer on MindSpore's own engine: this file, launched by ``msrun`` with 2 workers on the CPU
("mccl"), trains with 2 rows per worker and ends with the same losses, evaluation metrics and adapter (1e-5) as one
process with 4 rows per batch; only rank 0 writes files; a worker killed mid-run makes msrun exit non-zero with a
message instead of hanging."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import mindpeft
from mindpeft import LoraConfig, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.training import Trainer, TrainerCallback, TrainingArguments

WORKERS = 2
PER_DEVICE = 2
ACCUMULATION = 2
TIMEOUT = 300  # seconds one msrun run may take before the test kills it and fails


def _rows(n, seed):
    ids = np.random.default_rng(seed).integers(3, 96, (n, 10))  # conftest's tiny GPT-2: vocab 96
    return [{"input_ids": row, "labels": row} for row in ids]


def _metrics(eval_pred):
    """Token accuracy and an order-sensitive checksum of the gathered predictions."""
    logits, labels = eval_pred
    predictions = logits[:, :-1].argmax(-1)
    weights = np.arange(1, len(predictions) + 1)[:, None]
    return {"token_accuracy": float((predictions == labels[:, 1:]).mean()),
            "rows": float(len(predictions)), "checksum": float((predictions * weights).sum())}


def build_trainer(model_dir, output_dir, per_device_batch, callbacks=()):
    """The training both runs do: LoRA on the tiny GPT-2, 16 rows, 2 epochs of 2 optimizer steps, accumulation,
    clipping, evaluation (5 rows: uneven shards) and a checkpoint every epoch."""
    mindpeft.set_seed(3)
    base = AutoModelForCausalLM.from_pretrained(model_dir, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, lora_dropout=0.0, init_lora_weights=False))
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=per_device_batch,
                             gradient_accumulation_steps=ACCUMULATION, num_train_epochs=2, learning_rate=1e-2,
                             max_grad_norm=0.5, logging_steps=1, eval_strategy="epoch", save_strategy="epoch",
                             per_device_eval_batch_size=1, seed=3, disable_tqdm=True)
    return Trainer(model, args, train_dataset=_rows(16, 0), eval_dataset=_rows(5, 1), compute_metrics=_metrics,
                   callbacks=list(callbacks))


def _losses(history):
    return [e["loss"] for e in history if "loss" in e]


def _evals(history):
    return [{k: v for k, v in e.items() if k.startswith("eval_") and not k.endswith(("_runtime", "_second"))}
            for e in history if "eval_loss" in e]


def _adapter(folder):
    from safetensors.numpy import load_file

    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_msrun(workdir, *script_args):
    command = [shutil.which("msrun") or "msrun", f"--worker_num={WORKERS}", f"--local_worker_num={WORKERS}",
               f"--master_port={_free_port()}", "--join=True", f"--log_dir={os.path.join(workdir, 'logs')}",
               os.path.abspath(__file__), *script_args]
    env = dict(os.environ, GLOG_v="3", PYTHONWARNINGS="ignore")
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def _finish(process, workdir):
    from conftest import finish_launcher  # here: msrun's workers run this file without the test dependencies

    return finish_launcher(process, os.path.join(workdir, "logs"), TIMEOUT, "msrun")


def test_two_msrun_workers_equal_one_process_with_the_global_batch(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("gpt2", "causal")
    out, audit = str(tmp_path / "parallel"), str(tmp_path / "audit")
    os.makedirs(audit)
    started = time.time()
    process = _start_msrun(str(tmp_path), "train", model_dir, out, audit)

    single = build_trainer(model_dir, str(tmp_path / "single"), PER_DEVICE * WORKERS)  # meanwhile, in this process
    single.train()
    single.save_model(str(tmp_path / "single" / "final"))
    code, output = _finish(process, str(tmp_path))
    assert code == 0, output[-6000:]
    assert time.time() - started < TIMEOUT

    with open(os.path.join(out, "log_history.json")) as f:
        history = json.load(f)
    assert len(_losses(history)) == 4
    assert np.abs(np.array(_losses(history)) - _losses(single.state.log_history)).max() < 1e-5
    parallel_evals, single_evals = _evals(history), _evals(single.state.log_history)
    assert len(parallel_evals) == 2 and parallel_evals[-1]["eval_rows"] == 5.0
    for got, want in zip(parallel_evals, single_evals):
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-5 for k in got), (got, want)
    a, b = _adapter(os.path.join(out, "final")), _adapter(str(tmp_path / "single" / "final"))
    assert a.keys() == b.keys() and max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5

    # Only rank 0 wrote: every rank recorded the writes its Python code made under the output folder.
    with open(os.path.join(audit, "rank-0.json")) as f:
        rank0 = json.load(f)
    with open(os.path.join(audit, "rank-1.json")) as f:
        rank1 = json.load(f)
    assert rank1 == [] and any("checkpoint-2" in path for path in rank0)
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4", "final", "log_history.json"]
    assert "rng_state_1.json" in os.listdir(os.path.join(out, "checkpoint-4"))  # rank 1's RNG, written by rank 0


def test_a_killed_worker_makes_msrun_fail_instead_of_hanging(tiny_model_dir, tmp_path):
    started = time.time()
    process = _start_msrun(str(tmp_path), "kill", tiny_model_dir("gpt2", "causal"), str(tmp_path / "out"),
                           str(tmp_path))
    code, output = _finish(process, str(tmp_path))
    assert code != 0 and time.time() - started < TIMEOUT
    assert re.search(r"Worker process \d+ exit with exception\. Error code: -9", output), output[-6000:]
    assert "Distributed job exited with exception" in output


class _KillRankOne(TrainerCallback):
    """SIGKILLs rank 1 after its first optimizer step."""

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero and state.global_step == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def _record_writes(root, writes):
    """An audit hook noting Python-level file writes, renames, folder creations and removals under ``root``."""
    root = os.path.realpath(root)

    def inside(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(root)
        except (TypeError, ValueError):
            return False

    def hook(event, args):
        if event == "open" and args[0] is not None and inside(args[0]):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                writes.append(os.fsdecode(args[0]))
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink") and inside(args[1]):
            writes.append(os.fsdecode(args[1]))
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree") and inside(args[0]):
            writes.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)


def _worker(mode, model_dir, output_dir, audit_dir):
    writes = []
    _record_writes(output_dir, writes)
    trainer = build_trainer(model_dir, output_dir, PER_DEVICE, callbacks=[_KillRankOne()] if mode == "kill" else [])
    trainer.train()
    trainer.save_model(os.path.join(output_dir, "final"))
    if trainer.is_world_process_zero():
        with open(os.path.join(output_dir, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f)
    with open(os.path.join(audit_dir, f"rank-{trainer.distributed.rank}.json"), "w") as f:
        json.dump(writes, f)


if __name__ == "__main__":  # an msrun worker (or msrun's scheduler, which stops inside the Trainer's init())
    _worker(*sys.argv[1:5])
