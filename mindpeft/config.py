"""Adapter configurations, stored as HF-peft-compatible ``adapter_config.json``."""
import dataclasses
import enum
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from .utils.constants import CONFIG_NAME
from .utils.hub import resolve_folder
from .utils.io import atomic_directory, json_dumps, read_json_object, write_text
from .utils.peft_types import PeftType, TaskType
from .utils.registry import get_config_class, peft_type_key

# Keys HF peft writes that carry no behaviour here (bookkeeping or defaults of features mindpeft lacks).
_IGNORED_KEYS = {"peft_version", "megatron_core", "qalora_group_size", "loftq_config", "auto_mapping"}


def _is_neutral(value):
    return value in (None, False, "", "default") or (isinstance(value, (dict, list)) and not value)


def plain_value(value):
    """``value`` as JSON stores it: numpy scalars as Python scalars, tuples and ranges as lists (recursively)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, range)):
        return [plain_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {plain_value(v) for v in value}
    if isinstance(value, dict):
        return {plain_value(k): plain_value(v) for k, v in value.items()}
    return value


def describe(value):
    """``value`` and its type, for error messages."""
    return f"{value!r} ({type(value).__name__})"


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (isinstance(value, int) or math.isfinite(value)))


def check_integer(config, name, minimum=None, optional=False):
    """Raise ``ValueError`` naming ``name`` unless ``config.<name>`` is an int (>= ``minimum``; or ``None`` when
    ``optional``)."""
    value = getattr(config, name)
    if value is None and optional:
        return
    if not is_integer(value) or (minimum is not None and value < minimum):
        kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}, got {describe(value)}")


def check_number(config, name, optional=False):
    """Raise ``ValueError`` naming ``name`` unless ``config.<name>`` is a finite int or float."""
    value = getattr(config, name)
    if not (is_number(value) or (value is None and optional)):
        raise ValueError(f"{name} must be a finite int or float, got {describe(value)}")


def check_bool(config, name):
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {describe(value)}")


def check_string(config, name):
    """``config.<name>`` must be a string or ``None``."""
    value = getattr(config, name)
    if not (value is None or isinstance(value, str)):
        raise ValueError(f"{name} must be a string, got {describe(value)}")


def check_names(config, name, keep_str=True, as_set=True):
    """``config.<name>``: ``None``, a string, or a list/set of strings; anything else raises ``ValueError`` naming
    ``name``. A string is kept as is when ``keep_str`` (a regex or a single name), else taken as one name (never
    split into letters); a collection is stored as a set when ``as_set``, else as a list."""
    value = getattr(config, name)
    if value is None or (isinstance(value, str) and keep_str):
        return
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, set)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a string or a list of strings, got {describe(value)}")
    setattr(config, name, set(value) if as_set else list(value) if isinstance(value, list) else sorted(value))


def check_choice(config, name, choices):
    """``config.<name>`` must be one of ``choices``."""
    value = getattr(config, name)
    if not isinstance(value, (str, bool, int, type(None))) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {describe(value)}")


def check_targets(config):
    """The module selection: ``target_modules`` (and ``exclude_modules`` where the method has it) and
    ``modules_to_save`` as names, ``layers_to_transform`` (an index or a list of them) with ``layers_pattern``
    (which needs it), neither of them with a regex ``target_modules``."""
    for name in ("target_modules", "exclude_modules"):
        if hasattr(config, name):
            check_names(config, name)
    check_names(config, "modules_to_save", keep_str=False, as_set=False)
    check_names(config, "layers_pattern", as_set=False)
    if isinstance(config.target_modules, str):
        for name in ("layers_to_transform", "layers_pattern"):
            if getattr(config, name) is not None:
                raise ValueError(f"`{name}` cannot be used when `target_modules` is a str.")
    value = config.layers_to_transform
    if not (value is None or (is_integer(value) and value >= 0)
            or (isinstance(value, list) and all(is_integer(v) and v >= 0 for v in value))):
        raise ValueError(f"layers_to_transform must be a non-negative integer or a list of them, got "
                         f"{describe(value)}")
    if config.layers_pattern and config.layers_to_transform is None:
        raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")


def check_mapping(config, name, check_value, expected):
    """``config.<name>``: ``None`` or a dict of string keys whose values pass ``check_value``."""
    value = getattr(config, name)
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict, got {describe(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not check_value(item):
            raise ValueError(f"{name} must map strings to {expected}; got {key!r}: {describe(item)}")


@dataclass
class PeftConfigMixin:
    """Serialisation shared by every adapter config."""

    peft_type: Optional[Union[str, PeftType]] = field(default=None, metadata={"help": "The type of PEFT method."})
    auto_mapping: Optional[dict] = field(default=None, metadata={"help": "Auto-class information."})

    def to_dict(self):
        out = {}
        for f in dataclasses.fields(self):
            value = plain_value(getattr(self, f.name))
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, set):
                value = sorted(value)
            out[f.name] = value
        return out

    def to_json_string(self, **kwargs):
        """The ``adapter_config.json`` text (``kwargs`` added); a ``TypeError``/``ValueError`` naming the field
        of a value JSON cannot hold, before anything is written."""
        return json_dumps({**self.to_dict(), **kwargs}) + "\n"

    def save_pretrained(self, save_directory, **kwargs):
        """Write ``adapter_config.json`` to ``save_directory``, replacing the folder as a whole (see
        :func:`mindpeft.utils.io.atomic_directory`)."""
        text = self.to_json_string(**kwargs)
        with atomic_directory(save_directory) as staging:
            write_text(os.path.join(staging, CONFIG_NAME), text)

    @classmethod
    def from_peft_type(cls, **kwargs):
        """The config class of ``kwargs['peft_type']`` built from ``kwargs``.

        Keys written by HF peft that mindpeft does not know are dropped when they hold their neutral default;
        a key that turns on a feature mindpeft lacks raises ``ValueError`` rather than being silently ignored.
        """
        peft_type = kwargs.get("peft_type")
        config_cls = get_config_class(peft_type)
        key = peft_type_key(peft_type)
        known = {f.name for f in dataclasses.fields(config_cls)}
        unsupported = {k: v for k, v in kwargs.items()
                       if k not in known and k not in _IGNORED_KEYS and not _is_neutral(v)}
        if unsupported:
            raise ValueError(f"This {key} adapter uses options mindpeft does not support: {unsupported}")
        return config_cls(**{k: v for k, v in kwargs.items() if k in known})

    @classmethod
    def from_json_file(cls, path):
        return read_json_object(path)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        """Load ``adapter_config.json`` from a local folder or a hub id in the local HF cache (optionally its
        ``subfolder``)."""
        path = resolve_folder(pretrained_model_name_or_path, kwargs.pop("revision", None), subfolder)
        file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(file):
            raise ValueError(f"Can't find '{CONFIG_NAME}' at {path!r} ")
        data = {**cls.from_json_file(file), **kwargs}
        if data.get("peft_type") is None:
            raise ValueError(f"{file} has no 'peft_type': it is not an adapter config")
        try:
            config = cls.from_peft_type(**data)
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None
        if cls not in (PeftConfigMixin, PeftConfig) and not isinstance(config, cls):
            raise ValueError(f"{file} holds a {type(config).__name__}, not a {cls.__name__}")
        return config

    @property
    def is_prompt_learning(self):
        return False

    @property
    def is_adaption_prompt(self):
        return False


@dataclass
class PeftConfig(PeftConfigMixin):
    """Fields every adapter config has."""

    base_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "The base model this adapter is for."})
    revision: Optional[str] = field(default=None, metadata={"help": "The base model revision."})
    task_type: Optional[Union[str, TaskType]] = field(default=None, metadata={"help": "The task the model does."})
    inference_mode: bool = field(default=False, metadata={"help": "Freeze the adapter (inference only)."})

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, plain_value(getattr(self, f.name)))
        check_string(self, "base_model_name_or_path")
        check_string(self, "revision")
        check_bool(self, "inference_mode")
        if self.task_type is not None:
            valid = [t.value for t in TaskType]
            value = self.task_type.value if isinstance(self.task_type, TaskType) else self.task_type
            if value not in valid:
                raise ValueError(f"Unknown task_type {self.task_type!r}; expected one of {valid}")
            self.task_type = TaskType(value)
        if self.peft_type is not None:
            self.peft_type = PeftType(self.peft_type)


@dataclass
class PromptLearningConfig(PeftConfig):
    """Fields of the methods that learn virtual tokens (prompt tuning, prefix tuning, P-tuning).

    ``token_dim``, ``num_layers``, ``num_attention_heads`` and ``num_transformer_submodules`` are filled from the
    base model's config when left ``None``.
    """

    num_virtual_tokens: int = field(default=None, metadata={"help": "Number of virtual tokens"})
    token_dim: Optional[int] = field(default=None, metadata={"help": "Hidden size of the base model"})
    num_transformer_submodules: Optional[int] = field(
        default=None, metadata={"help": "Number of transformer submodules (2 for encoder-decoder)"})
    num_attention_heads: Optional[int] = field(default=None, metadata={"help": "Number of attention heads"})
    num_layers: Optional[int] = field(default=None, metadata={"help": "Number of transformer layers"})
    modules_to_save: Optional[list] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)"})

    def __post_init__(self):
        super().__post_init__()
        check_integer(self, "num_virtual_tokens", minimum=1)
        for name in ("token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"):
            check_integer(self, name, minimum=1, optional=True)
        check_names(self, "modules_to_save", keep_str=False, as_set=False)

    @property
    def is_prompt_learning(self):
        return True
