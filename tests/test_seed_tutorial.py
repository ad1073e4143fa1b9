"""The code users arrive with, run on mindpeft with only imports and paths changed.

1. The mindnlp LoRA tutorial (mT0 + financial_phrasebank): ``tests/seed_code/mindnlp_lora_tutorial.py`` holds its
   code blocks as written; they run one after another in one namespace on a tiny mT5 and a 40-row CSV, with checks
   on the numbers between blocks.
2. The GPT-2 SST-2 LoRA flow: its model, LoRA and ``Trainer`` code as written, on mindpeft's ``Trainer``.
3. ``mindpeft.dataset.load_dataset`` on its own: file kinds, features, splits and errors.
"""
import collections
import contextlib
import csv
import io
import json
import math
import os
import random
import re

import numpy as np
import pytest
import torch
import transformers
import peft as hf_peft
from safetensors.numpy import load_file
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers

import mindspore as ms

import mindpeft
from mindpeft import LoraConfig, PeftModel, TaskType, Trainer, TrainingArguments, get_peft_model
from mindpeft.dataset import BaseMapFunction, ClassLabel, LocalDataset, Value, load_dataset
from mindpeft.models import AutoModelForSequenceClassification, AutoTokenizer
from mindpeft.training import ClassificationTokenize, DataCollatorWithPadding

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, os.pardir, "tutorials", "data")
SEED_CODE = os.path.join(HERE, "seed_code", "mindnlp_lora_tutorial.py")
GPT2_DIR = os.path.join(DATA, "tiny-gpt2-reviews")


