"""Local datasets as ``mindspore.dataset`` pipelines: what mindnlp tutorials import from ``mindnlp.dataset``.

``load_dataset(path)`` reads a CSV/TSV, JSON-lines or JSON file (or a folder holding one, or one file per split)
into a ``mindspore.dataset.GeneratorDataset``, as mindnlp's ``load_dataset`` does for HF datasets, so the
tutorials' code runs unchanged::

    dataset = load_dataset("data/financial_phrasebank.csv")
    train_dataset, validation_dataset = dataset.shuffle(64).split([0.9, 0.1])
    classes = dataset.source.ds.features["label"].names      # ['negative', 'neutral', 'positive']

Each row comes out as numpy values (0-d string arrays, ``int64``/``float64`` scalars), so a map function can call
``label.item()`` or pass a sentence to the tokenizer. Column types follow HF ``datasets``: numbers in a CSV become
``int64``/``float64`` columns, and a text ``label``/``labels`` column becomes an ``int64`` column with a
``ClassLabel`` of the sorted label names (as ``class_encode_column`` does). A ``dataset_info.json`` next to the data
(HF's ``{"features": {...}}`` layout) or the ``features`` argument give the columns' types and label names instead.
``split`` gives disjoint splits with a stable row order (drawn with numpy's RNG, which ``mindpeft.set_seed``
seeds), also after ``shuffle``, where MindSpore's own needs ``mindspore.dataset.config.set_seed`` for that.
Nothing is downloaded: save a hub dataset to a file first, e.g. with HF datasets
``load_dataset("financial_phrasebank", "sentences_allagree")["train"].to_csv("financial_phrasebank.csv")``.
"""
import csv
import json
import os

import numpy as np
import mindspore.dataset as ds
from mindspore.dataset.engine.validators import check_shuffle, check_split

from .training.data import BaseMapFunction

__all__ = ["BaseMapFunction", "ClassLabel", "LocalDataset", "LocalGeneratorDataset", "Value", "load_dataset"]

_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
_SPLITS = ("train", "validation", "valid", "dev", "test")
_LABEL_COLUMNS = ("label", "labels")


class Value:
    """A column of scalars; ``dtype`` is ``"string"``, ``"int64"``, ``"float64"`` or ``"bool"`` (HF names)."""

    _NUMPY = {"string": np.str_, "int64": np.int64, "int32": np.int32, "float64": np.float64,
              "float32": np.float32, "bool": np.bool_}

    def __init__(self, dtype):
        if dtype not in self._NUMPY:
            raise ValueError(f"Unsupported Value dtype {dtype!r}; use one of {sorted(self._NUMPY)}")
        self.dtype = dtype

    def encode(self, value, column):
        if self.dtype == "string":
            return str(value)
        try:
            return self._NUMPY[self.dtype](value)
        except (TypeError, ValueError):
            raise ValueError(f"Column {column!r} is {self.dtype}, but holds {value!r}") from None

    def __repr__(self):
        return f"Value(dtype={self.dtype!r})"


class ClassLabel:
    """Integer class ids with names (HF ``datasets.ClassLabel``): ``names[i]`` is the name of class ``i``."""

    dtype = "int64"

    def __init__(self, num_classes=None, names=None):
        if names is None:
            if num_classes is None:
                raise ValueError("ClassLabel needs names or num_classes")
            names = [str(i) for i in range(num_classes)]
        self.names = [str(n) for n in names]
        if num_classes is not None and num_classes != len(self.names):
            raise ValueError(f"ClassLabel got num_classes={num_classes} but {len(self.names)} names")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ClassLabel names repeat: {self.names}")
        self.num_classes = len(self.names)

    def str2int(self, name):
        if name not in self.names:
            raise ValueError(f"Unknown label {name!r}; the labels are {self.names}")
        return self.names.index(name)

    def int2str(self, index):
        return self.names[int(index)]

    def encode(self, value, column):
        """A class id from an id (int or digit string) or a label name."""
        if isinstance(value, str) and value not in self.names and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, str):
            if value not in self.names:
                raise ValueError(f"Column {column!r} holds {value!r}, which is not one of its labels {self.names}")
            return np.int64(self.names.index(value))
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < self.num_classes:
            raise ValueError(f"Column {column!r} holds {value!r}; class ids run from 0 to {self.num_classes - 1} "
                             f"({self.names})")
        return np.int64(value)

    def __repr__(self):
        return f"ClassLabel(names={self.names})"


