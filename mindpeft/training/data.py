"""``mindspore.dataset`` pipelines fed by mindnlp-style tokenizing map functions."""
import csv
import random

import numpy as np
import mindspore.dataset as ds


class BaseMapFunction:
    """A map operation over named dataset columns (mindnlp's ``BaseMapFunction`` shape): called with the
    ``input_columns`` values, it returns the ``output_columns`` values."""

    def __init__(self, input_columns, output_columns):
        self.input_columns = list(input_columns)
        self.output_columns = list(output_columns)

    def __call__(self, *args):
        raise NotImplementedError


def _text(value):
    return value.item() if isinstance(value, np.ndarray) else str(value)


class Seq2SeqTokenize(BaseMapFunction):
    """source, target -> input_ids, attention_mask (padded to ``max_source_length``) and labels (target ids
    padded to ``max_target_length`` with -100, which the loss ignores)."""

    def __init__(self, tokenizer, max_source_length, max_target_length, source_column="sentence",
                 target_column="text_label"):
        super().__init__([source_column, target_column], ["input_ids", "attention_mask", "labels"])
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length

    def __call__(self, source, target):
        enc = self.tokenizer(_text(source), max_length=self.max_source_length, padding="max_length")
        labels = self.tokenizer(_text(target), max_length=self.max_target_length, padding="max_length")
        label_ids = np.where(labels["attention_mask"] == 1, labels["input_ids"], -100).astype(np.int32)
        return enc["input_ids"], enc["attention_mask"], label_ids


class ClassificationTokenize(BaseMapFunction):
    """text, label -> input_ids, attention_mask (padded to ``max_length``) and the integer label."""

    def __init__(self, tokenizer, max_length, text_column="sentence", label_column="label"):
        super().__init__([text_column, label_column], ["input_ids", "attention_mask", "labels"])
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, text, label):
        enc = self.tokenizer(_text(text), max_length=self.max_length, padding="max_length")
        return enc["input_ids"], enc["attention_mask"], np.array(int(_text(label)), np.int32)


class CausalLMTokenize(BaseMapFunction):
    """text -> input_ids, attention_mask and labels (the ids, with padding set to -100)."""

    def __init__(self, tokenizer, max_length, text_column="text"):
        super().__init__([text_column], ["input_ids", "attention_mask", "labels"])
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, text):
        enc = self.tokenizer(_text(text), max_length=self.max_length, padding="max_length")
        labels = np.where(enc["attention_mask"] == 1, enc["input_ids"], -100).astype(np.int32)
        return enc["input_ids"], enc["attention_mask"], labels


def read_csv(path):
    """Rows of a CSV file with a header, as a list of dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def train_test_split(records, test_size=0.1, seed=0):
    """Shuffle ``records`` with ``seed`` and split off ``test_size`` of them (at least one) for evaluation."""
    records = list(records)
    random.Random(seed).shuffle(records)
    n_test = max(1, int(round(len(records) * test_size)))
    return records[n_test:], records[:n_test]


def build_dataset(records, map_fn, batch_size, shuffle=False, seed=0, drop_remainder=False):
    """A batched ``mindspore.dataset`` over ``records`` (dicts), tokenised by ``map_fn``.

    Iterate with ``dataset.create_dict_iterator()``; each batch is a dict of Tensors named by
    ``map_fn.output_columns``, ready for ``model(**batch)``.
    """
    if not records:
        raise ValueError("build_dataset got no records")
    missing = [c for c in map_fn.input_columns if c not in records[0]]
    if missing:
        raise ValueError(f"Records lack the columns {missing} that {type(map_fn).__name__} reads; they have "
                         f"{sorted(records[0])}")
    rows = [tuple(str(r[c]) for c in map_fn.input_columns) for r in records]
    dataset = ds.GeneratorDataset(rows, column_names=map_fn.input_columns, shuffle=False)
    if shuffle:
        ds.config.set_seed(seed)
        dataset = dataset.shuffle(buffer_size=len(rows))
    dataset = dataset.map(operations=map_fn, input_columns=map_fn.input_columns,
                          output_columns=map_fn.output_columns)
    return dataset.batch(batch_size, drop_remainder=drop_remainder)
