# %% [markdown]
# # Prompt tuning, prefix tuning and P-tuning on one task
#
# The three prompt-learning methods of HF peft, trained the same way on the movie-review classification task
# (`tutorials/data/movie_reviews.csv`) with a tiny GPT-2: prompt tuning learns virtual token embeddings, prefix
# tuning learns key/value prefixes for every layer, and P-tuning learns virtual tokens through an MLP encoder.
# The `score` head, which reads the last position, trains with each of them; the tokenizer pads on the left
# so that the last position is a real token also when the model only sees embeddings (prompt tuning, P-tuning). Each adapter is saved in HF peft's format and reloaded.

# %%
import os

import mindspore as ms
from mindspore import nn

from mindpeft import (PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType,
                      get_peft_model)
from mindpeft.models import GPT2ForSequenceClassification, Tokenizer
from mindpeft.training import (ClassificationTokenize, TrainStep, build_dataset, classification_accuracy,
                               read_csv, train_epoch, train_test_split)

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
OUTPUT = os.environ.get("TUTORIAL_OUTPUT", os.path.join(HERE, "outputs"))
EPOCHS = int(os.environ.get("TUTORIAL_EPOCHS", 6))
PROGRESS = os.environ.get("TUTORIAL_PROGRESS", "1") == "1"
BATCH_SIZE, LR, MAX_LENGTH = 16, 1e-2, 16
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
tokenizer.padding_side = "left"
tokenize = ClassificationTokenize(tokenizer, max_length=MAX_LENGTH)
train_ds = build_dataset(train_records, tokenize, BATCH_SIZE, shuffle=True, seed=0, drop_remainder=True)
eval_ds = build_dataset(eval_records, tokenize, BATCH_SIZE)

# %% [markdown]
# ## One training recipe, three methods

# %%
methods = {
    "prompt tuning": PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=8),
    "prefix tuning": PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=8),
    "p-tuning": PromptEncoderConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=8, encoder_hidden_size=64),
}
results = {}
for name, peft_config in methods.items():
    model = get_peft_model(GPT2ForSequenceClassification.from_pretrained(base_dir), peft_config)
    trainable, total = model.get_nb_trainable_parameters()
    train_step = TrainStep(model, nn.Adam(model.trainable_params(), learning_rate=LR))
    for epoch in range(EPOCHS):
        loss = train_epoch(train_step, train_ds, desc=f"{name} {epoch}", progress=PROGRESS)
    accuracy = classification_accuracy(model, eval_ds, progress=PROGRESS)
    adapter_dir = os.path.join(OUTPUT, name.replace(" ", "-"))
    model.save_pretrained(adapter_dir)
    reloaded = PeftModel.from_pretrained(GPT2ForSequenceClassification.from_pretrained(base_dir), adapter_dir)
    results[name] = (trainable, loss, accuracy, classification_accuracy(reloaded, eval_ds, progress=PROGRESS))
    print(f"{name}: final train loss {loss:.4f}, accuracy {accuracy:.2%}")

# %% [markdown]
# ## Comparison

# %%
print("| method | trainable params | final train loss | accuracy | accuracy after reload |")
print("| --- | --- | --- | --- | --- |")
for name, (trainable, loss, accuracy, reloaded_accuracy) in results.items():
    print(f"| {name} | {trainable:,d} | {loss:.4f} | {accuracy:.2%} | {reloaded_accuracy:.2%} |")
