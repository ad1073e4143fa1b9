"""``mindspore.dataset`` pipelines fed by mindnlp-style tokenizing map functions, and CSV reading with checks that
name the file, line and value of a problem."""
import csv
import io
import random
import re

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


class CsvTable:
    """A CSV file read by :func:`load_csv`: ``columns`` (header order), ``rows`` (dicts) and ``lines`` (the file
    line on which each row starts, for error messages)."""

    def __init__(self, path, columns, rows, lines):
        self.path = path
        self.columns = list(columns)
        self.rows = rows
        self.lines = lines

    def __len__(self):
        return len(self.rows)

    def head(self, n):
        """The first ``n`` rows (all for ``n`` of 0 or ``None``) as a new table."""
        if not n:
            return self
        return CsvTable(self.path, self.columns, self.rows[:n], self.lines[:n])

    def describe_columns(self):
        return ", ".join(repr(c) for c in self.columns)


def load_csv(path):
    """Read a UTF-8 CSV file with a header row into a :class:`CsvTable`.

    A UTF-8 byte-order mark is dropped. Raises ``ValueError`` naming the file (and line) for a file that is missing,
    empty, not UTF-8, has no header, an empty or repeated column name, or a row with more or fewer fields than the
    header.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a CSV file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text: line {line} holds the byte {raw[err.start:err.start + 1]!r} "
                         f"(offset {err.start}); save the file as UTF-8") from None
    if not text.strip():
        raise ValueError(f"{path} is empty: expected a header row and data rows")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as err:
        raise ValueError(f"{path} line 1: {err}") from None
    columns = [c.strip() for c in header]
    if any(not c for c in columns):
        raise ValueError(f"{path}: the header row has an empty column name: {header}")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ValueError(f"{path}: the header row names the column(s) {repeated} more than once")
    rows, lines = [], []
    line = reader.line_num + 1
    try:
        for values in reader:
            if values:  # the csv module yields [] for a blank line
                if len(values) != len(columns):
                    raise ValueError(f"{path} line {line}: {len(values)} fields, but the header has {len(columns)} "
                                     f"columns ({', '.join(columns)})")
                rows.append(dict(zip(columns, values)))
                lines.append(line)
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path} line {line}: {err}") from None
    return CsvTable(path, columns, rows, lines)


def read_csv(path):
    """Rows of a UTF-8 CSV file with a header, as a list of dicts (see :func:`load_csv` for the checks)."""
    return load_csv(path).rows


def check_columns(table, columns):
    """``columns``: ``{column name: the option or role that names it}``; raises ``ValueError`` listing the file's
    columns when one is missing."""
    for column, role in columns.items():
        if column not in table.columns:
            raise ValueError(f"{table.path} has no column {column!r} ({role}); its columns are "
                             f"{table.describe_columns()}")


def check_texts(table, column):
    """Every row's ``column`` holds some non-blank text; raises ``ValueError`` naming the first row that does not."""
    for row, line in zip(table.rows, table.lines):
        if not row[column].strip():
            raise ValueError(f"{table.path} line {line}: column {column!r} is empty")


def check_labels(table, column, num_labels):
    """Every row's ``column`` is an integer class index in ``[0, num_labels)``; raises ``ValueError`` naming the first
    row and value that is not."""
    for row, line in zip(table.rows, table.lines):
        value = row[column].strip()
        if not re.fullmatch(r"[+-]?[0-9]+", value):
            raise ValueError(f"{table.path} line {line}: label {row[column]!r} in column {column!r} is not an "
                             f"integer class index (0 to {num_labels - 1})")
        label = int(value)
        if not 0 <= label < num_labels:
            raise ValueError(f"{table.path} line {line}: label {label} in column {column!r} is out of range: the "
                             f"model has num_labels={num_labels}, so labels must be 0 to {num_labels - 1}")


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
