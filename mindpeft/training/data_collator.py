"""Data collators with transformers' names: a list of row dicts in, one batch of numpy arrays out.

The ``Trainer`` turns the arrays into ``mindspore.Tensor`` (integers as int32, floats as float32).
"""
import numpy as np


def _as_array(values):
    array = np.asarray(values)
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    return array


def default_data_collator(features):
    """Stack each key of the rows into one array; ``label``/``label_ids`` become ``labels`` (as transformers)."""
    if not features:
        raise ValueError("default_data_collator got no rows")
    batch = {}
    for key in features[0]:
        values = [f[key] for f in features]
        name = "labels" if key in ("label", "label_ids") else key
        if any(v is None for v in values):
            continue
        try:
            batch[name] = _as_array(values)
        except ValueError as err:
            raise ValueError(f"default_data_collator cannot stack {key!r}: the rows have different lengths or "
                             f"shapes ({err}). Pad them in preprocessing, or pass a collator that pads, e.g. "
                             "DataCollatorWithPadding(tokenizer)") from None
    return batch


def _pad_rows(rows, value, side, length=None):
    """Pad 1-d sequences to ``length`` (default: the longest) with ``value`` on ``side``."""
    length = max(len(r) for r in rows) if length is None else length
    out = np.full((len(rows), length), value, dtype=np.asarray(rows[0]).dtype if len(rows[0]) else np.int64)
    for i, row in enumerate(rows):
        row = np.asarray(row)[:length]
        if side == "left":
            out[i, length - len(row):] = row
        else:
            out[i, :len(row)] = row
    return out


def _multiple(length, multiple):
    return length if not multiple else -(-length // multiple) * multiple


class DataCollatorWithPadding:
    """Pad ``input_ids``/``attention_mask``/``token_type_ids`` with ``tokenizer.pad``; other keys are stacked."""

    def __init__(self, tokenizer, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="np"):
        self.tokenizer = tokenizer
        self.padding = padding
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors

    def __call__(self, features):
        padded_keys = set(self.tokenizer.model_input_names) | {"input_ids", "attention_mask", "token_type_ids"}
        to_pad = [{k: list(np.asarray(v).tolist()) for k, v in f.items() if k in padded_keys} for f in features]
        batch = dict(self.tokenizer.pad(to_pad, padding=self.padding, max_length=self.max_length,
                                        pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="np"))
        rest = [{k: v for k, v in f.items() if k not in padded_keys} for f in features]
        if rest and rest[0]:
            batch.update(default_data_collator(rest))
        return {k: _as_array(v) for k, v in batch.items()}


class DataCollatorForSeq2Seq:
    """Pad the inputs with ``tokenizer.pad`` and ``labels`` with ``label_pad_token_id`` (-100, ignored by the
    loss) on the tokenizer's padding side."""

    def __init__(self, tokenizer, model=None, padding=True, max_length=None, pad_to_multiple_of=None,
                 label_pad_token_id=-100, return_tensors="np"):
        self.tokenizer = tokenizer
        self.model = model
        self.padding = padding
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_token_id = label_pad_token_id
        self.return_tensors = return_tensors

    def __call__(self, features):
        labels = [f["labels"] for f in features] if "labels" in features[0] else None
        inputs = [{k: v for k, v in f.items() if k != "labels"} for f in features]
        batch = DataCollatorWithPadding(self.tokenizer, self.padding, self.max_length,
                                        self.pad_to_multiple_of)(inputs)
        if labels is not None:
            length = None
            if self.padding == "max_length" and self.max_length:
                length = self.max_length
            else:
                length = _multiple(max(len(label) for label in labels), self.pad_to_multiple_of)
            batch["labels"] = _pad_rows([np.asarray(label, np.int64) for label in labels], self.label_pad_token_id,
                                        self.tokenizer.padding_side, length).astype(np.int32)
        return batch


class DataCollatorForLanguageModeling:
    """Causal LM (``mlm=False``): pad, and ``labels`` are the ids with padding set to -100 (the model shifts
    them). Masked LM (``mlm=True``, transformers' default): ``mlm_probability`` of the tokens are chosen, 80% of
    them replaced by the mask token, 10% by a random token; ``labels`` are -100 except at chosen tokens. Masks are
    drawn from numpy's global RNG (``mindpeft.set_seed`` seeds it; checkpoints save it)."""

    def __init__(self, tokenizer, mlm=True, mlm_probability=0.15, pad_to_multiple_of=None, return_tensors="np"):
        if mlm and getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("This tokenizer has no mask token, which masked language modelling needs; pass "
                             "mlm=False to train a causal language model")
        self.tokenizer = tokenizer
        self.mlm = mlm
        self.mlm_probability = mlm_probability
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors

    def __call__(self, features):
        inputs = [{k: v for k, v in f.items() if k != "labels"} for f in features]
        batch = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of)(inputs)
        ids = batch["input_ids"]
        pad = self.tokenizer.pad_token_id
        if not self.mlm:
            labels = ids.copy()
            if "attention_mask" in batch:
                labels[batch["attention_mask"] == 0] = -100
            elif pad is not None:
                labels[ids == pad] = -100
            batch["labels"] = labels
            return batch
        special = np.isin(ids, np.asarray(self.tokenizer.all_special_ids, dtype=ids.dtype))
        chosen = (np.random.random_sample(ids.shape) < self.mlm_probability) & ~special
        labels = np.where(chosen, ids, -100).astype(np.int32)
        masked = chosen & (np.random.random_sample(ids.shape) < 0.8)
        randomized = chosen & ~masked & (np.random.random_sample(ids.shape) < 0.5)
        ids = ids.copy()
        ids[masked] = self.tokenizer.mask_token_id
        ids[randomized] = np.random.randint(0, len(self.tokenizer), size=int(randomized.sum()))
        batch["input_ids"], batch["labels"] = ids, labels
        return batch
