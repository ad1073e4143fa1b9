"""LoRA training and inference benchmark, measured side by side in one run (machines here are noisy).

    python scripts/bench.py            # a GPT-2-small-shaped model (124M parameters)
    python scripts/bench.py --tiny     # a 2-layer model, seconds (CI-sized)

Rows: the LoRA train step in PyNative and under mindspore.jit, a full fine-tuning step (jit), and the same LoRA
and full steps in HF peft / PyTorch on CPU as the reference; then ratios, the trainable share, adapter vs full
checkpoint size, merged vs unmerged inference, and peak memory of LoRA vs full fine-tuning (child processes).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPES = {"small": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
          "tiny": dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer model instead of GPT-2 small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, help="timed steps per row, after one warm-up step (default: 20 with "
                        "--tiny, else 5); each row reports the median")
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def timed(fn, steps):
    """Median seconds of ``steps`` calls after a warm-up call (compilation, allocation)."""
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_mindspore(shape, lora):
    from mindpeft import LoraConfig, get_peft_model
    from mindpeft.models import GPT2Config, GPT2LMHeadModel

    np.random.seed(0)
    model = GPT2LMHeadModel(GPT2Config(**shape, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    if lora:
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                 target_modules=["c_attn", "c_proj"]))
    return model


def mindspore_step(model, batch, jit):
    from mindspore.experimental import optim
    from mindpeft.training import TrainStep

    model.set_train(True)
    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-4, weight_decay=0.0), jit=jit)
    return lambda: float(step(**batch))


def torch_step(shape, batch, lora):
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape, embd_pdrop=0.0, attn_pdrop=0.0,
                                                                 resid_pdrop=0.0))
    if lora:
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                           target_modules=["c_attn", "c_proj"]))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.tensor(batch["input_ids"].asnumpy(), dtype=torch.long)

    def step():
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def child_peak_memory(args, kind):
    """``{"model_mib", "peak_mib"}``: resident memory of a fresh process after building the model, and its peak
    over a few steps of ``kind`` training."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len), "--steps", "2"] + (["--tiny"] if args.tiny else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "GLOG_v": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_mib(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def run_child(args, shape, batch):
    model = build_mindspore(shape, lora=args.child == "lora")
    before = rss_mib("VmRSS")
    step = mindspore_step(model, batch, jit=True)
    for _ in range(args.steps):
        step()
    print(json.dumps({"model_mib": before, "peak_mib": rss_mib("VmHWM")}))


def folder_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.steps is None:
        args.steps = 20 if args.tiny else 5
    import mindspore as ms
    from mindspore import Tensor

    shape = SHAPES["tiny" if args.tiny else "small"]
    ids = np.random.default_rng(0).integers(0, shape["vocab_size"], (args.batch_size, args.seq_len))
    batch = {"input_ids": Tensor(ids, ms.int32), "labels": Tensor(ids, ms.int32)}
    if args.child:
        return run_child(args, shape, batch)

    import torch
    from mindpeft.training import ForwardStep

    rows = {}
    lora = build_mindspore(shape, lora=True)
    rows["mindpeft LoRA step, PyNative"] = timed(mindspore_step(lora, batch, jit=False), args.steps)
    rows["mindpeft LoRA step, jit"] = timed(mindspore_step(lora, batch, jit=True), args.steps)
    full = build_mindspore(shape, lora=False)
    rows["mindpeft full fine-tune step, jit"] = timed(mindspore_step(full, batch, jit=True), args.steps)
    rows["torch + HF peft LoRA step"] = timed(torch_step(shape, batch, lora=True), args.steps)
    rows["torch full fine-tune step"] = timed(torch_step(shape, batch, lora=False), args.steps)

    lora.set_train(False)
    unmerged = ForwardStep(lora)
    rows["mindpeft LoRA inference, unmerged (jit)"] = timed(lambda: unmerged(input_ids=batch["input_ids"]),
                                                           args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        lora.save_pretrained(os.path.join(tmp, "adapter"))
        adapter_mib = folder_size(os.path.join(tmp, "adapter")) / 2 ** 20
        merged_model = lora.merge_and_unload()
        merged = ForwardStep(merged_model)
        rows["mindpeft LoRA inference, merged (jit)"] = timed(lambda: merged(input_ids=batch["input_ids"]),
                                                             args.steps)
        merged_model.save_pretrained(os.path.join(tmp, "full"))
        full_mib = folder_size(os.path.join(tmp, "full")) / 2 ** 20

    trainable = sum(int(np.prod(p.shape)) for p in build_mindspore(shape, lora=True).trainable_params())
    total = sum(int(np.prod(p.shape)) for _, p in full.parameters_and_names())
    mem_lora, mem_full = child_peak_memory(args, "lora"), child_peak_memory(args, "full")

    name = "tiny 2-layer" if args.tiny else "GPT-2 small (124M)"
    print(f"\n{name}, batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps (median), "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs\n")
    print("| measurement | seconds |\n| --- | --- |")
    for key, value in rows.items():
        print(f"| {key} | {value:.4f} |")
    ratio = lambda a, b: rows[a] / rows[b]  # noqa: E731
    print("\n| ratio | value |\n| --- | --- |")
    print(f"| LoRA jit speed-up over PyNative | {ratio('mindpeft LoRA step, PyNative', 'mindpeft LoRA step, jit'):.2f}x |")
    print(f"| mindpeft LoRA jit / torch LoRA (time) | {ratio('mindpeft LoRA step, jit', 'torch + HF peft LoRA step'):.2f} |")
    print(f"| mindpeft full jit / torch full (time) | "
          f"{ratio('mindpeft full fine-tune step, jit', 'torch full fine-tune step'):.2f} |")
    print(f"| LoRA step / full fine-tune step (mindpeft jit) | "
          f"{ratio('mindpeft LoRA step, jit', 'mindpeft full fine-tune step, jit'):.2f} |")
    print(f"| merged / unmerged inference time | "
          f"{ratio('mindpeft LoRA inference, merged (jit)', 'mindpeft LoRA inference, unmerged (jit)'):.2f} |")
    print(f"| trainable parameters | {trainable:,d} of {total:,d} ({100 * trainable / total:.3f}%) |")
    print(f"| adapter / full checkpoint size | {adapter_mib:.2f} MiB / {full_mib:.2f} MiB "
          f"({100 * adapter_mib / full_mib:.2f}%) |")
    print(f"| peak memory, LoRA / full fine-tune | {mem_lora['peak_mib']:.0f} MiB / {mem_full['peak_mib']:.0f} MiB "
          f"({mem_lora['peak_mib'] / mem_full['peak_mib']:.2f}) |")
    train_lora, train_full = (mem["peak_mib"] - mem["model_mib"] for mem in (mem_lora, mem_full))
    print(f"| training memory above the loaded model, LoRA / full | {train_lora:.0f} MiB / {train_full:.0f} MiB "
          f"({train_lora / train_full:.2f}) |")


if __name__ == "__main__":
    main()