class LocalDataset:
    """The rows behind a pipeline (mindnlp's ``dataset.source.ds``): ``features``, ``column_names``,
    ``num_rows``, ``len()``, ``ds[i]`` (a row dict) and ``ds["column"]`` (a list)."""

    def __init__(self, columns, features, split=None, config_name=None, files=()):
        self._columns = columns
        self.features = features
        self.split = split
        self.config_name = config_name
        self.data_files = list(files)

    @property
    def column_names(self):
        return list(self.features)

    @property
    def num_rows(self):
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def __len__(self):
        return self.num_rows

    def __getitem__(self, key):
        if isinstance(key, str):
            return list(self._columns[key])
        return {name: self._columns[name][key] for name in self.features}

    def __repr__(self):
        return f"LocalDataset(features={self.features}, num_rows={self.num_rows})"

    def select(self, indices):
        """The rows at ``indices``, in that order."""
        return LocalDataset({name: [values[i] for i in indices] for name, values in self._columns.items()},
                            self.features, self.split, self.config_name, self.data_files)


class _Sized:
    def __init__(self, size):
        self.size = size

    def get_dataset_size(self):
        return self.size


def _split(local, sizes, randomize):
    """Disjoint splits of ``local``'s rows, each a fixed-order ``LocalGeneratorDataset``; random ones are drawn
    with numpy's global RNG (``mindpeft.set_seed`` seeds it)."""
    sizes = ds.Dataset._get_absolute_split_sizes(_Sized(len(local)), sizes)  # MindSpore's rounding and checks
    order = np.random.permutation(len(local)) if randomize else np.arange(len(local))
    starts = np.cumsum([0] + list(sizes))
    return tuple(LocalGeneratorDataset(_Source(local.select(order[a:b].tolist())), local.column_names, shuffle=False)
                 for a, b in zip(starts[:-1], starts[1:]))


class LocalGeneratorDataset(ds.GeneratorDataset):
    """``load_dataset``'s pipeline: a ``GeneratorDataset`` whose ``split`` (also after ``shuffle``) gives disjoint
    splits with a stable row order.

    MindSpore's own ``split`` shuffles each split's copy of the pipeline separately, so without
    ``mindspore.dataset.config.set_seed`` the splits of ``dataset.shuffle(64).split([0.9, 0.1])`` overlap and
    change order between iterations (the tutorials zip predictions with a second pass over the validation split).
    """

    @check_split
    def split(self, sizes, randomize=True):
        return _split(self.source.ds, sizes, randomize)

    @check_shuffle
    def shuffle(self, buffer_size):
        return _LocalShuffleDataset(self, buffer_size, self.source.ds)


class _LocalShuffleDataset(ds.ShuffleDataset):
    def __init__(self, input_dataset, buffer_size, local):
        super().__init__(input_dataset, buffer_size)
        self._local = local

    @check_split
    def split(self, sizes, randomize=True):
        return _split(self._local, sizes, True)  # the rows were shuffled: a random split either way


class _Source:
    """Random-access source for ``GeneratorDataset``: row ``i`` as a tuple of numpy values."""

    def __init__(self, dataset):
        self.ds = dataset
        self._names = dataset.column_names

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, index):
        return tuple(np.array(self.ds._columns[name][index]) for name in self._names)


