"""mindpeft vs torch + HF peft on this machine: training steps, training memory and generation, side by side.

    python scripts/bench.py                     # the cases below, 3 rounds (about half an hour on 2 cores)
    python scripts/bench.py --tiny              # the same rows on 2-layer models, one round (CI-sized)
    python scripts/bench.py --rows gpt2-lora,gpt2-generate-b1 --rounds 5

Each framework runs in child processes of its own (MindSpore's and torch's thread pools disturb each other in one
process), alternating framework order round by round; a row reports the median over rounds of each child's median
step time, the range of the per-round values, and the time ratio mindpeft / torch. Training memory is the peak
resident memory of the child after the model was built minus its resident memory then (the kernel's peak counter
is reset at that point), so it counts gradients, optimizer state, activations and compilation. Without --tiny each
row gets a fresh child per framework and round; --tiny runs all rows of a framework in one child.
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

GPT2 = {"small": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        "tiny": dict(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4)}
BERT = {"small": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512),
        "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128)}
LLAMA = {"small": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                       num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024),
         "tiny": dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)}
T5_TOKENS = dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
T5 = {"small": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, **T5_TOKENS),
      "tiny": dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, **T5_TOKENS)}
FAMILIES = {"gpt2": GPT2, "bert": BERT, "llama": LLAMA, "t5": T5}
NO_DROPOUT = {"gpt2": dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0),
              "bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), "llama": {},
              "t5": dict(dropout_rate=0.0)}
LORA_TARGETS = {"gpt2": ["c_attn", "c_proj"], "bert": ["query", "value"], "llama": ["q_proj", "v_proj"],
                "t5": ["q", "v"]}
TASKS = {"gpt2": "CAUSAL_LM", "bert": "SEQ_CLS", "llama": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM"}

# row: (family, what, batch, length); what is "lora"/"full" (train step) or "generate" (new tokens after a
# 16-token prompt, LoRA unmerged)
ROWS = {
    "gpt2-lora": ("gpt2", "lora", 4, 64),
    "gpt2-full": ("gpt2", "full", 4, 64),
    "bert-lora": ("bert", "lora", 8, 128),
    "llama-lora": ("llama", "lora", 4, 128),
    "gpt2-generate-b1": ("gpt2", "generate", 1, 32),
    "gpt2-generate-b8": ("gpt2", "generate", 8, 32),
    "llama-generate-b1": ("llama", "generate", 1, 32),
    "llama-generate-b8": ("llama", "generate", 8, 32),
    "t5-generate-b1": ("t5", "generate", 1, 32),
    "t5-generate-b8": ("t5", "generate", 8, 32),
}
# mindpeft only: the LoRA step in PyNative, merged / unmerged / base inference, sizes
MINDPEFT_ROWS = {"gpt2-lora-pynative": ("gpt2", "lora", 4, 64), "gpt2-inference": ("gpt2", "inference", 4, 64)}
PROMPT_LEN = 16
# issue 15's rows, mindpeft only (--big): a LLaMA-shaped ~1.1B model (TinyLlama's shape) from a checkpoint on disk,
# LoRA r=8 on the attention and MLP projections, 4 x 512 tokens; row: (weights, LoRA, gradient checkpointing)
LLAMA_1B = {"big": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
            "tiny": LLAMA["tiny"]}
# (the full fine-tune checkpoints too: without it, weights, gradients, AdamW moments and activations of the 22-layer
# model need more than this machine's 23 GB)
BIG_ROWS = {"1b-fp32-lora": ("fp32", True, False), "1b-fp32-lora-checkpointing": ("fp32", True, True),
            "1b-8bit-lora": ("8bit", True, True), "1b-4bit-lora": ("4bit", True, True),
            "1b-fp32-full": ("fp32", False, True)}
BIG_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BIG_BATCH = {"big": (4, 512), "tiny": (4, 64)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2-layer models, one round, all rows of a framework "
                                                            "in one child")
    parser.add_argument("--rows", help="comma-separated rows (default: all but the --big ones)")
    parser.add_argument("--rounds", type=int, help="rounds (default: 1 with --tiny or --big, else 3)")
    parser.add_argument("--steps", type=int, help="timed steps per child after the warm-up steps (two; one for "
                                                  "--big rows) (default: 2 with --tiny, 1 with --big, else 5)")
    parser.add_argument("--big", action="store_true",
                        help="the ~1.1B LLaMA rows (fp32 / 8-bit / 4-bit, full / LoRA / checkpointing), mindpeft "
                             "only; needs about 20 GB of memory and an hour on 2 cores; with --tiny a 2-layer shape")
    parser.add_argument("--big-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "mindpeft-bench"),
                        help="where the --big rows' checkpoint is written once and reused")
    parser.add_argument("--big-layers", type=int, help="decoder layers of the --big model (default: 22, "
                                                       "TinyLlama's); fewer for a quick look")
    parser.add_argument("--child", choices=["mindpeft", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    known = list(ROWS) + list(MINDPEFT_ROWS) + list(BIG_ROWS)
    default = list(BIG_ROWS) if args.big else list(ROWS) + list(MINDPEFT_ROWS)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else default
    unknown = [r for r in args.rows if r not in known]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted(known)}")
    args.rounds = args.rounds or (1 if args.tiny or args.big else 3)
    args.steps = args.steps or (2 if args.tiny else 1 if args.big else 5)
    return args


def big_shape(args):
    """``(size, config)`` of the --big model."""
    size = "tiny" if args.tiny else "big"
    config = dict(LLAMA_1B[size])
    if args.big_layers:
        config["num_hidden_layers"] = args.big_layers
    return size, config


# ---------------------------------------------------------------- measuring inside a child

def memory_mib(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_memory():
    """Make ``VmHWM`` restart from the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def measure(run, steps, warmups=2):
    """Times of ``steps`` calls of ``run`` after ``warmups`` calls, the peak memory above the state before them and
    the peak resident memory of the process."""
    import gc

    gc.collect()
    base = memory_mib("VmRSS")
    reset_peak_memory()
    for _ in range(warmups):
        run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "memory_mib": memory_mib("VmHWM") - base,
            "peak_mib": memory_mib("VmHWM")}


