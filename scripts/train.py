"""Command-line PEFT trainer: a local model folder and a CSV in, an adapter and metrics JSON out.

    python scripts/train.py --method lora --model path/to/model --data tutorials/data/movie_reviews.csv \\
        --output-dir runs/lora --epochs 3 --lr 5e-3 --batch-size 16

The model folder holds config.json, model.safetensors and tokenizer.json. The task is --task, or follows from the
model and the data: T5/mT5 models learn seq2seq (--text-column -> --target-column), other models classify the
integer labels of --label-column; a CSV without that column needs --task causal_lm to learn language modelling on
--text-column. The data is checked before anything is trained.

After every epoch (and every --save-steps steps) a checkpoint goes to OUTPUT/checkpoint-<step>: the adapter, the
optimizer state (which holds the trainable weights and the learning-rate schedule's step), trainer_state.json (the
position, the metrics so far, the run's settings and a checksum of every file) and the random-number states. It is
written into a temporary folder and renamed when complete, and the last --save-total-limit checkpoints are kept.
Running the same command again resumes from the newest checkpoint that passes its checks (falling back to an older
one when it is damaged) and ends with the same adapter, bit for bit, as a run that was never interrupted; it refuses
other settings (--epochs may change). Ctrl-C (or SIGTERM) stops after the step in progress with exit status 130; the
last complete checkpoint stays the resume point. The final adapter goes to OUTPUT/adapter and the per-epoch metrics
to OUTPUT/metrics.json, each replaced as a whole.
"""
import argparse
import errno
import fcntl
import hashlib
import json
import os
import random
import shlex
import signal
import sys
import time

import numpy as np
import mindspore as ms
from mindspore.experimental import optim
from tqdm.auto import tqdm

import mindpeft
from mindpeft import TaskType, get_peft_model
from mindpeft.models import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                             AutoModelForSequenceClassification, Tokenizer)
from mindpeft.training import (CausalLMTokenize, ClassificationTokenize, ForwardStep, Seq2SeqTokenize, TrainStep,
                               build_dataset, classification_accuracy, evaluate, get_linear_schedule_with_warmup,
                               train_test_split)
from mindpeft.training.data import check_columns, check_labels, check_texts, load_csv
from mindpeft.utils.hub import resolve_folder
from mindpeft.utils.seeding import reseed_dropout
from mindpeft.training.checkpoint import (  # noqa: F401 (CHECKPOINT_RE: train.CHECKPOINT_RE for the tests)
    CHECKPOINT_RE, CheckpointError, adalora_arrays, discard, file_info, list_checkpoints, quarantine, remove_stale,
    restore_adalora, rng_state, set_rng_state, verify_checksums)
from mindpeft.utils.io import atomic_directory, read_json_object, write_json

METHODS = ("lora", "prefix", "ptuning", "prompt", "ia3", "adalora")
PROMPT_METHODS = ("prefix", "ptuning", "prompt")
TASKS = {"seq_cls": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}
AUTO_CLASSES = {TaskType.SEQ_2_SEQ_LM: AutoModelForSeq2SeqLM, TaskType.SEQ_CLS: AutoModelForSequenceClassification,
                TaskType.CAUSAL_LM: AutoModelForCausalLM}
PEFT_TYPES = {"lora": "LORA", "adalora": "ADALORA", "ia3": "IA3", "prompt": "PROMPT_TUNING",
              "prefix": "PREFIX_TUNING", "ptuning": "P_TUNING"}
TARGET_MAX_LENGTH = 8  # seq2seq target tokens

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.ckpt"
RNG_FILE = "rng_state.json"
ADALORA_FILE = "adalora_state.npz"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
STATE_FORMAT = 1
LOCK_FILE = ".train.lock"
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, for SIGTERM too (see StopRequest)
# Testing aid: seconds to wait inside a checkpoint's temporary folder before it is renamed into place.
CHECKPOINT_DELAY_ENV = "MINDPEFT_TRAIN_CHECKPOINT_DELAY"

