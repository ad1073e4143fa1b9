# %% [markdown]
# # LoRA for seq2seq: financial sentiment with an mT0-style model
#
# The mT0 / financial_phrasebank flow of HF peft's seq2seq example, in MindSpore: a `mindspore.dataset`
# pipeline with a tokenizing map, LoRA through `get_peft_model`, AdamW with linear warm-up, a `value_and_grad`
# train step compiled by `mindspore.jit`, eval loss / perplexity / accuracy per epoch, `save_pretrained`, and
# reloading the adapter to generate a label for a new sentence.
#
# Everything is local: the data is `tutorials/data/financial_sentiment.csv` and the base model is a tiny
# mT5-architecture model built from a config with a tokenizer trained on that file (stand-ins for
# `bigscience/mt0-large` and financial_phrasebank, which would need downloads). Settings come from environment
# variables so the test suite can run this file quickly.

# %%
import os

import mindspore as ms
from mindspore import nn

from mindpeft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from mindpeft.models import MT5Config, MT5ForConditionalGeneration, Tokenizer, train_word_level_tokenizer
from mindpeft.training import (Seq2SeqTokenize, TrainStep, build_dataset, evaluate, generation_accuracy,
                               linear_schedule_with_warmup, read_csv, train_epoch, train_test_split)

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
DATA = os.path.join(HERE, "..", "data", "financial_sentiment.csv")
OUTPUT = os.environ.get("TUTORIAL_OUTPUT", os.path.join(HERE, "outputs"))
EPOCHS = int(os.environ.get("TUTORIAL_EPOCHS", 10))
MAX_ROWS = int(os.environ.get("TUTORIAL_MAX_ROWS", 0))  # 0: all rows
PROGRESS = os.environ.get("TUTORIAL_PROGRESS", "1") == "1"  # tqdm progress bars
BATCH_SIZE, LR, MAX_LENGTH = 8, float(os.environ.get("TUTORIAL_LR", 3e-3)), 24
ms.set_seed(0)

# %% [markdown]
# ## Data: sentence -> text label, split 90/10

# %%
records = read_csv(DATA)[: MAX_ROWS or None]
train_records, eval_records = train_test_split(records, test_size=0.1, seed=0)
print(f"{len(train_records)} training and {len(eval_records)} evaluation rows; first: {train_records[0]}")

# %% [markdown]
# ## A tiny mT0-style base model and its tokenizer
# Built once and saved like a downloaded checkpoint (`config.json`, `model.safetensors`, `tokenizer.json`).

# %%
base_dir = os.path.join(OUTPUT, "tiny-mt0")
if not os.path.isfile(os.path.join(base_dir, "model.safetensors")):
    tokenizer = train_word_level_tokenizer([r["sentence"] for r in records] + ["negative neutral positive"])
    config = MT5Config(vocab_size=tokenizer.vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                       relative_attention_num_buckets=16, dropout_rate=0.0,
                       initializer_factor=float(os.environ.get("TUTORIAL_INIT", 0.1)), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    MT5ForConditionalGeneration(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
tokenizer = Tokenizer.from_pretrained(base_dir)
model = MT5ForConditionalGeneration.from_pretrained(base_dir)

# %% [markdown]
# ## Tokenizing map and batched datasets
# `Seq2SeqTokenize` is a `BaseMapFunction`: sentence and text label in, `input_ids`, `attention_mask` and
# `labels` (padding set to -100) out.

# %%
tokenize = Seq2SeqTokenize(tokenizer, max_source_length=MAX_LENGTH, max_target_length=3)
train_ds = build_dataset(train_records, tokenize, BATCH_SIZE, shuffle=True, seed=0, drop_remainder=True)
eval_ds = build_dataset(eval_records, tokenize, BATCH_SIZE)

# %% [markdown]
# ## LoRA

# %%
peft_config = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, inference_mode=False, r=8, lora_alpha=32,
                         lora_dropout=0.1, target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"])
model = get_peft_model(model, peft_config)
model.print_trainable_parameters()

# %% [markdown]
# ## Optimizer, schedule and a compiled train step

# %%
total_steps = EPOCHS * train_ds.get_dataset_size()
schedule = linear_schedule_with_warmup(LR, num_warmup_steps=total_steps // 10, num_training_steps=total_steps)
# With weight_decay=0 this is AdamW. (MindSpore's nn.AdamWeightDecay skips Adam's bias correction, which makes its
# first steps about 3x larger than torch's AdamW; nn.Adam keeps the correction.)
optimizer = nn.Adam(model.trainable_params(), learning_rate=schedule, weight_decay=0.0)
train_step = TrainStep(model, optimizer)  # value_and_grad + optimizer under mindspore.jit

# %% [markdown]
# ## Train, evaluating loss, perplexity and accuracy every epoch

# %%
history = []
for epoch in range(EPOCHS):
    train_loss = train_epoch(train_step, train_ds, desc=f"epoch {epoch}", progress=PROGRESS)
    metrics = evaluate(model, eval_ds, progress=PROGRESS)
    accuracy, _ = generation_accuracy(model, tokenizer, eval_ds, max_new_tokens=3, progress=PROGRESS)
    history.append({"epoch": epoch, "train_loss": train_loss, **metrics, "accuracy": accuracy})
    print(f"epoch {epoch}: train loss {train_loss:.4f}  eval loss {metrics['loss']:.4f}  "
          f"eval ppl {metrics['perplexity']:.3f}  eval accuracy {accuracy:.2%}")

# %% [markdown]
# ## Save the adapter (HF peft format) and reload it for inference

# %%
adapter_dir = os.path.join(OUTPUT, "mt0-lora-financial-sentiment")
model.save_pretrained(adapter_dir)
print(sorted(os.listdir(adapter_dir)))

config = PeftConfig.from_pretrained(adapter_dir)
base = MT5ForConditionalGeneration.from_pretrained(config.base_model_name_or_path)
inference_model = PeftModel.from_pretrained(base, adapter_dir)

sentence = "Kone said its operating profit rose 25 percent in the first quarter ."
inputs = tokenizer(sentence, max_length=MAX_LENGTH)
outputs = inference_model.generate(input_ids=ms.Tensor(inputs["input_ids"][None]),
                                   attention_mask=ms.Tensor(inputs["attention_mask"][None]), max_new_tokens=3)
prediction = tokenizer.decode(outputs[0])
print(f"{sentence!r} -> {prediction!r}")
