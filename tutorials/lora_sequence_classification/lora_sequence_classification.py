# %% [markdown]
# # LoRA for sequence classification with GPT-2
#
# The SST-2 flow of HF peft's seeds: measure the base model's accuracy, put LoRA on GPT-2's `c_attn` and `c_proj`
# (the `score` head is trained too, as `modules_to_save`), train with a compiled `value_and_grad` step, and compare
# accuracy before and after. The data is `tutorials/data/movie_reviews.csv` and the model a tiny GPT-2 built from a
# config with a locally trained tokenizer, so nothing is downloaded.

# %%
import os

import mindspore as ms
from mindspore import nn

from mindpeft import LoraConfig, TaskType, get_peft_model
from mindpeft.models import GPT2ForSequenceClassification, Tokenizer
from mindpeft.training import (ClassificationTokenize, TrainStep, build_dataset, classification_accuracy,
                               linear_schedule_with_warmup, read_csv, train_epoch, train_test_split)

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
OUTPUT = os.environ.get("TUTORIAL_OUTPUT", os.path.join(HERE, "outputs"))
EPOCHS = int(os.environ.get("TUTORIAL_EPOCHS", 6))
PROGRESS = os.environ.get("TUTORIAL_PROGRESS", "1") == "1"
BATCH_SIZE, LR, MAX_LENGTH = 16, 5e-3, 16
ms.set_seed(0)

# %% [markdown]
# ## Data and a tiny GPT-2

# %%
records = read_csv(os.path.join(HERE, "..", "data", "movie_reviews.csv"))
train_records, eval_records = train_test_split(records, test_size=0.2, seed=0)
# A tiny, randomly initialised GPT-2 and its tokenizer, shipped in tutorials/data (scripts/make_tutorial_data.py)
# and loaded like a downloaded checkpoint.
base_dir = os.path.join(HERE, "..", "data", "tiny-gpt2-reviews")
tokenizer = Tokenizer.from_pretrained(base_dir)
model = GPT2ForSequenceClassification.from_pretrained(base_dir)

tokenize = ClassificationTokenize(tokenizer, max_length=MAX_LENGTH)
train_ds = build_dataset(train_records, tokenize, BATCH_SIZE, shuffle=True, seed=0, drop_remainder=True)
eval_ds = build_dataset(eval_records, tokenize, BATCH_SIZE)

# %% [markdown]
# ## Accuracy of the base model

# %%
base_accuracy = classification_accuracy(model, eval_ds, progress=PROGRESS)
print(f"base accuracy: {base_accuracy:.2%}")

# %% [markdown]
# ## LoRA on c_attn and c_proj, then training

# %%
model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                         target_modules=["c_attn", "c_proj"]))
model.print_trainable_parameters()
total_steps = EPOCHS * train_ds.get_dataset_size()
schedule = linear_schedule_with_warmup(LR, num_warmup_steps=total_steps // 10, num_training_steps=total_steps)
train_step = TrainStep(model, nn.Adam(model.trainable_params(), learning_rate=schedule))
for epoch in range(EPOCHS):
    loss = train_epoch(train_step, train_ds, desc=f"epoch {epoch}", progress=PROGRESS)
    print(f"epoch {epoch}: train loss {loss:.4f}")

# %% [markdown]
# ## Before and after

# %%
lora_accuracy = classification_accuracy(model, eval_ds, progress=PROGRESS)
print("| model | accuracy |\n| --- | --- |")
print(f"| base | {base_accuracy:.2%} |\n| base + LoRA | {lora_accuracy:.2%} |")
model.save_pretrained(os.path.join(OUTPUT, "gpt2-lora-movie-reviews"))