# Settings a resumed run must share with the checkpoint (option, trainer_state key). --epochs may change (see
# check_compatible); --save-steps, --save-total-limit and --no-progress are free.
FIXED_SETTINGS = (("--method", "method"), ("--task", "task"), ("--model", "model_fingerprint"),
                  ("--data", "data_fingerprint"), ("--max-rows", "max_rows"), ("--text-column", "text_column"),
                  ("--label-column", "label_column"), ("--target-column", "target_column"), ("--r", "r"),
                  ("--num-virtual-tokens", "num_virtual_tokens"), ("--lr", "lr"), ("--batch-size", "batch_size"),
                  ("--max-length", "max_length"), ("--warmup-ratio", "warmup_ratio"), ("--seed", "seed"))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except for required options and flags."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--method", choices=METHODS, required=True, help="PEFT method")
    parser.add_argument("--model", required=True,
                        help="local model folder (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--data", required=True, help="UTF-8 CSV file with a header row")
    parser.add_argument("--output-dir", required=True, help="checkpoints, the final adapter and metrics.json go here")
    parser.add_argument("--task", choices=sorted(TASKS), default=None,
                        help="the task (default: seq2seq for T5/mT5, else seq_cls, which needs --label-column in "
                             "the CSV)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to train (may grow when resuming)")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (linear warm-up and decay)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per text (truncated or padded)")
    parser.add_argument("--text-column", default="sentence", help="input text column")
    parser.add_argument("--label-column", default="label", help="integer class labels (classification)")
    parser.add_argument("--target-column", default="text_label", help="target text (seq2seq)")
    parser.add_argument("--max-rows", type=int, default=0, help="use only the first N rows (0: all)")
    parser.add_argument("--r", type=int, default=8, help="rank for lora / target rank for adalora")
    parser.add_argument("--num-virtual-tokens", type=int, default=8, help="virtual tokens (prefix/ptuning/prompt)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps spent warming up")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffling, dropout and init")
    parser.add_argument("--save-steps", type=int, default=0,
                        help="also checkpoint every N steps within an epoch (0: only at the end of each epoch); "
                             "each checkpoint reseeds dropout and so recompiles the train step")
    parser.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (0: all)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def fail(message):
    """Stop with ``message`` on stderr and exit status 1."""
    raise SystemExit(f"train.py: error: {message}")


