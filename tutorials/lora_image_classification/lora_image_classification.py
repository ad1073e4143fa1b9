"""
# LoRA for image classification with ViT

HF peft's image classification guide (ViT fine-tuned on food101) with local data: a tiny ViT, pretrained on other
shapes, learns to tell circles, squares, triangles and crosses apart. `AutoImageProcessor` resizes (48x48 to
32x32), rescales and normalises the images; LoRA goes on the attention's `query` and `value` projections while the
new `classifier` head trains in full (`modules_to_save`); `Trainer` trains and evaluates with an accuracy
`compute_metrics`. The adapter is then saved, reloaded onto a fresh base model and asked for one image's class.

Everything is local and written by `scripts/make_tutorial_data.py`: `tutorials/data/shapes.npz` (600 synthetic
48x48 images, the stand-in for food101) and `tutorials/data/tiny-vit-shapes` (a 2-layer ViT whose backbone was
pretrained on eight *other* shapes, with a newly initialised classifier for these four, the stand-in for
`google/vit-base-patch16-224-in21k` loaded with `ignore_mismatched_sizes=True`).

`target_modules=["query", "value"]` are the guide's names (transformers 4's `attention.attention.query`); mindpeft's
ViT has transformers 5's module names (`attention.q_proj`, `attention.v_proj`) and takes either spelling.

Run it from the repository root:

    python tutorials/lora_image_classification/lora_image_classification.py

| setting (environment variable) | default | |
| --- | --- | --- |
| `TUTORIAL_EPOCHS` | `5` | training epochs |
| `TUTORIAL_LR` | `5e-3` | peak learning rate |
| `TUTORIAL_SEED` | `0` | `TrainingArguments.seed`: LoRA initialisation, dropout, shuffling |
| `TUTORIAL_OUTPUT` | `outputs/` beside this file | where the adapter is saved |
| `TUTORIAL_PROGRESS` | `1` | tqdm progress bars (`0`: the logs are printed instead) |

On a 2-core x86 CPU with MindSpore 2.10 it takes about 15 seconds and ends with (120 evaluation images; chance is
25 %):

    | model | accuracy |
    | --- | --- |
    | base (new classifier) | 25.83% |
    | base + LoRA | 95.00% |
    ['adapter_config.json', 'adapter_model.safetensors']
    Predicted class: cross (true class: cross)

Two runs with the same seed print the same numbers on the same machine.
"""

# %%
import os

import numpy as np

from mindpeft import LoraConfig, PeftConfig, PeftModel, Trainer, TrainingArguments, get_peft_model, set_seed
from mindpeft.models import AutoImageProcessor, AutoModelForImageClassification
from mindpeft.training import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
DATA = os.path.join(HERE, "..", "data")
OUTPUT = os.environ.get("TUTORIAL_OUTPUT", os.path.join(HERE, "outputs"))
EPOCHS = int(os.environ.get("TUTORIAL_EPOCHS", 5))
LR = float(os.environ.get("TUTORIAL_LR", 5e-3))
SEED = int(os.environ.get("TUTORIAL_SEED", 0))
PROGRESS = os.environ.get("TUTORIAL_PROGRESS", "1") == "1"
BATCH_SIZE, EVAL_BATCH_SIZE = 16, 40  # 120 eval images: 3 full batches, so one compiled eval shape
set_seed(SEED)  # Python, numpy and MindSpore: the same seed prints the same numbers

# %% [markdown]
# ## Data: images and their labels
# `label2id` and `id2label` map the class names to the ids the classifier predicts; the model's config gets them.

# %%
with np.load(os.path.join(DATA, "shapes.npz")) as archive:
    images, labels, label_names = archive["images"], archive["labels"], archive["label_names"]
label2id = {str(name): i for i, name in enumerate(label_names)}
id2label = {i: name for name, i in label2id.items()}
records = [{"image": image, "label": int(label)} for image, label in zip(images, labels)]
train_records, eval_records = train_test_split(records, test_size=0.2, seed=0)  # the same split for every seed
print(f"{len(train_records)} training and {len(eval_records)} evaluation images of {images.shape[1:]}; "
      f"classes: {id2label}")