def inputs(family, batch, length, what, vocab):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (batch, PROMPT_LEN if what == "generate" else length))
    if family == "bert":
        return {"input_ids": ids, "labels": rng.integers(0, 2, (batch,))}
    if family == "t5":
        return {"input_ids": ids, "labels": rng.integers(3, vocab, (batch, length))}
    return {"input_ids": ids, "labels": ids}


class MindpeftCases:
    def __init__(self, size):
        import mindspore as ms
        from mindpeft import LoraConfig, get_peft_model
        from mindpeft import models

        self.ms, self.size = ms, size
        self.lora_config, self.get_peft_model, self.models = LoraConfig, get_peft_model, models

    def model(self, family, lora):
        m = self.models
        np.random.seed(0)
        config = {"gpt2": m.GPT2Config, "bert": m.BertConfig, "llama": m.LlamaConfig, "t5": m.T5Config}[family](
            **FAMILIES[family][self.size], **NO_DROPOUT[family])
        cls = {"gpt2": m.GPT2LMHeadModel, "bert": m.BertForSequenceClassification, "llama": m.LlamaForCausalLM,
               "t5": m.T5ForConditionalGeneration}[family]
        model = cls(config)
        if lora:
            model = self.get_peft_model(model, self.lora_config(task_type=TASKS[family], r=8, lora_alpha=16,
                                                                target_modules=LORA_TARGETS[family]))
        return model

    def tensors(self, batch):
        return {k: self.ms.Tensor(v, self.ms.int32) for k, v in batch.items()}

    def run(self, row, family, what, batch_size, length, steps):
        from mindpeft.optimizers import AdamW
        from mindpeft.training import TrainStep

        model = self.model(family, lora=what != "full")
        batch = self.tensors(inputs(family, batch_size, length, what, FAMILIES[family][self.size]["vocab_size"]))
        if what == "generate":
            model.set_train(False)
            prompt = batch["input_ids"]
            return measure(lambda: model.generate(input_ids=prompt, max_new_tokens=length, eos_token_id=-1).asnumpy(),
                           steps)
        if what == "inference":
            return self.inference(model, batch, steps)
        model.set_train(True)
        step = TrainStep(model, AdamW(model.trainable_params(), lr=1e-4, weight_decay=0.0),
                         jit=not row.endswith("pynative"))
        result = measure(lambda: float(step(**batch)), steps)
        if row == "gpt2-lora":
            result.update(self.sizes(model))
        return result

    def inference(self, lora, batch, steps):
        """Forward times of the base model, the unmerged LoRA model and the merged one, interleaved."""
        from mindpeft.training import ForwardStep

        ids = batch["input_ids"]
        lora.set_train(False)
        unmerged = ForwardStep(lora)
        base_model = self.model("gpt2", lora=False)
        base_model.set_train(False)
        base = ForwardStep(base_model)
        merged_model = self.model("gpt2", lora=True).merge_and_unload()
        merged_model.set_train(False)
        merged = ForwardStep(merged_model)
        times = {"base": [], "unmerged": [], "merged": []}
        for name, fn in (("base", base), ("unmerged", unmerged), ("merged", merged)):
            fn(input_ids=ids)
            fn(input_ids=ids)
        for _ in range(max(steps, 5)):
            for name, fn in (("base", base), ("unmerged", unmerged), ("merged", merged)):
                start = time.perf_counter()
                fn(input_ids=ids)["logits"].asnumpy()
                times[name].append(time.perf_counter() - start)
        return {f"{k}_seconds": statistics.median(v) for k, v in times.items()}

    def sizes(self, lora):
        trainable = sum(int(np.prod(p.shape)) for p in lora.trainable_params())
        total = sum(int(np.prod(p.shape)) for n, p in lora.get_base_model().parameters_and_names()
                    if ".lora_" not in n)
        with tempfile.TemporaryDirectory() as tmp:
            lora.save_pretrained(os.path.join(tmp, "adapter"))
            adapter = folder_mib(os.path.join(tmp, "adapter"))
            self.model("gpt2", lora=False).save_pretrained(os.path.join(tmp, "full"))
            full = folder_mib(os.path.join(tmp, "full"))
        return {"trainable": trainable, "total": total, "adapter_mib": adapter, "full_mib": full}