# ----- checks before training ---------------------------------------------------------------------------------
def check_arguments(args):
    for name, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--max-length", args.max_length, 2), ("--r", args.r, 1),
                             ("--num-virtual-tokens", args.num_virtual_tokens, 1), ("--max-rows", args.max_rows, 0),
                             ("--save-steps", args.save_steps, 0), ("--save-total-limit", args.save_total_limit, 0),
                             ("--seed", args.seed, 0)):
        if value < low:
            fail(f"{name} must be at least {low}, got {value}")
    if not args.lr > 0:
        fail(f"--lr must be positive, got {args.lr}")
    if not 0.0 <= args.warmup_ratio <= 1.0:
        fail(f"--warmup-ratio must be between 0 and 1, got {args.warmup_ratio}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        fail(f"--output-dir {args.output_dir} is an existing file, not a folder")


def resolve_task(args, model_type, table):
    """The TaskType from --task, else inferred; refuses a task the model type cannot do."""
    if args.task is not None:
        task = TASKS[args.task]
    elif model_type in ("t5", "mt5"):
        task = TaskType.SEQ_2_SEQ_LM
    elif args.label_column in table.columns:
        task = TaskType.SEQ_CLS
    else:
        fail(f"{args.data} has no label column {args.label_column!r} (--label-column); its columns are "
             f"{table.describe_columns()}. Name the label column with --label-column to classify, or pass "
             "--task causal_lm for language modelling on --text-column")
    supported = AUTO_CLASSES[task].mapping
    if model_type not in supported:
        name = {v: k for k, v in TASKS.items()}[task]
        fail(f"{args.model} is a {model_type!r} model, which cannot do task {name}; that task needs one of "
             f"{sorted(supported)}")
    return task


def position_limit(config):
    """How many positions the model's position table holds (``None``: no table, e.g. T5's relative buckets)."""
    model_type = config.model_type
    if model_type == "gpt2":
        return int(config.n_positions), "n_positions"
    if model_type == "bert":
        return int(config.max_position_embeddings), "max_position_embeddings"
    if model_type == "roberta":  # positions are numbered from pad_token_id + 1
        return int(config.max_position_embeddings) - int(config.pad_token_id) - 1, "max_position_embeddings"
    return None, None


def check_data_and_model(args, table, config, task, limited=False):
    """Refuse data or settings that cannot train, before anything is loaded or written (``limited``: --max-rows
    left rows out)."""
    if len(table) < 2:
        what = f"only {len(table)} data row" if len(table) == 1 else "no data rows"
        limit = f" (--max-rows {args.max_rows})" if limited else ""
        fail(f"{args.data} has {what}{limit}: at least 2 are needed, one of them held out for evaluation")
    try:
        check_columns(table, {args.text_column: "--text-column"})
        if task == TaskType.SEQ_CLS:
            check_columns(table, {args.label_column: "--label-column"})
        if task == TaskType.SEQ_2_SEQ_LM:
            check_columns(table, {args.target_column: "--target-column"})
        check_texts(table, args.text_column)
        if task == TaskType.SEQ_2_SEQ_LM:
            check_texts(table, args.target_column)
        if task == TaskType.SEQ_CLS:
            check_labels(table, args.label_column, int(getattr(config, "num_labels", 2)))
    except ValueError as err:
        fail(str(err))
    limit, name = position_limit(config)
    virtual = args.num_virtual_tokens if args.method in PROMPT_METHODS else 0
    if limit is not None and args.max_length + virtual > limit:
        extra = f" + --num-virtual-tokens {virtual}" if virtual else ""
        fail(f"--max-length {args.max_length}{extra} is more than the {limit} positions of the model's position "
             f"table ({name} in {os.path.join(args.model, 'config.json')}); use --max-length {limit - virtual} "
             "or less")


# ----- the model and the data --------------------------------------------------------------------------------
def peft_config(method, task, args, total_steps):
    common = dict(task_type=task)
    if method == "lora":
        return mindpeft.LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05, **common)
    if method == "adalora":
        return mindpeft.AdaLoraConfig(target_r=args.r, init_r=args.r + 4, lora_alpha=2 * args.r,
                                      total_step=total_steps, tinit=total_steps // 10, tfinal=total_steps // 5,
                                      **common)
    if method == "ia3":
        return mindpeft.IA3Config(**common)
    if method == "prompt":
        return mindpeft.PromptTuningConfig(num_virtual_tokens=args.num_virtual_tokens, **common)
    if method == "prefix":
        return mindpeft.PrefixTuningConfig(num_virtual_tokens=args.num_virtual_tokens, **common)
    return mindpeft.PromptEncoderConfig(num_virtual_tokens=args.num_virtual_tokens, encoder_hidden_size=64, **common)


def load_base(task, path):
    return AUTO_CLASSES[task].from_pretrained(path)


def tokenizing_map(task, tokenizer, args):
    if task == TaskType.SEQ_2_SEQ_LM:
        return Seq2SeqTokenize(tokenizer, args.max_length, TARGET_MAX_LENGTH, args.text_column, args.target_column)
    if task == TaskType.SEQ_CLS:
        return ClassificationTokenize(tokenizer, args.max_length, args.text_column, args.label_column)
    return CausalLMTokenize(tokenizer, args.max_length, args.text_column)