def seed_blocks():
    """``[(title, code)]`` of the tutorial's code blocks (split at the ``# %% title`` lines)."""
    with open(SEED_CODE, encoding="utf-8") as f:
        parts = re.split(r"^# %% (.*)$", f.read(), flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def write_financial_csv(path, n_rows=40):
    """``n_rows`` rows of the tutorial data as ``sentence,label`` with text labels (financial_phrasebank's
    negative/neutral/positive, here as words)."""
    with open(os.path.join(DATA, "financial_sentiment.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(0).shuffle(rows)
    rows = rows[:n_rows]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        writer.writerows([r["sentence"], r["text_label"]] for r in rows)
    return rows


def build_tiny_mt0(folder, texts):
    """A tiny mT5 (transformers, seeded) with a T5TokenizerFast whose Unigram vocabulary is built from ``texts``:
    every word one piece (scored by frequency), single characters as fallback."""
    words = collections.Counter(w for text in texts for w in text.split())
    total = sum(words.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    vocab += [("\u2581" + w, math.log(n / total)) for w, n in words.most_common()]
    vocab += [(c, -12.0) for c in sorted({c for w in words for c in w})]
    backend = RustTokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    metaspace = dict(replacement="\u2581", prepend_scheme="always", split=True)
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Metaspace(**metaspace)])
    backend.decoder = decoders.Metaspace(**metaspace)
    tokenizer = transformers.T5TokenizerFast(tokenizer_object=backend, extra_ids=0)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.MT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                    relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    transformers.MT5ForConditionalGeneration(config).save_pretrained(folder)


def run_block(ns, title, code):
    """exec one tutorial block in ``ns``; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{os.path.basename(SEED_CODE)} [{title}]", "exec"), ns)
    return out.getvalue()


def printed_values(text, name):
    return [float(v) for v in re.findall(rf"\b{name}=Tensor\(shape=\[\], dtype=Float32, value=\s*([-+\d.e]+)\)", text)]


def torch_lora_model(model_class, folder, config, **kwargs):
    model = getattr(transformers, model_class).from_pretrained(folder, **kwargs).eval()
    return hf_peft.get_peft_model(model, config)


def printed_by(fn):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn()
    return out.getvalue().strip()


def numpy_batch(batch):
    return {k: v.asnumpy() for k, v in batch.items()}


def test_mindnlp_lora_tutorial_runs_as_written(tmp_path, monkeypatch):
    work = tmp_path / "tutorials" / "peft"  # the tutorial saves to ../../output
    work.mkdir(parents=True)
    rows = write_financial_csv(work / "financial_phrasebank.csv")
    build_tiny_mt0(work / "tiny-mt0", [r["sentence"] for r in rows] + ["negative", "neutral", "positive"])
    monkeypatch.chdir(work)
    mindpeft.set_seed(0)

    blocks = seed_blocks()
    titles = [t for t, _ in blocks]
    assert titles == ["Load the model and add PEFT adapter", "Load the dataset", "Add text label",
                      "Tokenization: load the tokenizer", "Tokenization: the map function", "Map, shuffle and batch",
                      "Optimizer and learning rate scheduler", "Training step", "Training loop", "Accuracy",
                      "Saving the model", "Load the model for inference", "Inference"]
    ns = {"__name__": "mindnlp_lora_tutorial"}
    printed = {title: run_block(ns, title, code) for title, code in blocks[:2]}

    # get_peft_model / print_trainable_parameters: the counts HF peft prints for the same torch model
    lora = dict(r=8, lora_alpha=32, lora_dropout=0.1)
    torch_peft = torch_lora_model("MT5ForConditionalGeneration", "tiny-mt0",
                                  hf_peft.LoraConfig(task_type=hf_peft.TaskType.SEQ_2_SEQ_LM, **lora))
    assert printed["Load the model and add PEFT adapter"].strip() == printed_by(torch_peft.print_trainable_parameters)
    model = ns["model"]
    initial = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    assert initial and all("lora_" in name for name in initial)

    # load_dataset + shuffle/split: text labels became ClassLabel ids, the splits are disjoint 36 + 4 rows
    assert ns["dataset"].source.ds.features["label"].names == ["negative", "neutral", "positive"]
    assert (len(ns["train_dataset"]), len(ns["validation_dataset"])) == (36, 4)

    for title, code in blocks[2:9]:
        printed[title] = run_block(ns, title, code)
    assert ns["classes"] == ["negative", "neutral", "positive"]
    assert len(ns["train_dataset"]) == 5 and len(ns["eval_dataset"]) == 1  # batches of 8 (the last one of 4)
    assert ns["lr_scheduler"].last_epoch == 5 * ns["num_epochs"]

    # the training loop printed a falling loss every epoch; the namespace holds the last epoch's numbers
    log = printed["Training loop"]
    train_losses, eval_losses = printed_values(log, "train_epoch_loss"), printed_values(log, "eval_epoch_loss")
    assert len(train_losses) == len(eval_losses) == ns["num_epochs"] == 3
    assert all(b < a for a, b in zip(train_losses, train_losses[1:])), train_losses
    assert eval_losses[-1] < eval_losses[0], eval_losses
    assert float(ns["train_epoch_loss"].asnumpy()) == pytest.approx(train_losses[-1], rel=1e-5)
    np.testing.assert_allclose(ns["train_ppl"].asnumpy(), np.exp(ns["train_epoch_loss"].asnumpy()), rtol=1e-4)
    assert len(ns["eval_preds"]) == 4
    trained = {p.name: p.asnumpy() for p in model.trainable_params()}
    assert all(np.abs(trained[name] - initial[name]).max() > 0 for name in initial)

    # the tutorial's grad_fn (outputs.loss) gives the same gradients as the dict way (outputs["loss"]), none zero
    batch = next(ns["train_dataset"].create_dict_iterator())
    model.set_train(False)  # no dropout: both runs see the same function
    loss, grads = ns["grad_fn"](**batch)
    dict_loss, dict_grads = ms.value_and_grad(lambda **b: model(**b)["loss"], None, model.trainable_params())(**batch)
    assert float(loss) == float(dict_loss)
    assert len(grads) == len(dict_grads) == len(initial)
    for param, grad, dict_grad in zip(model.trainable_params(), grads, dict_grads):
        np.testing.assert_array_equal(grad.asnumpy(), dict_grad.asnumpy(), err_msg=param.name)
        assert np.abs(grad.asnumpy()).max() > 0, f"zero gradient for {param.name}"

    for title, code in blocks[9:11]:
        printed[title] = run_block(ns, title, code)
    # accuracy: the tutorial's predictions against the validation split's text labels
    assert ns["total"] == 4 and ns["ground_truth"] and set(ns["ground_truth"]) <= set(ns["classes"])
    assert ns["accuracy"] == 100 * sum(p.strip() == t for p, t in zip(ns["eval_preds"], ns["ground_truth"])) / 4
    assert f"accuracy={ns['accuracy']} %" in printed["Accuracy"]

    # the saved adapter: HF peft's files and key names, loadable by HF peft with the same logits
    adapter_dir = tmp_path / "output" / "tiny-mt0_PeftType.LORA_TaskType.SEQ_2_SEQ_LM"
    assert os.path.realpath(ns["peft_model_id"]) == os.path.realpath(adapter_dir)
    assert sorted(os.listdir(adapter_dir)) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert set(saved) == set(hf_peft.get_peft_model_state_dict(torch_peft))
    eval_batch = next(ns["eval_dataset"].create_dict_iterator())
    trained_logits = model(**eval_batch).logits.asnumpy()
    base = transformers.MT5ForConditionalGeneration.from_pretrained("tiny-mt0").eval()
    torch_loaded = hf_peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        torch_logits = torch_loaded(**{k: torch.tensor(v, dtype=torch.long)
                                       for k, v in numpy_batch(eval_batch).items()}).logits.numpy()
    np.testing.assert_allclose(trained_logits, torch_logits, atol=1e-4)

    trained_model = model
    for title, code in blocks[11:]:
        printed[title] = run_block(ns, title, code)
    reloaded = ns["model"]
    assert reloaded is not trained_model and type(reloaded).__name__ == "PeftModelForSeq2SeqLM"
    assert os.path.realpath(ns["config"].base_model_name_or_path) == os.path.realpath(work / "tiny-mt0")
    np.testing.assert_allclose(reloaded(**eval_batch).logits.asnumpy(), trained_logits, atol=1e-6)

    # inference: tokenizer(..., return_tensors="ms"), generate and batch_decode, as with the trained model
    inputs = ns["inputs"]
    assert isinstance(inputs["input_ids"], ms.Tensor) and inputs["input_ids"].shape[0] == 1
    generated = ns["outputs"].asnumpy()
    assert generated.shape == (1, 11) and generated[0, 0] == 0  # decoder start + 10 new tokens
    np.testing.assert_array_equal(generated, trained_model.generate(input_ids=inputs["input_ids"],
                                                                    max_new_tokens=10).asnumpy())
    decoded = ns["tokenizer"].batch_decode(generated, skip_special_tokens=True)
    assert printed["Inference"].rstrip().endswith(repr(decoded))


def test_gpt2_sst2_lora_flow(tmp_path, monkeypatch):
    """Seed 003: its model, LoRA and Trainer code as written (mindpeft's Trainer, TrainingArguments and
    DataCollatorWithPadding; only the learning rate changed), on the review sentences split 80/20."""
    monkeypatch.chdir(tmp_path)  # the Trainer writes ./lora_model_output
    mindpeft.set_seed(0)
    path = GPT2_DIR  # 'gpt2' in the flow: a tiny GPT-2 trained on review sentences
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = load_dataset(os.path.join(DATA, "movie_reviews.csv"))
    train_split, validation_split = dataset.shuffle(64).split([0.8, 0.2])
    columns = (["sentence", "label"], ["input_ids", "attention_mask", "labels"])
    tokenized_ds = {"train": train_split.map(ClassificationTokenize(tokenizer, max_length=16), *columns),
                    "validation": validation_split.map(ClassificationTokenize(tokenizer, max_length=16), *columns)}

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred
        predictions = np.argmax(predictions, axis=1)
        return {"accuracy": (predictions == labels).mean()}

    # ---- the flow's code, as written ----
    # Load the pre-trained model 'gpt-2' for sequence classification.
    model = AutoModelForSequenceClassification.from_pretrained(path,
                                                          num_labels=2,
                                                          id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                                          label2id={"NEGATIVE": 0, "POSITIVE": 1})

    # Create a PEFT Config for LoRA
    config = LoraConfig(
                        r=8, # Rank
                        lora_alpha=32,
                        target_modules=['c_attn', 'c_proj'],
                        lora_dropout=0.1,
                        bias="none",
                        task_type=TaskType.SEQ_CLS
                    )

    peft_model = get_peft_model(model, config)
    ours = printed_by(peft_model.print_trainable_parameters)

    # Initialize the Trainer
    trainer = Trainer(
        model=peft_model,  # Make sure to pass the PEFT model here
        args=TrainingArguments(
            output_dir="./lora_model_output",
            learning_rate=5e-3,  # changed: the flow's 2e-5 is for GPT-2 small; the tiny model needs larger steps
            per_device_train_batch_size=32,
            per_device_eval_batch_size=32,
            num_train_epochs=2,
            weight_decay=0.01,
            evaluation_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            logging_dir='./logs',  # If you want to log metrics and/or losses during training
        ),
        train_dataset=tokenized_ds["train"],
        eval_dataset=tokenized_ds["validation"],
        tokenizer=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer=tokenizer, padding=True, max_length=512),
        compute_metrics=compute_metrics,
    )

    accuracy_before = trainer.evaluate()["eval_accuracy"]
    # Start the training process
    with pytest.warns(UserWarning, match="`max_length` is ignored when `padding`=`True`"):  # as transformers warns
        trainer.train()
    # ---- end of the flow's code ----

    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    hf_config = hf_peft.LoraConfig(r=8, lora_alpha=32, target_modules=["c_attn", "c_proj"], lora_dropout=0.1,
                                   bias="none", task_type=hf_peft.TaskType.SEQ_CLS)
    torch_peft = torch_lora_model("GPT2ForSequenceClassification", path, hf_config, num_labels=2,
                                  id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    assert ours == printed_by(torch_peft.print_trainable_parameters)
    assert ours.startswith("trainable params: 11,392 || all params: 118,208")

    # one evaluation per epoch (240 rows: 8 steps of 32 each), a checkpoint per epoch, the best one loaded at the end
    evals = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    assert [(e["epoch"], e["step"]) for e in evals] == [(1.0, 8), (2.0, 16)]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"], evals
    best = trainer.state.best_model_checkpoint
    assert sorted(os.listdir("lora_model_output")) == ["checkpoint-16", "checkpoint-8"]
    assert best == os.path.join("./lora_model_output", "checkpoint-16")
    accuracy_after = trainer.evaluate()["eval_accuracy"]
    assert accuracy_after == evals[1]["eval_accuracy"]
    assert accuracy_after > accuracy_before and accuracy_after > 0.8, (accuracy_before, accuracy_after)

    # the best checkpoint's adapter: HF peft's key names (the score head included); it reloads to the same logits
    saved = load_file(os.path.join(best, "adapter_model.safetensors"))
    assert set(saved) == set(hf_peft.get_peft_model_state_dict(torch_peft))
    assert "base_model.model.score.weight" in saved
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2,
                                                              id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                                              label2id={"NEGATIVE": 0, "POSITIVE": 1})
    loaded = PeftModel.from_pretrained(base, best)
    peft_model.set_train(False)
    correct = total = 0
    for batch in tokenized_ds["validation"].batch(32).create_dict_iterator():
        logits = loaded(**batch).logits.asnumpy()
        np.testing.assert_allclose(logits, peft_model(**batch).logits.asnumpy(), atol=1e-6)
        correct += int((logits.argmax(-1) == batch["labels"].asnumpy()).sum())
        total += len(logits)
    assert total == 60 and correct / total == accuracy_after


# ----- load_dataset on its own -------------------------------------------------------------------------------------
def rows_of(dataset):
    return [{k: v.item() for k, v in row.items()} for row in dataset.create_dict_iterator(output_numpy=True)]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_load_dataset_files_and_features(tmp_path):
    csv_file = write(tmp_path / "data.csv", "sentence,label,score\nup,positive,1.5\ndown,negative,2\nflat,neutral,0\n")
    dataset = load_dataset(csv_file, shuffle=False)
    local = dataset.source.ds
    assert isinstance(local, LocalDataset) and len(dataset) == len(local) == 3
    assert local.column_names == ["sentence", "label", "score"]
    assert local.features["label"].names == ["negative", "neutral", "positive"]
    assert local.features["score"].dtype == "float64" and local.features["sentence"].dtype == "string"
    assert rows_of(dataset) == [{"sentence": "up", "label": 2, "score": 1.5}, {"sentence": "down", "label": 0,
                                                                              "score": 2.0},
                                {"sentence": "flat", "label": 1, "score": 0.0}]
    row = next(dataset.create_dict_iterator(output_numpy=True))
    assert row["label"].dtype == np.int64 and row["sentence"].dtype.kind == "U"
    assert local[0] == {"sentence": "up", "label": 2, "score": 1.5} and local["label"] == [2, 0, 1]

    # an int label column keeps its ids; dataset_info.json (HF layout) names them; features= overrides
    folder = tmp_path / "phrasebank"
    write(folder / "data.jsonl", '{"sentence": "a", "label": 2}\n{"sentence": "b", "label": 0}\n')
    assert load_dataset(str(folder)).source.ds.features["label"].dtype == "int64"
    write(folder / "dataset_info.json", json.dumps({"features": {
        "sentence": {"dtype": "string", "_type": "Value"},
        "label": {"names": ["negative", "neutral", "positive"], "_type": "ClassLabel"}}}))
    dataset = load_dataset(str(folder), "sentences_allagree", shuffle=False)
    assert dataset.source.ds.features["label"].names == ["negative", "neutral", "positive"]
    assert dataset.source.ds.config_name == "sentences_allagree"
    assert [r["label"] for r in rows_of(dataset)] == [2, 0]
    custom = load_dataset(csv_file, features={"label": ClassLabel(names=["positive", "negative", "neutral"]),
                                              "score": Value("float32")}, shuffle=False)
    assert [r["label"] for r in rows_of(custom)] == [0, 1, 2]

    # one file per split: a dict, or the split asked for; a configuration's subfolder; load_dataset("csv", ...)
    splits = tmp_path / "splits"
    write(splits / "train.csv", "text,label\na,0\nb,1\nc,0\n")
    write(splits / "validation.csv", "text,label\nd,1\n")
    both = load_dataset(str(splits))
    assert sorted(both) == ["train", "validation"] and len(both["train"]) == 3
    assert rows_of(load_dataset(str(splits), split="validation")) == [{"text": "d", "label": 1}]
    assert len(load_dataset(str(tmp_path), "splits", split="train")) == 3
    assert len(load_dataset("csv", data_files={"train": str(splits / "train.csv")})) == 3
    json_columns = write(tmp_path / "columns.json", '{"text": ["x", "y"], "label": [1, 0]}')
    assert rows_of(load_dataset(json_columns, shuffle=False)) == [{"text": "x", "label": 1}, {"text": "y", "label": 0}]
    assert BaseMapFunction is mindpeft.training.BaseMapFunction  # mindnlp.dataset's name for it


def test_load_dataset_splits_are_disjoint_and_stable(tmp_path):
    """Without a dataset seed, MindSpore's own split of a shuffled pipeline overlaps; these do not."""
    lines = "".join(f"row {i},{i % 3}\n" for i in range(50))
    dataset = load_dataset(write(tmp_path / "d.csv", "sentence,label\n" + lines))
    for train, validation in (dataset.shuffle(64).split([0.9, 0.1]), dataset.split([40, 10], randomize=False)):
        first = [r["sentence"] for r in rows_of(validation)]
        assert first == [r["sentence"] for r in rows_of(validation)]  # the same order every pass
        train_rows = [r["sentence"] for r in rows_of(train)]
        assert len(train_rows) + len(first) == 50 and set(train_rows) | set(first) == {f"row {i}" for i in range(50)}
        assert train.source.ds.features == dataset.source.ds.features
    mindpeft.set_seed(3)
    once = [r["sentence"] for r in rows_of(dataset.split([0.8, 0.2])[1])]
    mindpeft.set_seed(3)
    assert once == [r["sentence"] for r in rows_of(dataset.split([0.8, 0.2])[1])]
    with pytest.raises(ValueError, match="sum up to 1"):
        dataset.split([0.5, 0.6])


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="mindpeft loads datasets from local files; download it first"):
        load_dataset("financial_phrasebank", "sentences_allagree")
    with pytest.raises(FileNotFoundError, match="No such dataset file"):
        load_dataset(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match=r"line 3: 3 values for the 2 columns"):
        load_dataset(write(tmp_path / "ragged.csv", "sentence,label\na,0\nb,1,extra\n"))
    with pytest.raises(ValueError, match="must name every column once"):
        load_dataset(write(tmp_path / "dup.csv", "text,text\na,b\n"))
    with pytest.raises(ValueError, match="has no rows"):
        load_dataset(write(tmp_path / "empty.csv", "text,label\n"))
    folder = tmp_path / "info"
    write(folder / "data.csv", "text,label\na,0\nb,5\n")
    write(folder / "dataset_info.json", json.dumps({"features": {"label": {"names": ["neg", "pos"],
                                                                           "_type": "ClassLabel"}}}))
    with pytest.raises(ValueError, match=r"holds 5; class ids run from 0 to 1"):
        load_dataset(str(folder))
    write(folder / "dataset_info.json", json.dumps({"features": {"sentence": {"dtype": "string", "_type": "Value"}}}))
    with pytest.raises(ValueError, match=r"describes the columns \['sentence'\]"):
        load_dataset(str(folder))
    with pytest.raises(ValueError, match="not one of its labels"):
        load_dataset(write(tmp_path / "l.csv", "text,label\na,up\n"), features={"label": ClassLabel(names=["down"])})
    write(tmp_path / "arrow" / "data-00000-of-00001.arrow", "")
    with pytest.raises(ValueError, match="Arrow files"):
        load_dataset(str(tmp_path / "arrow"))
    write(tmp_path / "two" / "a.csv", "t\nx\n")
    write(tmp_path / "two" / "b.csv", "t\ny\n")
    with pytest.raises(ValueError, match="name them by split"):
        load_dataset(str(tmp_path / "two"))
    with pytest.raises(ValueError, match=r"No split 'test'"):
        load_dataset(str(tmp_path / "l.csv"), split="test")
    with pytest.raises(TypeError, match=r"unsupported arguments \['revision'\]"):
        load_dataset(str(tmp_path / "l.csv"), revision="main")
