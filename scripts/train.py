"""Command-line PEFT training over mindpeft.Trainer: a local model folder and a CSV in, an adapter and metrics out.

    python scripts/train.py --method lora --model path/to/model --data tutorials/data/movie_reviews.csv \\
        --output-dir runs/lora --epochs 3 --lr 5e-3 --batch-size 16 [--nproc 2]

The model folder holds config.json, model.safetensors and tokenizer.json. The task is --task, or follows from the
model and the data: T5/mT5 models learn seq2seq (--text-column -> --target-column), other models classify the
integer labels of --label-column; a CSV without that column needs --task causal_lm. Data and model are checked first.

Every epoch the Trainer logs the training loss, evaluates on a held-out tenth of the rows (loss; accuracy for
classification and seq2seq) and writes OUTPUT/checkpoint-<step> (also every --save-steps steps), keeping the newest
--save-total-limit. The same command again resumes from the newest checkpoint that passes its checksums (an older
one when it is damaged) and ends with the same adapter, bit for bit, as an uninterrupted run; other settings are
refused (--epochs may change). Ctrl-C or SIGTERM stops after the step in progress with exit status 130. The end:
OUTPUT/adapter, OUTPUT/metrics.json (per epoch) and OUTPUT/trainer_state.json (scripts/plot_metrics.py draws it).
--nproc N trains data-parallel on N local msrun workers (logs in OUTPUT/msrun_logs), each taking batch-size / N rows.
"""
import argparse
import errno
import fcntl
import hashlib
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys

import numpy as np

import mindpeft
from mindpeft import TaskType, get_peft_model, set_seed
from mindpeft.models import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                             AutoModelForSequenceClassification, Tokenizer)
from mindpeft.training import (CausalLMTokenize, ClassificationTokenize, Seq2SeqTokenize, Seq2SeqTrainer,
                               Seq2SeqTrainingArguments, Trainer, TrainerCallback, TrainerState, TrainingArguments,
                               default_data_collator, train_test_split)
from mindpeft.training.callbacks import ExportableState, StopOnSignalCallback
from mindpeft.training.checkpoint import file_info, list_checkpoints
from mindpeft.training.data import check_columns, check_labels, check_texts, load_csv
from mindpeft.training.distributed import init_distributed, launched_by_msrun
from mindpeft.training.trainer import STATE_FILE, newest_checkpoint
from mindpeft.utils.hub import resolve_folder
from mindpeft.utils.io import write_json

METHODS = ("lora", "prefix", "ptuning", "prompt", "ia3", "adalora")
PROMPT_METHODS = ("prefix", "ptuning", "prompt")
TASKS = {"seq_cls": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}
TASK_NAMES = {task: name for name, task in TASKS.items()}
AUTO_CLASSES = {TaskType.SEQ_2_SEQ_LM: AutoModelForSeq2SeqLM, TaskType.SEQ_CLS: AutoModelForSequenceClassification,
                TaskType.CAUSAL_LM: AutoModelForCausalLM}