class TorchCases:
    def __init__(self, size):
        import peft
        import torch
        import transformers

        self.torch, self.peft, self.transformers, self.size = torch, peft, transformers, size

    def model(self, family, lora):
        t = self.transformers
        self.torch.manual_seed(0)
        config = {"gpt2": t.GPT2Config, "bert": t.BertConfig, "llama": t.LlamaConfig, "t5": t.T5Config}[family](
            **FAMILIES[family][self.size], **NO_DROPOUT[family])
        cls = {"gpt2": t.GPT2LMHeadModel, "bert": t.BertForSequenceClassification, "llama": t.LlamaForCausalLM,
               "t5": t.T5ForConditionalGeneration}[family]
        model = cls(config)
        if lora:
            model = self.peft.get_peft_model(model, self.peft.LoraConfig(task_type=TASKS[family], r=8, lora_alpha=16,
                                                                         target_modules=LORA_TARGETS[family]))
        return model

    def run(self, row, family, what, batch_size, length, steps):
        torch = self.torch
        model = self.model(family, lora=what != "full")
        batch = {k: torch.tensor(v, dtype=torch.long)
                 for k, v in inputs(family, batch_size, length, what, FAMILIES[family][self.size]["vocab_size"]).items()}
        if what == "generate":
            model.eval()

            def generate():
                with torch.no_grad():
                    return model.generate(input_ids=batch["input_ids"], max_new_tokens=length,
                                          min_new_tokens=length, do_sample=False, pad_token_id=0)

            return measure(generate, steps)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

        def step():
            optimizer.zero_grad()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        return measure(step, steps)