# %% [markdown]
# ## Pre-processing with the model's image processor
# `preprocessor_config.json` beside the model says how: resize to 32x32 (bilinear), rescale to [0, 1], normalise
# with mean 0.5 and standard deviation 0.5 per channel.

# %%
base_dir = os.path.join(DATA, "tiny-vit-shapes")
image_processor = AutoImageProcessor.from_pretrained(base_dir)


def preprocess(records):
    pixel_values = image_processor([r["image"] for r in records], return_tensors="np")["pixel_values"]
    return [{"pixel_values": pixels, "labels": r["label"]} for pixels, r in zip(pixel_values, records)]


train_dataset, eval_dataset = preprocess(train_records), preprocess(eval_records)
print(type(image_processor).__name__, train_records[0]["image"].shape, "->", train_dataset[0]["pixel_values"].shape)

# %% [markdown]
# ## The base model
# The classifier for our four classes is newly initialised; the backbone comes pretrained.


# %%
def print_trainable_parameters(model):
    trainable_params, all_param = 0, 0
    for _, param in model.parameters_and_names():
        all_param += param.size
        if param.requires_grad:
            trainable_params += param.size
    print(f"trainable params: {trainable_params} || all params: {all_param} || "
          f"trainable%: {100 * trainable_params / all_param:.2f}")


model = AutoModelForImageClassification.from_pretrained(base_dir, label2id=label2id, id2label=id2label)
print_trainable_parameters(model)

# %% [markdown]
# ## Accuracy of the base model
# `TrainingArguments` holds the whole run: AdamW with a linear decay to 0, an evaluation and a log line after every
# epoch, no checkpoints; incomplete training batches are dropped, so the compiled step sees one shape. A `Trainer`
# without training data can already evaluate.


# %%
def compute_metrics(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


args = TrainingArguments(output_dir=os.path.join(OUTPUT, "trainer"), learning_rate=LR, num_train_epochs=EPOCHS,
                         per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=EVAL_BATCH_SIZE,
                         eval_strategy="epoch", logging_strategy="epoch", save_strategy="no",
                         dataloader_drop_last=True, seed=SEED, disable_tqdm=not PROGRESS)
base_accuracy = Trainer(model, args, eval_dataset=eval_dataset, compute_metrics=compute_metrics).evaluate()[
    "eval_accuracy"]
print(f"base accuracy: {base_accuracy:.2%}")

# %% [markdown]
# ## LoRA on query and value
# `r` and `lora_alpha` set the size and scale of the update matrices; `modules_to_save=["classifier"]` trains the
# new head in full and saves it with the adapter.

# %%
config = LoraConfig(r=16, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1, bias="none",
                    modules_to_save=["classifier"])
lora_model = get_peft_model(model, config)
print_trainable_parameters(lora_model)

# %% [markdown]
# ## Training

# %%
trainer = Trainer(lora_model, args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                  compute_metrics=compute_metrics)
trainer.train()

# %% [markdown]
# ## Before and after

# %%
lora_accuracy = trainer.evaluate()["eval_accuracy"]
print("| model | accuracy |\n| --- | --- |")
print(f"| base (new classifier) | {base_accuracy:.2%} |\n| base + LoRA | {lora_accuracy:.2%} |")
adapter_dir = os.path.join(OUTPUT, "vit-lora-shapes")
lora_model.save_pretrained(adapter_dir)
print(sorted(os.listdir(adapter_dir)))

# %% [markdown]
# ## Inference with the saved adapter
# The adapter's config names its base model; the LoRA weights and the trained classifier load onto it.

# %%
config = PeftConfig.from_pretrained(adapter_dir)
model = AutoModelForImageClassification.from_pretrained(config.base_model_name_or_path, label2id=label2id,
                                                        id2label=id2label)
inference_model = PeftModel.from_pretrained(model, adapter_dir)

image = eval_records[0]["image"]
encoding = image_processor(image, return_tensors="ms")
logits = inference_model(**encoding)["logits"]
predicted_class_idx = int(logits.asnumpy().argmax(-1)[0])
print(f"Predicted class: {model.config.id2label[predicted_class_idx]} "
      f"(true class: {id2label[eval_records[0]['label']]})")