TARGET_MAX_LENGTH = 8  # seq2seq target tokens
LOCK_FILE = ".train.lock"
INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, for SIGTERM too
RESUME_ENV = "MINDPEFT_TRAIN_RESUME_FROM"  # the checkpoint the launcher chose, for its msrun workers
# Options a resumed run must share with its checkpoint; --epochs may change (not for AdaLoRA), the rest are free.
FIXED_SETTINGS = ("--method", "--task", "--model", "--data", "--max-rows", "--text-column", "--label-column",
                  "--target-column", "--r", "--num-virtual-tokens", "--lr", "--batch-size", "--max-length",
                  "--warmup-ratio", "--max-grad-norm", "--seed")


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
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step, over all workers")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per text (truncated or padded)")
    parser.add_argument("--text-column", default="sentence", help="input text column")
    parser.add_argument("--label-column", default="label", help="integer class labels (classification)")
    parser.add_argument("--target-column", default="text_label", help="target text (seq2seq)")
    parser.add_argument("--max-rows", type=int, default=0, help="use only the first N rows (0: all)")
    parser.add_argument("--r", type=int, default=8, help="rank for lora / target rank for adalora")
    parser.add_argument("--num-virtual-tokens", type=int, default=8, help="virtual tokens (prefix/ptuning/prompt)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps spent warming up")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clip gradients to this norm (0: never)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffling, dropout and init")
    parser.add_argument("--save-steps", type=int, default=0,
                        help="also checkpoint every N steps within an epoch (0: only at the end of each epoch); "
                             "each checkpoint reseeds dropout and so recompiles the train step")
    parser.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (0: all)")
    parser.add_argument("--nproc", type=int, default=1, help="data-parallel worker processes (started with msrun)")
    parser.add_argument("--no-progress", action="store_true", help="print the logs instead of progress bars")
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
                             ("--seed", args.seed, 0), ("--nproc", args.nproc, 1)):
        if value < low:
            fail(f"{name} must be at least {low}, got {value}")
    if not args.lr > 0:
        fail(f"--lr must be positive, got {args.lr}")
    if not 0.0 <= args.warmup_ratio <= 1.0:
        fail(f"--warmup-ratio must be between 0 and 1, got {args.warmup_ratio}")
    if not args.max_grad_norm >= 0:
        fail(f"--max-grad-norm must be 0 or more, got {args.max_grad_norm}")
    if args.batch_size % args.nproc:
        fail(f"--batch-size {args.batch_size} does not split evenly over --nproc {args.nproc} workers")
    if args.nproc > 1 and not launched_by_msrun() and shutil.which("msrun") is None:
        fail("--nproc needs MindSpore's msrun launcher, which is not on PATH")
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
        fail(f"{args.model} is a {model_type!r} model, which cannot do task {TASK_NAMES[task]}; that task needs one "
             f"of {sorted(supported)}")
    return task


def position_limit(config):
    """(positions in the model's position table, its config field); (None, None) without a table (T5)."""
    if config.model_type == "gpt2":
        return int(config.n_positions), "n_positions"
    if config.model_type in ("bert", "roberta"):  # RoBERTa numbers the positions from pad_token_id + 1
        offset = int(config.pad_token_id) + 1 if config.model_type == "roberta" else 0
        return int(config.max_position_embeddings) - offset, "max_position_embeddings"
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
        check_texts(table, args.text_column)
        if task == TaskType.SEQ_CLS:
            check_columns(table, {args.label_column: "--label-column"})
            check_labels(table, args.label_column, int(getattr(config, "num_labels", 2)))
        if task == TaskType.SEQ_2_SEQ_LM:
            check_columns(table, {args.target_column: "--target-column"})
            check_texts(table, args.target_column)
    except ValueError as err:
        fail(str(err))
    limit, name = position_limit(config)
    virtual = args.num_virtual_tokens if args.method in PROMPT_METHODS else 0
    if limit is not None and args.max_length + virtual > limit:
        extra = f" + --num-virtual-tokens {virtual}" if virtual else ""
        fail(f"--max-length {args.max_length}{extra} is more than the {limit} positions of the model's position "
             f"table ({name} in {os.path.join(args.model, 'config.json')}); use --max-length {limit - virtual} "
             "or less")


# ----- the run: data, settings, model -------------------------------------------------------------------------
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