def _read_rows(file):
    """A list of row dicts from a CSV/TSV (header line), JSON-lines or JSON (list of objects or of columns)."""
    kind = _FORMATS.get(os.path.splitext(file)[1].lower())
    with open(file, newline="" if kind == "csv" else None, encoding="utf-8-sig") as f:
        if kind == "csv":
            reader = csv.reader(f, delimiter="\t" if file.lower().endswith(".tsv") else ",")
            header = next(reader, None)
            if not header or any(not h.strip() for h in header) or len(set(header)) != len(header):
                raise ValueError(f"{file}: the first line must name every column once, got {header}")
            rows = []
            for line_no, values in enumerate(reader, start=2):
                if not values:
                    continue
                if len(values) != len(header):
                    raise ValueError(f"{file}, line {line_no}: {len(values)} values for the {len(header)} columns "
                                     f"{header}")
                rows.append(dict(zip(header, values)))
            return rows
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is None or isinstance(data, dict) and not all(isinstance(v, list) for v in data.values()):
        data = []  # JSON lines
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{file}, line {line_no}: not JSON ({err})") from None
    if isinstance(data, dict):  # {"column": [values]}
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise ValueError(f"{file}: columns of different lengths {sorted(lengths)}")
        data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{file}: expected JSON objects, one per row")
    if data:
        names = list(data[0])
        for index, row in enumerate(data):
            if list(row) != names and set(row) != set(names):
                raise ValueError(f"{file}: row {index} has the columns {sorted(row)}, the first row {sorted(names)}")
    return data


def _infer_feature(name, values):
    """HF's choice of type for a column without declared features."""
    def is_int(v):
        return isinstance(v, str) and v.strip().lstrip("+-").isdigit() or \
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_float(v):
        if isinstance(v, bool) or isinstance(v, str) and not v.strip():
            return False
        try:
            float(v)
            return True
        except (TypeError, ValueError):
            return False

    if all(isinstance(v, bool) for v in values):
        return Value("bool")
    if all(is_int(v) for v in values):
        return Value("int64")
    if all(is_float(v) for v in values):
        return Value("float64")
    if name in _LABEL_COLUMNS:
        return ClassLabel(names=sorted({str(v) for v in values}))
    return Value("string")


def _parse_features(spec, source):
    """``{"column": Value | ClassLabel | HF feature dict}`` from an argument or ``dataset_info.json``."""
    features = {}
    for name, feature in spec.items():
        if isinstance(feature, (Value, ClassLabel)):
            features[name] = feature
        elif isinstance(feature, dict) and feature.get("_type") == "ClassLabel" or \
                isinstance(feature, dict) and "names" in feature:
            features[name] = ClassLabel(names=feature.get("names"), num_classes=feature.get("num_classes"))
        elif isinstance(feature, dict) and feature.get("_type", "Value") == "Value" and "dtype" in feature:
            features[name] = Value(feature["dtype"])
        else:
            raise ValueError(f"{source}: unsupported feature {feature!r} for column {name!r}; use Value(dtype) or "
                             f"ClassLabel(names=[...])")
    return features


def _build(file, split, config_name, declared, info_file):
    rows = _read_rows(file)
    if not rows:
        raise ValueError(f"{file} has no rows")
    names = list(rows[0])
    unknown = [c for c in declared if c not in names]
    if unknown:
        raise ValueError(f"{info_file or 'features'} describes the columns {unknown}, which {file} lacks; its "
                         f"columns are {names}")
    features, columns = {}, {}
    for name in names:
        values = [row[name] for row in rows]
        if any(v is None for v in values):
            raise ValueError(f"{file}: column {name!r} has no value in row {values.index(None)}")
        feature = declared.get(name) or _infer_feature(name, values)
        features[name] = feature
        columns[name] = [feature.encode(v, name) for v in values]
    return LocalDataset(columns, features, split, config_name, [file])


def _split_name(file):
    stem = os.path.splitext(os.path.basename(file))[0].lower()
    for split in _SPLITS:
        if stem == split or stem.startswith(split + "-") or stem.startswith(split + "_") or stem.endswith("_" + split):
            return "validation" if split in ("valid", "dev") else split
    return None


def _data_files(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if os.path.splitext(f)[1].lower() in _FORMATS and f != "dataset_info.json")


