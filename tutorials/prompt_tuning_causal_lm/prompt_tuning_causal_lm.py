"""
# Prompt tuning for causal language modeling with BLOOM

HF peft's prompt tuning guide (`bigscience/bloomz-560m` on RAFT's twitter_complaints) with local data: a tiny BLOOM
learns to answer `complaint` or `no complaint` after a tweet. Prompt tuning trains only 8 virtual token embeddings
put before every input, initialised from the words of "Classify if the tweet is a complaint or not:"
(`PromptTuningInit.TEXT`); the model stays frozen. Each row becomes `Tweet text : <tweet> Label : <label>` with the
loss on the label only, and the accuracy compares what `generate` writes after `Label :` with the label.

Everything is local and written by `scripts/make_tutorial_data.py`: `tutorials/data/twitter_complaints.csv` (300
synthetic tweets, RAFT's columns `ID`, `Tweet text`, `Label` with 1 complaint and 2 no complaint) and
`tutorials/data/tiny-bloom-tweets` (a 2-layer BLOOM with a word-level tokenizer, pretrained on other tweets followed
by customer-service replies and on this prompt format with *random* labels: it writes a label after `Label :`, but
not yet the right one).

Run it from the repository root:

    python tutorials/prompt_tuning_causal_lm/prompt_tuning_causal_lm.py

| setting (environment variable) | default | |
| --- | --- | --- |
| `TUTORIAL_EPOCHS` | `5` | training epochs |
| `TUTORIAL_LR` | `3e-2` | peak learning rate |
| `TUTORIAL_SEED` | `0` | `TrainingArguments.seed`: shuffling |
| `TUTORIAL_OUTPUT` | `outputs/` beside this file | where the adapter is saved |
| `TUTORIAL_PROGRESS` | `1` | tqdm progress bars (`0`: the logs are printed instead) |

On a 2-core x86 CPU with MindSpore 2.10 it takes about 15 seconds and ends with (60 evaluation tweets, 33 of
them complaints):

    | model | accuracy |
    | --- | --- |
    | base model | 58.33% |
    | + prompt from the init text, untrained | 51.67% |
    | + prompt tuning | 100.00% |
    ['adapter_config.json', 'adapter_model.safetensors']
    'Tweet text : @homepower i was charged twice for my bill this morning , please fix this Label : ' -> 'complaint'

Two runs with the same seed print the same numbers on the same machine.
"""

# %%
import os

import numpy as np
import mindspore as ms

from mindpeft import (PeftConfig, PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, Trainer,
                      TrainingArguments, get_peft_model, set_seed)
from mindpeft.models import AutoModelForCausalLM, Tokenizer
from mindpeft.training import read_csv, train_test_split

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
DATA = os.path.join(HERE, "..", "data")
OUTPUT = os.environ.get("TUTORIAL_OUTPUT", os.path.join(HERE, "outputs"))
EPOCHS = int(os.environ.get("TUTORIAL_EPOCHS", 5))
LR = float(os.environ.get("TUTORIAL_LR", 3e-2))
SEED = int(os.environ.get("TUTORIAL_SEED", 0))
PROGRESS = os.environ.get("TUTORIAL_PROGRESS", "1") == "1"
TEXT_COLUMN, LABEL_COLUMN = "Tweet text", "text_label"
BATCH_SIZE, EVAL_BATCH_SIZE, MAX_LENGTH = 8, 20, 32  # 60 eval rows: 3 full batches, so one compiled eval shape
set_seed(SEED)  # Python, numpy and MindSpore: the same seed prints the same numbers

# %% [markdown]
# ## Data: tweets and their labels as text

# %%
classes = ["Unlabeled", "complaint", "no complaint"]  # RAFT's names of the Label values 0, 1 and 2
records = read_csv(os.path.join(DATA, "twitter_complaints.csv"))
records = [{**r, LABEL_COLUMN: classes[int(r["Label"])]} for r in records]
train_records, eval_records = train_test_split(records, test_size=0.2, seed=0)  # the same split for every seed
print(f"{len(train_records)} training and {len(eval_records)} evaluation rows; first: {train_records[0]}")

# %% [markdown]
# ## The tokenizer and the pre-processing
# The guide's `preprocess_function`, one row at a time: the prompt's ids, then the label's and an end-of-sequence
# token; `labels` are -100 (no loss) on the prompt; rows are padded on the left to `MAX_LENGTH`, so that every one
# ends with its label.

# %%
base_dir = os.path.join(DATA, "tiny-bloom-tweets")
tokenizer = Tokenizer.from_pretrained(base_dir)
tokenizer.padding_side = "left"


def prompt(record):
    return f"{TEXT_COLUMN} : {record[TEXT_COLUMN]} Label : "