class BigModelCases:
    """Issue 15's rows: one LLaMA-shaped checkpoint loaded in float32, 8-bit or 4-bit (NF4, double-quantized) and
    trained in full or with LoRA, with or without gradient checkpointing (the quantized rows go through
    ``prepare_model_for_kbit_training``, which turns it on, as HF peft does)."""

    def __init__(self, size, config, folder):
        self.size, self.config, self.folder = size, config, folder

    def run(self, row, steps):
        import gc

        import mindspore as ms
        from mindpeft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from mindpeft.models import LlamaForCausalLM
        from mindpeft.optimizers import AdamW
        from mindpeft.quantization import QuantizationConfig
        from mindpeft.training import TrainStep

        weights, lora, checkpointing = BIG_ROWS[row]
        quantization = {"8bit": QuantizationConfig(load_in_8bit=True),
                        "4bit": QuantizationConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True)}.get(weights)
        gc.collect()
        before = memory_mib("VmRSS")
        model = LlamaForCausalLM.from_pretrained(self.folder, quantization_config=quantization)
        gc.collect()
        loaded = {"model_mib": memory_mib("VmRSS") - before,
                  "weights_mib": sum(p.nbytes for p in model.get_parameters()) / 2 ** 20,
                  "projection_mib": sum(p.nbytes for n, p in model.parameters_and_names() if "_proj." in n) / 2 ** 20}
        if quantization is not None:
            prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
        elif checkpointing:
            model.gradient_checkpointing_enable()
        if lora:
            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16,
                                                     target_modules=BIG_TARGETS))
        model.set_train(True)
        batch, length = BIG_BATCH[self.size]
        ids = ms.Tensor(np.random.default_rng(0).integers(3, self.config["vocab_size"], (batch, length)),
                        ms.int32)
        step = TrainStep(model, AdamW(model.trainable_params(), lr=1e-4, weight_decay=0.0))
        return {**measure(lambda: float(step(input_ids=ids, labels=ids)), steps, warmups=1), **loaded}


def big_checkpoint(folder, config):
    """Write a seeded LLaMA checkpoint of ``config``'s shape into ``folder`` (sharded safetensors + index,
    ``config.json`` last, so a folder holding it is complete) unless it is already there."""
    from safetensors.numpy import save_file

    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    hidden, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        shapes.update({prefix + "self_attn.q_proj.weight": (hidden, hidden), prefix + "self_attn.k_proj.weight":
                       (kv, hidden), prefix + "self_attn.v_proj.weight": (kv, hidden),
                       prefix + "self_attn.o_proj.weight": (hidden, hidden), prefix + "mlp.gate_proj.weight":
                       (inner, hidden), prefix + "mlp.up_proj.weight": (inner, hidden),
                       prefix + "mlp.down_proj.weight": (hidden, inner), prefix + "input_layernorm.weight": (hidden,),
                       prefix + "post_attention_layernorm.weight": (hidden,)})
    shapes.update({"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)})
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    weight_map, shard, shard_bytes, files = {}, {}, 0, []

    def flush():
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.path.join(folder, name))
        files.append(name)
        weight_map.update({key: name for key in shard})
        shard.clear()

    for key, shape in shapes.items():
        shard[key] = (np.ones(shape, np.float32) if len(shape) == 1
                      else rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
        shard_bytes += shard[key].nbytes
        if shard_bytes >= 2 ** 30:
            flush()
            shard_bytes = 0
    if shard:
        flush()
    total = sum(int(np.prod(shape)) * 4 for shape in shapes.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as index:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, index)
    with open(os.path.join(folder, "config.json.tmp"), "w") as out:
        json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rms_norm_eps": 1e-5,
                   "tie_word_embeddings": False, **config}, out)
    os.replace(os.path.join(folder, "config.json.tmp"), os.path.join(folder, "config.json"))
    return folder


