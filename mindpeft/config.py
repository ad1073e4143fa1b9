"""Adapter configurations, stored as HF-peft-compatible ``adapter_config.json``."""
import dataclasses
import enum
import json
import os
from dataclasses import dataclass, field
from typing import Optional, Union

from .utils.constants import CONFIG_NAME
from .utils.peft_types import PeftType, TaskType

# Keys HF peft writes that carry no behaviour here (bookkeeping or defaults of features mindpeft lacks).
_IGNORED_KEYS = {"peft_version", "megatron_core", "qalora_group_size", "loftq_config", "auto_mapping"}


def _is_neutral(value):
    return value in (None, False, "", "default") or (isinstance(value, (dict, list)) and not value)


@dataclass
class PeftConfigMixin:
    """Serialisation shared by every adapter config."""

    peft_type: Optional[Union[str, PeftType]] = field(default=None, metadata={"help": "The type of PEFT method."})
    auto_mapping: Optional[dict] = field(default=None, metadata={"help": "Auto-class information."})

    def to_dict(self):
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, set):
                value = sorted(value)
            out[f.name] = value
        return out

    def save_pretrained(self, save_directory, **kwargs):
        """Write ``adapter_config.json`` to ``save_directory``."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        data = {**self.to_dict(), **kwargs}
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)

    @classmethod
    def from_peft_type(cls, **kwargs):
        """The config class of ``kwargs['peft_type']`` built from ``kwargs``.

        Keys written by HF peft that mindpeft does not know are dropped when they hold their neutral default;
        a key that turns on a feature mindpeft lacks raises ``ValueError`` rather than being silently ignored.
        """
        from .mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        peft_type = kwargs.get("peft_type")
        key = peft_type.value if isinstance(peft_type, PeftType) else peft_type
        if key not in PEFT_TYPE_TO_CONFIG_MAPPING:
            raise ValueError(f"Unknown or unsupported peft_type {peft_type!r}; supported: "
                             f"{sorted(PEFT_TYPE_TO_CONFIG_MAPPING)}")
        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[key]
        known = {f.name for f in dataclasses.fields(config_cls)}
        unsupported = {k: v for k, v in kwargs.items()
                       if k not in known and k not in _IGNORED_KEYS and not _is_neutral(v)}
        if unsupported:
            raise ValueError(f"This {key} adapter uses options mindpeft does not support: {unsupported}")
        return config_cls(**{k: v for k, v in kwargs.items() if k in known})

    @classmethod
    def from_json_file(cls, path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        """Load ``adapter_config.json`` from a local folder (optionally its ``subfolder``)."""
        path = pretrained_model_name_or_path
        if subfolder is not None:
            path = os.path.join(path, subfolder)
        file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(file):
            raise ValueError(f"Can't find '{CONFIG_NAME}' at {path!r} (mindpeft loads adapters from local folders)")
        data = {**cls.from_json_file(file), **kwargs}
        config = cls.from_peft_type(**data)
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
        if (not isinstance(self.num_virtual_tokens, int) or isinstance(self.num_virtual_tokens, bool)
                or self.num_virtual_tokens <= 0):
            raise ValueError(f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")

    @property
    def is_prompt_learning(self):
        return True