def preprocess(record):
    prompt_ids = tokenizer(prompt(record), padding=False)["input_ids"]
    label_ids = tokenizer(record[LABEL_COLUMN], padding=False)["input_ids"] + [tokenizer.eos_token_id]
    padding = MAX_LENGTH - len(prompt_ids) - len(label_ids)
    return {"input_ids": np.array([tokenizer.pad_token_id] * padding + prompt_ids + label_ids)[:MAX_LENGTH],
            "attention_mask": np.array([0] * padding + [1] * (len(prompt_ids) + len(label_ids)))[:MAX_LENGTH],
            "labels": np.array([-100] * (padding + len(prompt_ids)) + label_ids)[:MAX_LENGTH]}


train_dataset = [preprocess(r) for r in train_records]
eval_dataset = [preprocess(r) for r in eval_records]
print(tokenizer.decode(train_dataset[0]["input_ids"]))

# %% [markdown]
# ## Accuracy through generation
# Greedy decoding after each prompt until the end-of-sequence token; the text it writes must equal the label.


# %%
def generate_labels(model, records):
    predictions = []
    for start in range(0, len(records), EVAL_BATCH_SIZE):
        inputs = tokenizer([prompt(r) for r in records[start:start + EVAL_BATCH_SIZE]], max_length=MAX_LENGTH,
                           padding="max_length")
        outputs = model.generate(input_ids=ms.Tensor(inputs["input_ids"]),
                                 attention_mask=ms.Tensor(inputs["attention_mask"]), max_new_tokens=3,
                                 eos_token_id=tokenizer.eos_token_id)
        predictions += tokenizer.batch_decode(outputs.asnumpy()[:, MAX_LENGTH:])
    return [p.strip() for p in predictions]


def accuracy(model, records):
    predictions = generate_labels(model, records)
    return float(np.mean([p == r[LABEL_COLUMN] for p, r in zip(predictions, records)])), predictions


model = AutoModelForCausalLM.from_pretrained(base_dir)
base_accuracy, predictions = accuracy(model, eval_records)
print(f"base model: accuracy {base_accuracy:.2%}; first predictions {predictions[:4]}")

# %% [markdown]
# ## Prompt tuning
# With `PromptTuningInit.TEXT`, the virtual tokens start as the embeddings of the init text's tokens (cut or
# repeated to `num_virtual_tokens`), read with the tokenizer at `tokenizer_name_or_path`.

# %%
peft_config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.TEXT,
                                 num_virtual_tokens=8,
                                 prompt_tuning_init_text="Classify if the tweet is a complaint or not:",
                                 tokenizer_name_or_path=base_dir)
model = get_peft_model(model, peft_config)
model.print_trainable_parameters()
init_accuracy, predictions = accuracy(model, eval_records)
print(f"prompt from the init text, untrained: accuracy {init_accuracy:.2%}; first predictions {predictions[:4]}")

# %% [markdown]
# ## Training
# AdamW with a linear decay to 0 and no warm-up, as in the guide; the evaluation loss after every epoch.

# %%
args = TrainingArguments(output_dir=os.path.join(OUTPUT, "trainer"), learning_rate=LR, num_train_epochs=EPOCHS,
                         per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=EVAL_BATCH_SIZE,
                         eval_strategy="epoch", logging_strategy="epoch", save_strategy="no",
                         dataloader_drop_last=True, seed=SEED, disable_tqdm=not PROGRESS)
trainer = Trainer(model, args, train_dataset=train_dataset, eval_dataset=eval_dataset)
trainer.train()

# %% [markdown]
# ## Before and after

# %%
tuned_accuracy, predictions = accuracy(model, eval_records)
print("| model | accuracy |\n| --- | --- |")
print(f"| base model | {base_accuracy:.2%} |\n| + prompt from the init text, untrained | {init_accuracy:.2%} |\n"
      f"| + prompt tuning | {tuned_accuracy:.2%} |")
adapter_dir = os.path.join(OUTPUT, "bloom-prompt-tuning-twitter-complaints")
model.save_pretrained(adapter_dir)
print(sorted(os.listdir(adapter_dir)))

# %% [markdown]
# ## Inference with the saved adapter

# %%
config = PeftConfig.from_pretrained(adapter_dir)
model = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path)
model = PeftModel.from_pretrained(model, adapter_dir)

tweet = {TEXT_COLUMN: "@homepower i was charged twice for my bill this morning , please fix this"}
inputs = tokenizer(prompt(tweet))
outputs = model.generate(input_ids=ms.Tensor(inputs["input_ids"][None]),
                         attention_mask=ms.Tensor(inputs["attention_mask"][None]), max_new_tokens=3,
                         eos_token_id=tokenizer.eos_token_id)
print(f"{prompt(tweet)!r} -> {tokenizer.decode(outputs.asnumpy()[0, len(inputs['input_ids']):])!r}")