def folder_mib(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2 ** 20


def run_child(args):
    size = "tiny" if args.tiny else "small"
    cases = MindpeftCases(size) if args.child == "mindpeft" else TorchCases(size)
    for row in args.rows:
        if row in BIG_ROWS:
            result = BigModelCases(*big_shape(args), big_folder(args)).run(row, args.steps)
        else:
            family, what, batch, length = ROWS.get(row) or MINDPEFT_ROWS[row]
            result = cases.run(row, family, what, batch, length, args.steps)
        print("RESULT " + json.dumps({"row": row, **result}), flush=True)


def big_folder(args):
    size, config = big_shape(args)
    return os.path.join(args.big_dir, f"llama-{size}-{config['num_hidden_layers']}-layers")


# ---------------------------------------------------------------- the parent: children, rounds, tables

def run_children(framework, rows, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", framework, "--rows", ",".join(rows),
           "--steps", str(args.steps), "--big-dir", args.big_dir] + (["--tiny"] if args.tiny else []) + \
        (["--big-layers", str(args.big_layers)] if args.big_layers else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
    if out.returncode != 0 and len(rows) == 1 and rows[0] in BIG_ROWS:  # reported in the table, the others go on
        killed = " (killed: out of memory?)" if out.returncode == -9 else ""
        print(f"{rows[0]} failed with exit status {out.returncode}{killed}:\n{out.stderr[-1500:]}", file=sys.stderr)
        return {rows[0]: {"failed": f"exit status {out.returncode}{killed}"}}
    if out.returncode != 0:
        raise SystemExit(f"{framework} child for {rows} failed:\n{out.stderr[-3000:]}")
    results = [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    return {r.pop("row"): r for r in results}


def collect(args):
    """``{(framework, row): [result of each round]}``."""
    both = [r for r in args.rows if r in ROWS]
    ours = [r for r in args.rows if r in MINDPEFT_ROWS]
    big = [r for r in args.rows if r in BIG_ROWS]
    found = {}
    if big:
        big_checkpoint(big_folder(args), big_shape(args)[1])
    for round_index in range(args.rounds):
        order = ("mindpeft", "torch") if round_index % 2 == 0 else ("torch", "mindpeft")
        batches = [[r] for r in both] if not args.tiny else [both]
        for rows in batches:
            for framework in order:
                if rows:
                    for row, result in run_children(framework, rows, args).items():
                        found.setdefault((framework, row), []).append(result)
        for rows in ([[r] for r in ours + big] if not args.tiny else [ours, big]):
            if rows:
                for row, result in run_children("mindpeft", rows, args).items():
                    found.setdefault(("mindpeft", row), []).append(result)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return found


def spread(values, fmt):
    values = list(values)
    middle = statistics.median(values)
    if len(values) == 1:
        return fmt.format(middle)
    return f"{fmt.format(middle)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


BIG_LABELS = {"1b-fp32-full": "fp32, full fine-tune + gradient checkpointing", "1b-fp32-lora": "fp32 + LoRA",
              "1b-fp32-lora-checkpointing": "fp32 + LoRA + gradient checkpointing",
              "1b-8bit-lora": "8-bit + LoRA (+ checkpointing, prepare_model_for_kbit_training)",
              "1b-4bit-lora": "4-bit NF4 double-quant + LoRA (+ checkpointing, prepare_model_for_kbit_training)"}


def print_big_table(found, args):
    """Issue 15's table: memory and step time of the --big rows, and the three ratios it sets targets for."""
    size, config = big_shape(args)
    batch, length = BIG_BATCH[size]
    rounds = {row: sorted(found[("mindpeft", row)], key=lambda r: r.get("seconds", 0)) for row in BIG_ROWS
              if ("mindpeft", row) in found}
    results = {row: values[len(values) // 2] for row, values in rounds.items()}  # the median round by step time
    failed = {row: r["failed"] for row, r in results.items() if "failed" in r}
    results = {row: r for row, r in results.items() if row not in failed}
    print(f"\nLLaMA {config['num_hidden_layers']} x {config['hidden_size']} (intermediate {config['intermediate_size']}, "
          f"{config['num_attention_heads']}/{config['num_key_value_heads']} heads, vocab {config['vocab_size']}), LoRA "
          f"r=8 on every projection, AdamW, {batch} x {length} tokens, jit; memory is resident memory (MiB)\n")
    print("| case | weights | projection weights | loaded model (RSS) | peak during training | training above the "
          "loaded model | step s |\n| --- | --- | --- | --- | --- | --- | --- |")
    for row, r in results.items():
        print(f"| {BIG_LABELS[row]} | {r['weights_mib']:.1f} | {r['projection_mib']:.1f} | {r['model_mib']:.0f} | "
              f"{r['peak_mib']:.0f} | {r['memory_mib']:.0f} | {r['seconds']:.1f} |")
    for row, why in failed.items():
        print(f"| {BIG_LABELS[row]} | failed: {why} | | | | | |")
    fp32, lora, checkpointed, four = (results.get(k) for k in ("1b-fp32-full", "1b-fp32-lora",
                                                                "1b-fp32-lora-checkpointing", "1b-4bit-lora"))
    reference = fp32 or lora or checkpointed
    if four and reference:
        print(f"\n4-bit projection weights / fp32: {100 * four['projection_mib'] / reference['projection_mib']:.1f} % "
              "(target <= 16 %)")
    if four and lora:
        print(f"4-bit + LoRA training peak / fp32 + LoRA training peak: {100 * four['peak_mib'] / lora['peak_mib']:.1f} "
              "% (target <= 30 %)")
    if lora and checkpointed:
        print(f"gradient checkpointing: training memory above the model {lora['memory_mib']:.0f} -> "
              f"{checkpointed['memory_mib']:.0f} MiB, {lora['memory_mib'] / checkpointed['memory_mib']:.1f}x less "
              "(target >= 2x)")


def print_tables(found, args):
    import platform

    import mindspore
    import peft
    import torch

    if any(row in BIG_ROWS for row in args.rows):
        print_big_table(found, args)
    if all(row in BIG_ROWS for row in args.rows):
        return
    size = "tiny 2-layer models" if args.tiny else "GPT-2 small, BERT-base, LLaMA 8 x 1024, T5-small shapes"
    print(f"\n{size}; {args.rounds} round(s) x {args.steps} timed steps; {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}); MindSpore {mindspore.__version__}, torch "
          f"{torch.__version__}, peft {peft.__version__}\n")

    def pair(row, key="seconds"):
        ours, theirs = found.get(("mindpeft", row)), found.get(("torch", row))
        if not ours or not theirs:
            return None
        return [o[key] for o in ours], [t[key] for t in theirs], [o[key] / t[key] for o, t in zip(ours, theirs)]

    print("| training step | mindpeft s | torch + HF peft s | time mindpeft / torch | training memory above the "
          "loaded model, mindpeft / torch |\n| --- | --- | --- | --- | --- |")
    for row in args.rows:
        if row in ROWS and ROWS[row][1] != "generate" and pair(row):
            ours, theirs, ratios = pair(row)
            memory = pair(row, "memory_mib")
            family, what, batch, length = ROWS[row]
            print(f"| {family} {'LoRA' if what == 'lora' else 'full fine-tune'}, {batch} x {length} | "
                  f"{spread(ours, '{:.3f}')} | {spread(theirs, '{:.3f}')} | {spread(ratios, '{:.2f}')} | "
                  f"{statistics.median(memory[0]):.0f} / {statistics.median(memory[1]):.0f} MiB |")
    print("\n| greedy generate, LoRA unmerged | mindpeft tokens/s | transformers + HF peft tokens/s | time mindpeft / "
          "torch |\n| --- | --- | --- | --- |")
    for row in args.rows:
        if row in ROWS and ROWS[row][1] == "generate" and pair(row):
            ours, theirs, ratios = pair(row)
            family, _, batch, length = ROWS[row]
            tokens = batch * length
            print(f"| {family}, batch {batch}, {length} new tokens | {spread([tokens / s for s in ours], '{:.0f}')} | "
                  f"{spread([tokens / s for s in theirs], '{:.0f}')} | {spread(ratios, '{:.2f}')} |")
    print("\n| mindpeft | value |\n| --- | --- |")
    lora, full = found.get(("mindpeft", "gpt2-lora")), found.get(("mindpeft", "gpt2-full"))
    if lora and full:
        print(f"| GPT-2 LoRA step / full fine-tune step | "
              f"{spread([a['seconds'] / b['seconds'] for a, b in zip(lora, full)], '{:.2f}')} |")
    eager = found.get(("mindpeft", "gpt2-lora-pynative"))
    if lora and eager:
        print(f"| GPT-2 LoRA step, jit speed-up over PyNative | "
              f"{spread([b['seconds'] / a['seconds'] for a, b in zip(lora, eager)], '{:.1f}x')} |")
    inference = found.get(("mindpeft", "gpt2-inference"))
    if inference:
        print(f"| GPT-2 inference (jit), merged LoRA / base model time | "
              f"{spread([r['merged_seconds'] / r['base_seconds'] for r in inference], '{:.3f}')} |")
        print(f"| GPT-2 inference (jit), unmerged LoRA / base model time | "
              f"{spread([r['unmerged_seconds'] / r['base_seconds'] for r in inference], '{:.3f}')} |")
    sized = next((r for r in lora or [] if "trainable" in r), None)
    if sized:
        print(f"| trainable parameters | {sized['trainable']:,d} of {sized['total']:,d} "
              f"({100 * sized['trainable'] / sized['total']:.3f}%) |")
        print(f"| adapter / full checkpoint size | {sized['adapter_mib']:.2f} MiB / {sized['full_mib']:.2f} MiB "
              f"({100 * sized['adapter_mib'] / sized['full_mib']:.2f}%) |")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return run_child(args)
    print_tables(collect(args), args)


if __name__ == "__main__":
    main()