def _resolve(path, name, data_files):
    """(folder for dataset_info.json, {split: file})."""
    if path in ("csv", "json") and data_files is not None:  # load_dataset("csv", data_files=...)
        files = {"train": data_files} if isinstance(data_files, str) else dict(data_files)
        missing = [f for f in files.values() if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"No such data file: {missing[0]!r}")
        return os.path.dirname(os.path.abspath(next(iter(files.values())))), files
    if not os.path.exists(path):
        if os.path.isabs(path) or path.startswith(".") or os.path.splitext(path)[1].lower() in _FORMATS:
            raise FileNotFoundError(f"No such dataset file or folder: {path!r}")
        raise ValueError(f"{path!r} is not a local file or folder. mindpeft loads datasets from local files; download "
                         f"it first (e.g. with HF datasets: load_dataset({path!r}{', ' + repr(name) if name else ''})"
                         f"['train'].to_csv('{os.path.basename(path)}.csv')) and pass that file's path.")
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() not in _FORMATS:
            raise ValueError(f"{path}: unsupported file type; use .csv, .tsv, .json or .jsonl")
        return os.path.dirname(os.path.abspath(path)), {"train": path}
    if name and os.path.isdir(os.path.join(path, name)):  # a configuration's subfolder
        path = os.path.join(path, name)
    files = _data_files(path)
    if not files:
        arrow = [f for f in os.listdir(path) if f.endswith(".arrow")]
        if arrow:
            raise ValueError(f"{path} holds Arrow files ({arrow[0]}); mindpeft reads CSV/JSON: export the dataset "
                             f"with HF datasets' to_csv or to_json first")
        subfolders = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        hint = f"; pass one of its configurations {subfolders} as name" if subfolders else ""
        raise FileNotFoundError(f"No .csv, .tsv, .json or .jsonl file in {path}{hint}")
    if len(files) == 1:
        return path, {_split_name(files[0]) or "train": files[0]}
    splits = {_split_name(f): f for f in files}
    if None in splits or len(splits) != len(files):
        raise ValueError(f"{path} holds several data files {[os.path.basename(f) for f in files]}; name them by "
                         f"split (train.csv, validation.csv, test.csv) or pass one file")
    return path, splits


def load_dataset(path, name=None, split=None, data_files=None, features=None, shuffle=True, num_proc=None,
                 **kwargs):
    """A local dataset as a ``mindspore.dataset.GeneratorDataset`` (mindnlp's ``load_dataset`` signature).

    Args:
        path: a .csv/.tsv/.json/.jsonl file; a folder with one data file or one per split (``train.csv``,
            ``validation.csv``, ``test.csv``), optionally with HF's ``dataset_info.json``; or ``"csv"``/``"json"``
            with ``data_files``. Hub names are refused: download the data to a file first.
        name: a configuration (e.g. ``"sentences_allagree"``): its subfolder of ``path`` when there is one,
            otherwise only recorded as ``dataset.source.ds.config_name``.
        split: ``"train"``, ``"validation"``, ... ; with several splits and none chosen a dict of datasets comes
            back, with one the dataset itself (as in mindnlp).
        data_files: with ``path="csv"`` or ``"json"``: a file, or ``{split: file}``.
        features: ``{column: Value(dtype) | ClassLabel(names=[...])}`` overriding the inferred types.
        shuffle: row order shuffled by the pipeline's sampler (mindnlp's default; seed with
            ``mindpeft.set_seed``).
        num_proc: parallel workers of the ``GeneratorDataset``.

    The pipeline's ``source.ds`` is a :class:`LocalDataset` with HF-style ``features``.
    """
    unsupported = [k for k, v in kwargs.items() if v is not None and k not in ("cache_dir", "trust_remote_code")]
    if kwargs.get("streaming"):
        raise ValueError("streaming=True is not supported: mindpeft loads local files into memory")
    if unsupported:
        raise TypeError(f"load_dataset got unsupported arguments {unsupported}")
    folder, files = _resolve(os.fspath(path), name, data_files)
    info_file = os.path.join(folder, "dataset_info.json")
    declared = {}
    if os.path.isfile(info_file):
        with open(info_file, encoding="utf-8") as f:
            declared = _parse_features(json.load(f).get("features") or {}, info_file)
    if features is not None:
        declared.update(_parse_features(dict(features), "features"))
    if split is not None:
        if split not in files:
            raise ValueError(f"No split {split!r} in {path!r}; it has {sorted(files)}")
        files = {split: files[split]}
    datasets = {}
    for split_name, file in files.items():
        local = _build(file, split_name, name, declared, info_file if os.path.isfile(info_file) else None)
        datasets[split_name] = LocalGeneratorDataset(_Source(local), column_names=local.column_names,
                                                     shuffle=shuffle, num_parallel_workers=num_proc or 1)
    return next(iter(datasets.values())) if len(datasets) == 1 else datasets
