"""
# LoRA for sequence classification with GPT-2

The SST-2 flow of HF peft's seeds: measure the base model's accuracy, put LoRA on GPT-2's `c_attn` and `c_proj`
(the `score` head is trained too, as `modules_to_save`), train with `mindspore.experimental.optim.AdamW`, a linear
warm-up schedule and a compiled `value_and_grad` step, and compare accuracy before and after. The data is
`tutorials/data/movie_reviews.csv` (synthetic, 300 rows) and the model a tiny GPT-2 with a locally trained
tokenizer, shipped in `tutorials/data/tiny-gpt2-reviews`, so nothing is downloaded.

Run it from the repository root:

    python tutorials/lora_sequence_classification/lora_sequence_classification.py

| setting (environment variable) | default | |
| --- | --- | --- |
| `TUTORIAL_EPOCHS` | `6` | training epochs |
| `TUTORIAL_LR` | `5e-3` | peak learning rate |
| `TUTORIAL_SEED` | `0` | `mindpeft.set_seed`: LoRA initialisation, dropout, shuffling |
| `TUTORIAL_OUTPUT` | `outputs/` beside this file | where the adapter is saved |
| `TUTORIAL_PROGRESS` | `1` | tqdm progress bars (`0`: off) |

On a 2-core x86 CPU with MindSpore 2.10 it takes about 20 seconds and ends with (60 evaluation rows):

    | model | accuracy |
    | --- | --- |
    | base | 46.67% |
    | base + LoRA | 100.00% |

Two runs with the same seed print the same numbers on the same machine.
"""

# %%
import os

from mindspore.experimental.optim import AdamW

from mindpeft import LoraConfig, TaskType, get_linear_schedule_with_warmup, get_peft_model, set_seed
from mindpeft.models import GPT2ForSequenceClassification, Tokenizer
from mindpeft.training import (ClassificationTokenize, TrainStep, build_dataset, classification_accuracy, read_csv,
                               train_epoch, train_test_split)

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
OUTPUT = os.environ.get("TUTORIAL_OUTPUT", os.path.join(HERE, "outputs"))
EPOCHS = int(os.environ.get("TUTORIAL_EPOCHS", 6))
LR = float(os.environ.get("TUTORIAL_LR", 5e-3))
SEED = int(os.environ.get("TUTORIAL_SEED", 0))
PROGRESS = os.environ.get("TUTORIAL_PROGRESS", "1") == "1"
BATCH_SIZE, EVAL_BATCH_SIZE, MAX_LENGTH = 16, 20, 16  # 60 eval rows: 3 full batches, so one compiled eval shape
set_seed(SEED)  # Python, numpy, MindSpore and mindspore.dataset: the same seed prints the same numbers

# %% [markdown]
# ## Data and a tiny GPT-2

# %%
records = read_csv(os.path.join(HERE, "..", "data", "movie_reviews.csv"))
train_records, eval_records = train_test_split(records, test_size=0.2, seed=0)  # the same split for every seed
# A tiny, randomly initialised GPT-2 and its tokenizer, shipped in tutorials/data (scripts/make_tutorial_data.py)
# and loaded like a downloaded checkpoint.
base_dir = os.path.join(HERE, "..", "data", "tiny-gpt2-reviews")
tokenizer = Tokenizer.from_pretrained(base_dir)
model = GPT2ForSequenceClassification.from_pretrained(base_dir)

tokenize = ClassificationTokenize(tokenizer, max_length=MAX_LENGTH)
train_ds = build_dataset(train_records, tokenize, BATCH_SIZE, shuffle=True, seed=SEED, drop_remainder=True)
eval_ds = build_dataset(eval_records, tokenize, EVAL_BATCH_SIZE)

# %% [markdown]
# ## Accuracy of the base model

# %%
base_accuracy = classification_accuracy(model, eval_ds, progress=PROGRESS)
print(f"base accuracy: {base_accuracy:.2%}")

# %% [markdown]
# ## LoRA on c_attn and c_proj, then training
# `AdamW` with a linear warm-up over the first 10 % of the steps and a linear decay to 0; `lr_scheduler.step()`
# after every optimizer step, as in torch.

# %%
model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                         target_modules=["c_attn", "c_proj"]))
model.print_trainable_parameters()
total_steps = EPOCHS * train_ds.get_dataset_size()
optimizer = AdamW(model.trainable_params(), lr=LR)
lr_scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=total_steps // 10,
                                               num_training_steps=total_steps)
train_step = TrainStep(model, optimizer)  # value_and_grad + optimizer under mindspore.jit
for epoch in range(EPOCHS):
    loss = train_epoch(train_step, train_ds, desc=f"epoch {epoch}", progress=PROGRESS,
                       on_step=lambda index, output: lr_scheduler.step())
    print(f"epoch {epoch}: train loss {loss:.4f}")

# %% [markdown]
# ## Before and after

# %%
lora_accuracy = classification_accuracy(model, eval_ds, progress=PROGRESS)
print("| model | accuracy |\n| --- | --- |")
print(f"| base | {base_accuracy:.2%} |\n| base + LoRA | {lora_accuracy:.2%} |")
model.save_pretrained(os.path.join(OUTPUT, "gpt2-lora-movie-reviews"))
