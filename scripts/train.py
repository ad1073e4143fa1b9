"""Command-line PEFT trainer: a local model folder and a CSV in, an adapter and metrics JSON out.

    python scripts/train.py --method lora --model path/to/model --data tutorials/data/movie_reviews.csv \
        --output-dir runs/lora --epochs 3 --lr 5e-3 --batch-size 16

The model folder holds config.json, model.safetensors and tokenizer.json. The task follows from the model and the
data: T5/mT5 models learn seq2seq (``--text-column`` -> ``--target-column``), other models classify when the CSV
has ``--label-column`` and otherwise learn causal LM on ``--text-column``. After every epoch the adapter, the
optimizer state and trainer_state.json go to OUTPUT/checkpoint; running the same command again resumes after the
last finished epoch. The final adapter goes to OUTPUT/adapter and the per-epoch metrics to OUTPUT/metrics.json.
"""
import argparse
import json
import os
import sys

import mindspore as ms
from mindspore import nn

import mindpeft
from mindpeft import PeftModel, TaskType, get_peft_model
from mindpeft.models import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                             AutoModelForSequenceClassification, Tokenizer)
from mindpeft.training import (CausalLMTokenize, ClassificationTokenize, Seq2SeqTokenize, TrainStep, build_dataset,
                               classification_accuracy, evaluate, linear_schedule_with_warmup, read_csv, train_epoch,
                               train_test_split)

METHODS = ("lora", "prefix", "ptuning", "prompt", "ia3", "adalora")
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.ckpt"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--model", required=True, help="local model folder (config.json, model.safetensors, tokenizer.json)")
    parser.add_argument("--data", required=True, help="CSV file with a header row")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label", help="integer class labels (classification)")
    parser.add_argument("--target-column", default="text_label", help="target text (seq2seq)")
    parser.add_argument("--max-rows", type=int, default=0, help="use only the first N rows (0: all)")
    parser.add_argument("--r", type=int, default=8, help="rank for lora / target rank for adalora")
    parser.add_argument("--num-virtual-tokens", type=int, default=8)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def infer_task(model_type, records, args):
    if model_type in ("t5", "mt5"):
        return TaskType.SEQ_2_SEQ_LM
    if args.label_column in records[0]:
        return TaskType.SEQ_CLS
    return TaskType.CAUSAL_LM


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
    auto = {TaskType.SEQ_2_SEQ_LM: AutoModelForSeq2SeqLM, TaskType.SEQ_CLS: AutoModelForSequenceClassification,
            TaskType.CAUSAL_LM: AutoModelForCausalLM}[task]
    return auto.from_pretrained(path)


def tokenizing_map(task, tokenizer, args):
    if task == TaskType.SEQ_2_SEQ_LM:
        return Seq2SeqTokenize(tokenizer, args.max_length, 8, args.text_column, args.target_column)
    if task == TaskType.SEQ_CLS:
        return ClassificationTokenize(tokenizer, args.max_length, args.text_column, args.label_column)
    return CausalLMTokenize(tokenizer, args.max_length, args.text_column)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ms.set_seed(args.seed)
    records = read_csv(args.data)[: args.max_rows or None]
    if not records:
        raise SystemExit(f"{args.data} has no rows")
    model_type = AutoConfig.from_pretrained(args.model).model_type
    task = infer_task(model_type, records, args)
    tokenizer = Tokenizer.from_pretrained(args.model)
    if task == TaskType.SEQ_CLS and model_type == "gpt2":
        tokenizer.padding_side = "left"  # GPT-2 classifies at the last position
    tokenize = tokenizing_map(task, tokenizer, args)
    train_records, eval_records = train_test_split(records, test_size=0.1, seed=args.seed)
    train_ds = build_dataset(train_records, tokenize, args.batch_size, shuffle=True, seed=args.seed,
                             drop_remainder=len(train_records) >= args.batch_size)
    eval_ds = build_dataset(eval_records, tokenize, args.batch_size)
    steps_per_epoch = train_ds.get_dataset_size()
    total_steps = args.epochs * steps_per_epoch

    checkpoint = os.path.join(args.output_dir, "checkpoint")
    state_path = os.path.join(checkpoint, STATE_FILE)
    state = {"epoch": -1, "global_step": 0, "history": []}
    if os.path.isfile(state_path):
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("method") != args.method:
            raise SystemExit(f"{args.output_dir} holds a {state.get('method')} run; use another --output-dir")
        model = PeftModel.from_pretrained(load_base(task, args.model), checkpoint, is_trainable=True)
        print(f"resuming after epoch {state['epoch']} (step {state['global_step']})")
    else:
        model = get_peft_model(load_base(task, args.model), peft_config(args.method, task, args, total_steps))
    model.print_trainable_parameters()
    if state["epoch"] + 1 >= args.epochs:
        print(f"all {args.epochs} epochs are done in {args.output_dir}; nothing to train")
        return state["history"]

    schedule = linear_schedule_with_warmup(args.lr, int(args.warmup_ratio * total_steps), total_steps)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=schedule)
    if os.path.isfile(os.path.join(checkpoint, OPTIMIZER_FILE)):
        ms.load_param_into_net(optimizer, ms.load_checkpoint(os.path.join(checkpoint, OPTIMIZER_FILE)))
    adalora = args.method == "adalora"
    step = TrainStep(model, optimizer, return_grads=adalora)

    def on_step(index, output):
        if adalora:
            model.base_model.update_and_allocate(state["global_step"] + index, output[1])

    for epoch in range(state["epoch"] + 1, args.epochs):
        train_loss = train_epoch(step, train_ds, desc=f"epoch {epoch}", progress=not args.no_progress,
                                 on_step=on_step)
        metrics = {"epoch": epoch, "train_loss": train_loss,
                   **{f"eval_{k}": v for k, v in evaluate(model, eval_ds, progress=not args.no_progress).items()}}
        if task == TaskType.SEQ_CLS:
            metrics["eval_accuracy"] = classification_accuracy(model, eval_ds, progress=not args.no_progress)
        print(json.dumps(metrics))
        state = {"method": args.method, "epoch": epoch, "global_step": state["global_step"] + steps_per_epoch,
                 "history": state["history"] + [metrics]}
        model.save_pretrained(checkpoint)
        ms.save_checkpoint(optimizer, os.path.join(checkpoint, OPTIMIZER_FILE))
        with open(state_path, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2)

    model.save_pretrained(os.path.join(args.output_dir, "adapter"))
    with open(os.path.join(args.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({"method": args.method, "task": task.value, "history": state["history"]}, f, indent=2)
    print(f"adapter saved to {os.path.join(args.output_dir, 'adapter')}")
    return state["history"]


if __name__ == "__main__":
    main()