def epoch_order(num_rows, seed, epoch):
    """The order of the training rows in ``epoch``: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


# ----- fingerprints and states --------------------------------------------------------------------------------
def model_fingerprint(path):
    """config.json's checksum and the weight files' sizes: the same model, wherever its folder is."""
    info = {"config.json": file_info(os.path.join(path, "config.json"))["sha256"]}
    for name in sorted(os.listdir(path)):
        if name.endswith((".safetensors", ".bin", ".ckpt")):
            info[name] = os.path.getsize(os.path.join(path, name))
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def data_fingerprint(table, columns):
    """Checksum of the rows and columns the run trains and evaluates on."""
    digest = hashlib.sha256(json.dumps(columns).encode())
    for row in table.rows:
        digest.update(json.dumps([row[c] for c in columns]).encode())
    return digest.hexdigest()[:16]


# ----- the output folder ------------------------------------------------------------------------------------------
def lock_output(output_dir):
    """Hold an exclusive lock on the output folder for the life of this process (one run per folder)."""
    handle = open(os.path.join(output_dir, LOCK_FILE), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        if err.errno in (errno.EAGAIN, errno.EACCES):
            fail(f"another train.py run is writing to {output_dir}; wait for it to finish or stop it")
        raise
    return handle


def check_checkpoint_files(path):
    """trainer_state.json of the checkpoint at ``path``, after checking that it is a JSON object of this format and
    that every file it lists is there with its recorded size and checksum."""
    state_path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(state_path):
        raise CheckpointError(f"{STATE_FILE} is missing")
    try:
        state = read_json_object(state_path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{STATE_FILE} has format {state.get('format')!r}, expected {STATE_FORMAT}")
    required = {"global_step": int, "epochs_completed": int, "step_in_epoch": int, "steps_per_epoch": int,
                "history": list, "epoch_losses": list, "args": dict, "files": dict}
    for key, kind in required.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{STATE_FILE} lacks {key!r} (a {kind.__name__})")
    expected_step = state["epochs_completed"] * state["steps_per_epoch"] + state["step_in_epoch"]
    if state["global_step"] != expected_step or os.path.basename(path) != f"checkpoint-{state['global_step']}":
        raise CheckpointError(f"{STATE_FILE} says step {state['global_step']} (epoch {state['epochs_completed']}, "
                              f"step {state['step_in_epoch']} of {state['steps_per_epoch']}), which does not match "
                              f"the folder name")
    for name in (*ADAPTER_FILES, OPTIMIZER_FILE, RNG_FILE):
        if name not in state["files"]:
            raise CheckpointError(f"{STATE_FILE} does not list {name}")
    verify_checksums(path, state["files"], STATE_FILE)
    return state


def load_checkpoint_state(path, state, optimizer, method):
    """Load and check what the checkpoint at ``path`` holds for this run; returns (optimizer values, RNG state)."""
    try:
        config = read_json_object(os.path.join(path, "adapter_config.json"))
        if config.get("peft_type") != PEFT_TYPES[method]:
            raise CheckpointError(f"adapter_config.json holds a {config.get('peft_type')} adapter, not "
                                  f"{PEFT_TYPES[method]}")
        from safetensors.numpy import load_file
        load_file(os.path.join(path, "adapter_model.safetensors"))
        rng = read_json_object(os.path.join(path, RNG_FILE))
        if not all(k in rng for k in ("python", "numpy", "mindspore")):
            raise CheckpointError(f"{RNG_FILE} lacks a generator state")
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read means a damaged file
        raise CheckpointError(f"the adapter or the RNG state does not load: {err}") from None
    try:
        values = ms.load_checkpoint(os.path.join(path, OPTIMIZER_FILE))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{OPTIMIZER_FILE} does not load: {err}") from None
    expected = {param.name: tuple(param.shape) for _, param in optimizer.parameters_and_names()}
    missing = sorted(set(expected) - set(values))
    if missing:
        raise CheckpointError(f"{OPTIMIZER_FILE} lacks {len(missing)} optimizer values, e.g. {missing[0]}")
    for name, shape in expected.items():
        if tuple(values[name].shape) != shape:
            raise CheckpointError(f"{OPTIMIZER_FILE} holds {name} with shape {tuple(values[name].shape)}, the "
                                  f"model has {shape}")
    step = int(values["state_step"].asnumpy().reshape(-1)[0])
    if step != state["global_step"]:
        raise CheckpointError(f"the optimizer has taken {step} steps, but {STATE_FILE} says {state['global_step']}")
    if method == "adalora" and (ADALORA_FILE not in state["files"] or "adalora_rank_pattern" not in state):
        raise CheckpointError(f"the AdaLoRA rank allocator's state ({ADALORA_FILE}) is missing")
    return values, rng


def check_compatible(path, state, run_args):
    """Refuse to resume with settings that differ from the checkpoint's; report what changes are kept."""
    saved = state["args"]
    differences = []
    for option, key in FIXED_SETTINGS:
        if saved.get(key) != run_args[key]:
            old, new = saved.get(key), run_args[key]
            if key == "model_fingerprint":
                old, new = f"{saved.get('model')} (fingerprint {old})", f"{run_args['model']} (fingerprint {new})"
            elif key == "data_fingerprint":
                old, new = f"{saved.get('data')} (rows checksum {old})", f"{run_args['data']} (rows checksum {new})"
            differences.append(f"  {option}: {old!r} in the checkpoint, {new!r} now")
    if run_args["method"] == "adalora" and saved.get("epochs") != run_args["epochs"]:
        differences.append(f"  --epochs: {saved.get('epochs')!r} in the checkpoint, {run_args['epochs']!r} now "
                           "(AdaLoRA's rank budget schedule is fixed by the total number of steps)")
    if differences:
        fail(f"{path} was trained with other settings:\n" + "\n".join(differences) + "\nResuming would mix two "
             "different runs. Run with the checkpoint's settings to resume, or choose another --output-dir to "
             "start a new run.")
    if saved.get("epochs") != run_args["epochs"]:
        print(f"--epochs changed from {saved.get('epochs')} to {run_args['epochs']}: training continues to "
              f"{run_args['epochs']} epochs and the learning-rate schedule is recomputed for the new total")
    if saved.get("save_steps") != run_args["save_steps"]:
        print(f"--save-steps changed from {saved.get('save_steps')} to {run_args['save_steps']}: dropout is reseeded "
              "at the new checkpoint positions, so this run no longer repeats an uninterrupted one exactly")


