"""Registries of PEFT methods, filled by each tuner package calling :func:`register_peft_method` when imported.

``config.py``, ``mapping.py`` and ``peft_model.py`` look methods up here by ``PeftType`` value, so they import no
tuner; ``mindpeft.tuners`` imports every built-in method once.
"""
from .peft_types import PeftType, add_peft_type

PEFT_TYPE_TO_CONFIG_MAPPING = {}  # "LORA" -> LoraConfig
# Layer-injecting methods map to their tuner (a Cell wrapping the model); prompt-learning methods to their encoder.
PEFT_TYPE_TO_TUNER_MAPPING = {}
PEFT_TYPE_TO_PREFIX_MAPPING = {}  # "LORA" -> "lora_", the part of a parameter name that marks the adapter's own


def register_peft_method(*, name, config_cls, model_cls, prefix=None):
    """Make the method ``name`` (lower case, e.g. ``"ln_tuning"``; its ``PeftType`` is ``name.upper()``) available
    to ``get_peft_model``, ``PeftConfig.from_pretrained`` and ``PeftModel``, as HF peft's function of that name.

    ``model_cls`` is the tuner (a ``BaseTuner``) or, for prompt learning, the prompt encoder; ``prefix`` defaults
    to ``model_cls.prefix``, else ``name + "_"``. A name outside :class:`PeftType` becomes a ``PeftType`` value.
    """
    if not isinstance(name, str) or not name or name.endswith("_") or not name.islower():
        raise ValueError(f"Please pass the name of the PEFT method in lower case without a '_' suffix, got {name!r}.")
    key = name.upper()
    if key in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise KeyError(f"There is already a PEFT method called {name!r}, please choose a unique name.")
    model_prefix = getattr(model_cls, "prefix", None) or None
    if prefix is None:
        prefix = model_prefix or f"{name}_"
    if model_prefix is not None and model_prefix != prefix:
        raise ValueError(f"Inconsistent prefixes found: {prefix!r} and {model_prefix!r} (they should be the same).")
    add_peft_type(key)
    PEFT_TYPE_TO_CONFIG_MAPPING[key] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[key] = model_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[key] = prefix


def peft_type_key(peft_type):
    """The registry key (``"LORA"``) of a ``PeftType`` or its string value."""
    return peft_type.value if isinstance(peft_type, PeftType) else peft_type


def get_config_class(peft_type):
    """The config class registered for ``peft_type``; ``ValueError`` naming the supported types otherwise."""
    key = peft_type_key(peft_type)
    if not isinstance(key, str) or key not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ValueError(f"Unknown or unsupported peft_type {peft_type!r}; supported: "
                         f"{sorted(PEFT_TYPE_TO_CONFIG_MAPPING)}")
    return PEFT_TYPE_TO_CONFIG_MAPPING[key]


def get_model_class(peft_type):
    """The tuner (or prompt encoder) class registered for ``peft_type``; ``ValueError`` otherwise."""
    key = peft_type_key(peft_type)
    if key not in PEFT_TYPE_TO_TUNER_MAPPING:
        raise ValueError(f"peft_type {key!r} is not supported yet by mindpeft; supported: "
                         f"{sorted(PEFT_TYPE_TO_TUNER_MAPPING)}")
    return PEFT_TYPE_TO_TUNER_MAPPING[key]
