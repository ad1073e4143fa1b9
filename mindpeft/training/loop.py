"""Epoch loops with tqdm progress bars: training, evaluation and generation over ``mindspore.dataset``s."""
import math
import weakref

import numpy as np
from tqdm.auto import tqdm

from .train_step import ForwardStep


_FORWARD_STEPS = weakref.WeakKeyDictionary()


def _batches(dataset):
    return dataset.create_dict_iterator(num_epochs=1)


def _forward_step(model, forward):
    """The given forward, else one compiled ForwardStep per model, reused across evaluations."""
    if forward is not None:
        return forward
    if model not in _FORWARD_STEPS:
        _FORWARD_STEPS[model] = ForwardStep(model)
    return _FORWARD_STEPS[model]


def train_epoch(step, dataset, desc="train", progress=True, on_step=None):
    """Run ``step(**batch)`` over ``dataset``; returns the mean loss. ``on_step(index, output)`` is called after
    each step (AdaLoRA's ``update_and_allocate`` goes there)."""
    step.model.set_train(True)
    losses = []
    bar = tqdm(_batches(dataset), total=dataset.get_dataset_size(), desc=desc, disable=not progress, leave=False)
    for index, batch in enumerate(bar):
        output = step(**batch)
        loss = output[0] if isinstance(output, tuple) else output
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step is not None:
            on_step(index, output)
    return float(np.mean(losses))


def evaluate(model, dataset, desc="eval", progress=True, forward=None):
    """Mean loss and perplexity of ``model`` over ``dataset`` (in eval mode, compiled unless ``forward`` given)."""
    model.set_train(False)
    forward = _forward_step(model, forward)
    losses = [float(forward(**batch)["loss"])
              for batch in tqdm(_batches(dataset), total=dataset.get_dataset_size(), desc=desc,
                                disable=not progress, leave=False)]
    loss = float(np.mean(losses))
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def classification_accuracy(model, dataset, progress=True, forward=None):
    """Share of rows whose argmax logit equals ``labels``."""
    model.set_train(False)
    forward = _forward_step(model, forward)
    correct = total = 0
    for batch in tqdm(_batches(dataset), total=dataset.get_dataset_size(), desc="accuracy", disable=not progress,
                      leave=False):
        predictions = forward(**batch)["logits"].asnumpy().argmax(-1)
        correct += int((predictions == batch["labels"].asnumpy()).sum())
        total += len(predictions)
    return correct / max(1, total)


def generation_accuracy(model, tokenizer, dataset, max_new_tokens, progress=True):
    """Greedy-generate for each row of a seq2seq dataset and compare the decoded text with the decoded labels;
    returns ``(accuracy, predictions)``."""
    model.set_train(False)
    correct, predictions = 0, []
    for batch in tqdm(_batches(dataset), total=dataset.get_dataset_size(), desc="generate", disable=not progress,
                      leave=False):
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=max_new_tokens)
        texts = tokenizer.batch_decode(out)
        labels = batch["labels"].asnumpy()
        targets = tokenizer.batch_decode(np.where(labels == -100, tokenizer.pad_token_id, labels))
        correct += sum(p.strip() == t.strip() for p, t in zip(texts, targets))
        predictions.extend(texts)
    return correct / max(1, len(predictions)), predictions