def prepare(args):
    """Read and check the data and the model's config, tokenize the rows and fix the run's settings; fails before
    anything is written."""
    try:
        whole = load_csv(args.data)
        table = whole.head(args.max_rows)
        model_folder = resolve_folder(args.model)
        config = AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        fail(str(err))
    task = resolve_task(args, config.model_type, table)
    check_data_and_model(args, table, config, task, limited=len(table) < len(whole))
    try:
        tokenizer = Tokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        fail(str(err))
    if task == TaskType.SEQ_CLS and config.model_type == "gpt2":
        tokenizer.padding_side = "left"  # GPT-2 classifies at the last position
    if task == TaskType.SEQ_CLS:
        tokenize = ClassificationTokenize(tokenizer, args.max_length, args.text_column, args.label_column)
    elif task == TaskType.CAUSAL_LM:
        tokenize = CausalLMTokenize(tokenizer, args.max_length, args.text_column)
    else:
        tokenize = Seq2SeqTokenize(tokenizer, args.max_length, TARGET_MAX_LENGTH, args.text_column, args.target_column)
    train_records, eval_records = train_test_split(table.rows, test_size=0.1, seed=args.seed)

    def rows(records):
        return [dict(zip(tokenize.output_columns, tokenize(*(r[c] for c in tokenize.input_columns))))
                for r in records]

    settings = {f"--{name.replace('_', '-')}": value for name, value in vars(args).items()}
    settings.update({"--task": TASK_NAMES[task], "--model": model_fingerprint(model_folder),
                     "--data": data_fingerprint(table, tokenize.input_columns),
                     "model_path": os.path.abspath(args.model), "data_path": os.path.abspath(args.data)})
    unused = {"--label-column": task != TaskType.SEQ_CLS, "--target-column": task != TaskType.SEQ_2_SEQ_LM,
              "--r": args.method not in ("lora", "adalora"), "--num-virtual-tokens": args.method not in PROMPT_METHODS}
    settings.update({option: None for option, skip in unused.items() if skip})
    return argparse.Namespace(task=task, tokenizer=tokenizer, train_rows=rows(train_records),
                              eval_rows=rows(eval_records), settings=settings)


def peft_config(args, task, total_steps):
    common = dict(task_type=task)
    if args.method == "lora":
        return mindpeft.LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.05, **common)
    if args.method == "adalora":
        return mindpeft.AdaLoraConfig(target_r=args.r, init_r=args.r + 4, lora_alpha=2 * args.r,
                                      total_step=total_steps, tinit=total_steps // 10, tfinal=total_steps // 5,
                                      **common)
    if args.method == "ia3":
        return mindpeft.IA3Config(**common)
    if args.method == "prompt":
        return mindpeft.PromptTuningConfig(num_virtual_tokens=args.num_virtual_tokens, **common)
    if args.method == "prefix":
        return mindpeft.PrefixTuningConfig(num_virtual_tokens=args.num_virtual_tokens, **common)
    return mindpeft.PromptEncoderConfig(num_virtual_tokens=args.num_virtual_tokens, encoder_hidden_size=64, **common)


def classification_accuracy(prediction):
    return {"accuracy": float((np.asarray(prediction.predictions).argmax(-1) == prediction.label_ids).mean())}


def generation_accuracy(tokenizer):
    """``compute_metrics`` for generated ids: the share of rows whose decoded text is the target's."""
    def compute(prediction):
        texts = [tokenizer.batch_decode(np.where(ids < 0, tokenizer.pad_token_id, ids), skip_special_tokens=True)
                 for ids in (prediction.predictions, prediction.label_ids)]
        return {"accuracy": float(np.mean([a.strip() == b.strip() for a, b in zip(*texts)]))}
    return compute


# ----- callbacks ----------------------------------------------------------------------------------------------
class RunSettings(TrainerCallback, ExportableState):
    """This command's settings, written into every checkpoint's trainer_state.json (``stateful_callbacks``)."""

    def __init__(self, settings):
        self.settings = settings

    def state(self):
        return {"args": {"settings": self.settings}, "attributes": {}}


class SaveEverySteps(TrainerCallback):
    """Also checkpoint every ``steps`` optimizer steps within an epoch (each epoch's end is checkpointed anyway)."""

    def __init__(self, steps):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if self.steps and state.global_step % self.steps == 0 and not float(state.epoch).is_integer():
            control.should_save = True