def save_checkpoint(output_dir, model, optimizer, state, adalora):
    """Write checkpoint-<global_step> through a temporary folder renamed into place when complete."""
    path = os.path.join(output_dir, f"checkpoint-{state['global_step']}")
    if os.path.lexists(path):  # left by a run that went further from a checkpoint that is now damaged
        discard(path)
    with atomic_directory(path) as staging:
        model.save_pretrained(staging)
        ms.save_checkpoint(optimizer, os.path.join(staging, OPTIMIZER_FILE))
        write_json(os.path.join(staging, RNG_FILE), rng_state())
        state = dict(state)
        if adalora:
            np.savez(os.path.join(staging, ADALORA_FILE), **adalora_arrays(model))
            pattern = model.peft_config["default"].rank_pattern
            state["adalora_rank_pattern"] = {k: [bool(x) for x in v] for k, v in (pattern or {}).items()} or None
        state["files"] = {name: file_info(os.path.join(staging, name)) for name in sorted(os.listdir(staging))
                          if name != STATE_FILE and os.path.isfile(os.path.join(staging, name))}
        write_json(os.path.join(staging, STATE_FILE), state)
        delay = float(os.environ.get(CHECKPOINT_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)
    return path


def rotate_checkpoints(output_dir, limit, keep):
    """Delete all but the newest ``limit`` checkpoints (never ``keep``)."""
    if limit <= 0:
        return
    for _, path in list_checkpoints(output_dir)[limit:]:
        if os.path.realpath(path) != os.path.realpath(keep):
            discard(path)


def write_outputs(output_dir, model, method, task, history):
    """The final adapter and metrics.json, each replaced as a whole."""
    adapter = os.path.join(output_dir, "adapter")
    model.save_pretrained(adapter)
    write_json(os.path.join(output_dir, "metrics.json"), {"method": method, "task": task.value, "history": history})
    print(f"adapter saved to {adapter}")


# ----- Ctrl-C -------------------------------------------------------------------------------------------------
class StopRequest:
    """SIGINT/SIGTERM handlers that ask the training loop to stop after the step in progress (and after a checkpoint
    being written); a second signal stops at once.

    SIGTERM counts as Ctrl-C: every MindSpore graph run installs a native SIGINT handler that turns Ctrl-C into
    ``kill(getpid(), SIGTERM)`` (``DefaultIntHandler``), so during training Ctrl-C arrives as SIGTERM.
    """

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print("\nstopping after the current step (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)


def resume_command(argv):
    script = sys.argv[0] if __name__ == "__main__" else os.path.relpath(os.path.abspath(__file__))
    return shlex.join([os.path.basename(sys.executable) or "python", script, *argv])


# ----- main ---------------------------------------------------------------------------------------------------
def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    check_arguments(args)
    try:
        whole = load_csv(args.data)
        table = whole.head(args.max_rows)
        model_folder = resolve_folder(args.model)
        config = AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        fail(str(err))
    model_type = config.model_type
    task = resolve_task(args, model_type, table)
    check_data_and_model(args, table, config, task, limited=len(table) < len(whole))
    tokenizer = Tokenizer.from_pretrained(args.model)
    if task == TaskType.SEQ_CLS and model_type == "gpt2":
        tokenizer.padding_side = "left"  # GPT-2 classifies at the last position
    tokenize = tokenizing_map(task, tokenizer, args)

    train_records, eval_records = train_test_split(table.rows, test_size=0.1, seed=args.seed)
    drop_remainder = len(train_records) >= args.batch_size
    steps_per_epoch = len(train_records) // args.batch_size if drop_remainder else 1
    total_steps = args.epochs * steps_per_epoch
    eval_ds = build_dataset(eval_records, tokenize, args.batch_size)
    used_columns = list(tokenize.input_columns)
    run_args = {"method": args.method, "task": {v: k for k, v in TASKS.items()}[task],
                "model": os.path.abspath(args.model), "model_fingerprint": model_fingerprint(model_folder),
                "data": os.path.abspath(args.data), "data_fingerprint": data_fingerprint(table, used_columns),
                "max_rows": args.max_rows, "text_column": args.text_column,
                "label_column": args.label_column if task == TaskType.SEQ_CLS else None,
                "target_column": args.target_column if task == TaskType.SEQ_2_SEQ_LM else None,
                "r": args.r if args.method in ("lora", "adalora") else None,
                "num_virtual_tokens": args.num_virtual_tokens if args.method in PROMPT_METHODS else None,
                "lr": args.lr, "batch_size": args.batch_size, "max_length": args.max_length,
                "warmup_ratio": args.warmup_ratio, "seed": args.seed, "epochs": args.epochs,
                "save_steps": args.save_steps}

    os.makedirs(args.output_dir, exist_ok=True)
    lock = lock_output(args.output_dir)
    try:
        return _train(args, argv, task, tokenize, train_records, eval_ds, drop_remainder, steps_per_epoch,
                      total_steps, run_args)
    finally:
        lock.close()


def _train(args, argv, task, tokenize, train_records, eval_ds, drop_remainder, steps_per_epoch, total_steps,
           run_args):
    out = args.output_dir
    remove_stale(out)
    for old in ("checkpoint", OPTIMIZER_FILE, STATE_FILE):
        if os.path.exists(os.path.join(out, old)):
            print(f"ignoring {os.path.join(out, old)}: left by an older train.py (checkpoints are now "
                  "checkpoint-<step> folders)")

    damaged, candidates = [], []
    for _, path in list_checkpoints(out):
        try:
            saved = check_checkpoint_files(path)
        except CheckpointError as err:
            print(f"checkpoint {path} is damaged: {err}; falling back to the previous checkpoint")
            damaged.append(path)
            continue
        candidates.append((path, saved))
    if damaged and not candidates:
        fail(f"every checkpoint in {out} is damaged (see above); move them away to start over")
    if candidates:  # refuse other settings before loading anything
        check_compatible(*candidates[0], run_args)

    random.seed(args.seed)
    ms.set_seed(args.seed)
    adalora = args.method == "adalora"
    model = get_peft_model(load_base(task, args.model), peft_config(args.method, task, args, total_steps))
    model.print_trainable_parameters()
    optimizer = optim.AdamW(model.trainable_params(), lr=args.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)

    state = {"format": STATE_FORMAT, "global_step": 0, "epochs_completed": 0, "step_in_epoch": 0,
             "steps_per_epoch": steps_per_epoch, "history": [], "epoch_losses": []}
    resume_path = None
    for index, (path, saved) in enumerate(candidates):
        if index:
            check_compatible(path, saved, run_args)
        try:
            if saved["steps_per_epoch"] != steps_per_epoch:  # the same settings give the same steps per epoch
                raise CheckpointError(f"it has {saved['steps_per_epoch']} steps per epoch, this run has "
                                      f"{steps_per_epoch}")
            values, rng = load_checkpoint_state(path, saved, optimizer, args.method)
        except CheckpointError as err:
            print(f"checkpoint {path} is damaged: {err}; falling back to the previous checkpoint")
            damaged.append(path)
            continue
        not_loaded, _ = ms.load_param_into_net(optimizer, values, strict_load=True)
        if not_loaded:
            raise RuntimeError(f"{path}: {OPTIMIZER_FILE} left {not_loaded} unloaded")
        set_rng_state(rng)
        for _ in range(saved["global_step"]):  # the schedule's position: one step per optimizer step
            scheduler.step()
        if adalora:
            restore_adalora(model, os.path.join(path, ADALORA_FILE), saved["adalora_rank_pattern"])
        state = {key: saved[key] for key in state}
        resume_path = path
        break
    if damaged and resume_path is None:
        fail(f"every checkpoint in {out} is damaged (see above); move them away to start over")
    for path in damaged:
        print(f"moved the damaged checkpoint to {quarantine(path)}")
    if resume_path is not None:
        print(f"resuming from {resume_path}: after epoch {state['epochs_completed'] - 1} "
              f"(step {state['global_step']})" if state["step_in_epoch"] == 0 else
              f"resuming from {resume_path}: epoch {state['epochs_completed']}, step {state['step_in_epoch']} of "
              f"{steps_per_epoch} (step {state['global_step']})")

    if state["global_step"] >= total_steps:
        past = (f" (it is at step {state['global_step']}, past the {total_steps} steps of --epochs {args.epochs})"
                if state["global_step"] > total_steps else "")
        print(f"all {args.epochs} epochs are done in {out}{past}; nothing to train")
        rotate_checkpoints(out, args.save_total_limit, resume_path)
        write_outputs(out, model, args.method, task, state["history"])
        return state["history"]

    with StopRequest() as stop:
        state = _loop(args, model, optimizer, scheduler, task, tokenize, train_records, eval_ds, drop_remainder,
                      steps_per_epoch, total_steps, run_args, state, stop, resume_path)
        finished = state["global_step"] >= total_steps  # _loop returns early only when asked to stop
        if finished:
            write_outputs(out, model, args.method, task, state["history"])
    if not finished:
        latest = list_checkpoints(out)
        where = (f"the last complete checkpoint is {latest[0][1]} (step {latest[0][0]})" if latest else
                 "no checkpoint was written yet, so it starts over")
        print(f"stopped at step {state['global_step']} of {total_steps}; {where}. To resume, run the same command:\n"
              f"  {resume_command(argv)}", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT_STATUS)
    return state["history"]


def new_steps(model, optimizer, seed, global_step, adalora, forward):
    """Reseed dropout for ``global_step`` and compile a fresh train step (and, for AdaLoRA, eval step). They are
    rebuilt at the same positions in every run, so a resumed run's graphs match an uninterrupted run's."""
    reseed_dropout(model, seed, global_step)
    model.set_train(True)
    if forward is None or adalora:
        forward = ForwardStep(model)
    return TrainStep(model, optimizer, return_grads=adalora), forward


def _loop(args, model, optimizer, scheduler, task, tokenize, train_records, eval_ds, drop_remainder, steps_per_epoch,
          total_steps, run_args, state, stop, last_checkpoint):
    adalora = args.method == "adalora"
    progress = not args.no_progress
    global_step, forward = state["global_step"], None
    history, epoch_losses = list(state["history"]), list(state["epoch_losses"])
    while global_step < total_steps:
        epoch, skip = divmod(global_step, steps_per_epoch)
        order = epoch_order(len(train_records), args.seed, epoch)
        dataset = build_dataset([train_records[i] for i in order], tokenize, args.batch_size,
                                drop_remainder=drop_remainder)
        if skip:
            dataset = dataset.skip(skip)
        step, forward = new_steps(model, optimizer, args.seed, global_step, adalora, forward)
        bar = tqdm(dataset.create_dict_iterator(num_epochs=1), total=steps_per_epoch, initial=skip,
                   desc=f"epoch {epoch}", disable=not progress, leave=False)
        for batch in bar:
            output = step(**batch)
            scheduler.step()
            loss = float(output[0] if adalora else output)
            if adalora:
                model.base_model.update_and_allocate(global_step, output[1])
            global_step += 1
            epoch_losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            epoch_done = global_step % steps_per_epoch == 0
            save = epoch_done or (args.save_steps and global_step % args.save_steps == 0)
            if epoch_done:
                evaluation = evaluate(model, eval_ds, progress=progress, forward=forward)
                metrics = {"epoch": epoch, "train_loss": float(np.mean(epoch_losses)),
                           **{f"eval_{k}": v for k, v in evaluation.items()}}
                if task == TaskType.SEQ_CLS:
                    metrics["eval_accuracy"] = classification_accuracy(model, eval_ds, progress=progress,
                                                                       forward=forward)
                model.set_train(True)
                print(json.dumps(metrics))
                history.append(metrics)
                epoch_losses = []
            if save:
                state = {"format": STATE_FORMAT, "global_step": global_step,
                         "epochs_completed": global_step // steps_per_epoch,
                         "step_in_epoch": global_step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                         "history": history, "epoch_losses": epoch_losses, "args": run_args,
                         "dataset": {"epoch": global_step // steps_per_epoch,
                                     "rows_done": (global_step % steps_per_epoch) * args.batch_size,
                                     "order": "numpy.random.default_rng([seed, epoch]).permutation"},
                         "lr_schedule": {"step": global_step, "peak": args.lr, "total_steps": total_steps,
                                         "warmup_steps": int(args.warmup_ratio * total_steps),
                                         "note": f"the step is the optimizer's state_step in {OPTIMIZER_FILE}"},
                         "dropout_seeded_at_step": global_step}
                last_checkpoint = save_checkpoint(args.output_dir, model, optimizer, state, adalora)
                rotate_checkpoints(args.output_dir, args.save_total_limit, last_checkpoint)
            if stop.signal is not None:
                bar.close()
                return {"global_step": global_step, "history": history}
            if save and not epoch_done:  # a mid-epoch checkpoint: reseed, as a run resuming from it will
                step, forward = new_steps(model, optimizer, args.seed, global_step, adalora, forward)
            if epoch_done:
                break
        bar.close()
        if global_step % steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} ended after step {global_step}, expected {steps_per_epoch} steps per "
                               "epoch")
    return {"global_step": global_step, "history": history}


if __name__ == "__main__":
    main()