# ----- resuming -----------------------------------------------------------------------------------------------
def lock_output(output_dir):
    """An exclusive lock on the output folder, held until the returned file is closed (one run per folder)."""
    handle = open(os.path.join(output_dir, LOCK_FILE), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        if err.errno in (errno.EAGAIN, errno.EACCES):
            fail(f"another train.py run is writing to {output_dir}; wait for it to finish or stop it")
        raise
    return handle


def shown(settings, option):
    if option in ("--model", "--data"):
        kind = "fingerprint" if option == "--model" else "rows checksum"
        return f"{settings.get(option[2:] + '_path')} ({kind} {settings.get(option)})"
    return settings.get(option)


def resume_point(output_dir, settings):
    """The newest valid checkpoint in ``output_dir`` (``None``: start afresh); refuses one made with other
    settings."""
    try:
        found = newest_checkpoint(output_dir)
    except ValueError as err:
        fail(str(err))
    if found is None:
        return None
    path, state = found
    saved = ((state.stateful_callbacks or {}).get(RunSettings.__name__) or {}).get("args", {}).get("settings")
    if not isinstance(saved, dict):
        fail(f"{path} holds no train.py settings (in {STATE_FILE}): it was written by something else; choose "
             "another --output-dir")
    differences = [f"  {option}: {shown(saved, option)!r} in the checkpoint, {shown(settings, option)!r} now"
                   for option in FIXED_SETTINGS if saved.get(option) != settings[option]]
    if settings["--method"] == "adalora" and saved.get("--epochs") != settings["--epochs"]:
        differences.append(f"  --epochs: {saved.get('--epochs')!r} in the checkpoint, {settings['--epochs']!r} now "
                           "(AdaLoRA's rank budget schedule is fixed by the total number of steps)")
    if differences:
        fail(f"{path} was trained with other settings:\n" + "\n".join(differences) + "\nResuming would mix two "
             "different runs. Run with the checkpoint's settings to resume, or choose another --output-dir to "
             "start a new run.")
    if saved.get("--epochs") != settings["--epochs"]:
        print(f"--epochs changed from {saved.get('--epochs')} to {settings['--epochs']}: training continues to "
              f"{settings['--epochs']} epochs and the learning-rate schedule is recomputed for the new total")
    if saved.get("--save-steps") != settings["--save-steps"]:
        print(f"--save-steps changed from {saved.get('--save-steps')} to {settings['--save-steps']}: dropout is "
              "reseeded at the new checkpoint positions, so this run no longer repeats an uninterrupted one exactly")
    print(f"resuming from {path} (step {state.global_step})")
    return path


def resume_command(argv):
    script = sys.argv[0] if __name__ == "__main__" else os.path.relpath(os.path.abspath(__file__))
    return shlex.join([os.path.basename(sys.executable) or "python", script, *argv])


# ----- training -----------------------------------------------------------------------------------------------
def epoch_history(log_history):
    """Per-epoch metrics from the Trainer's log history: the epoch's training loss and its evaluation."""
    losses = {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry}
    return [{"epoch": round(entry["epoch"]), "step": entry["step"], "train_loss": losses.get(entry["step"]),
             **{k: v for k, v in entry.items() if k.startswith("eval_") and not k.endswith(("runtime", "second"))}}
            for entry in log_history if "eval_loss" in entry]


def train(args, run, argv, resume):
    """Train with the Trainer (resuming from the checkpoint ``resume``), then write the adapter and metrics.json
    (rank 0); returns the per-epoch metrics."""
    main_process = init_distributed().is_main
    per_device, drop_last = args.batch_size // args.nproc, len(run.train_rows) >= args.batch_size
    # the Trainer's count: each worker takes every nproc-th row (wrapping around to even the shares)
    total_steps = args.epochs * (math.ceil(len(run.train_rows) / args.nproc) // per_device if drop_last else 1)
    set_seed(args.seed)
    try:
        base = AUTO_CLASSES[run.task].from_pretrained(args.model)
    except (OSError, ValueError) as err:  # damaged or mismatched weights: named by the loader
        fail(str(err))
    model = get_peft_model(base, peft_config(args, run.task, total_steps))
    if main_process:
        model.print_trainable_parameters()
    seq2seq = run.task == TaskType.SEQ_2_SEQ_LM
    options = dict(output_dir=args.output_dir, learning_rate=args.lr, num_train_epochs=args.epochs,
                   per_device_train_batch_size=per_device, per_device_eval_batch_size=per_device,
                   warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm, seed=args.seed,
                   logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch",
                   save_total_limit=args.save_total_limit, dataloader_drop_last=drop_last,
                   disable_tqdm=args.no_progress)
    if seq2seq:
        options.update(predict_with_generate=True, generation_max_length=TARGET_MAX_LENGTH + 1)
    metrics = {TaskType.SEQ_CLS: classification_accuracy,
               TaskType.SEQ_2_SEQ_LM: generation_accuracy(run.tokenizer)}.get(run.task)
    stop = StopOnSignalCallback()
    callbacks = [RunSettings(run.settings), SaveEverySteps(args.save_steps)] + ([] if args.nproc > 1 else [stop])
    trainer = (Seq2SeqTrainer if seq2seq else Trainer)(
        model, (Seq2SeqTrainingArguments if seq2seq else TrainingArguments)(**options),
        data_collator=default_data_collator, train_dataset=run.train_rows, eval_dataset=run.eval_rows,
        processing_class=run.tokenizer, compute_metrics=metrics, callbacks=callbacks)
    start = TrainerState.load_from_json(os.path.join(resume, STATE_FILE)).global_step if resume else 0
    trainer.train(resume_from_checkpoint=resume)
    if stop.stopped:
        latest = list_checkpoints(args.output_dir)
        where = (f"the last complete checkpoint is {latest[0][1]} (step {latest[0][0]})" if latest else
                 "no checkpoint was written yet, so it starts over")
        print(f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; {where}. To resume, run "
              f"the same command:\n  {resume_command(argv)}", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT_STATUS)
    if main_process and start >= trainer.state.max_steps:
        past = f" (the checkpoint is at step {start}, past them)" if start > trainer.state.max_steps else ""
        print(f"all {trainer.state.max_steps} steps of --epochs {args.epochs} are done in {args.output_dir}{past}; "
              "nothing to train")
    history = epoch_history(trainer.state.log_history)
    adapter = os.path.join(args.output_dir, "adapter")
    trainer.save_model(adapter)
    trainer.save_state()
    if main_process:
        write_json(os.path.join(args.output_dir, "metrics.json"),
                   {"method": args.method, "task": run.task.value, "history": history})
        print(f"adapter saved to {adapter}")
    return history


def launch_workers(args, argv, resume):
    """Run this command again on ``--nproc`` workers under msrun; returns msrun's exit status."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [shutil.which("msrun"), f"--worker_num={args.nproc}", f"--local_worker_num={args.nproc}",
               f"--master_port={port}", "--join=True", f"--log_dir={os.path.join(args.output_dir, 'msrun_logs')}",
               os.path.abspath(__file__), *argv]
    process = subprocess.Popen(command, env={**os.environ, RESUME_ENV: resume or ""})
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches msrun and the workers too
        process.wait()
        return INTERRUPTED_EXIT_STATUS


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    check_arguments(args)
    worker = launched_by_msrun()
    if worker:
        init_distributed()  # in msrun's scheduler process this serves the workers, then ends the process
    run = prepare(args)
    if worker:
        return train(args, run, argv, os.environ.get(RESUME_ENV) or None)
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as err:
        fail(f"cannot create --output-dir {args.output_dir}: {err.strerror}")
    with lock_output(args.output_dir):
        resume = resume_point(args.output_dir, run.settings)
        if args.nproc > 1:
            raise SystemExit(launch_workers(args, argv, resume))
        return train(args, run, argv, resume)


if __name__ == "__main__":
    main()
