"""HF-style model configuration read from and written to ``config.json``."""
import copy
import json
import numbers
import os

from ..utils.hub import resolve_folder
from ..utils.io import atomic_directory, json_dumps, read_json_object, write_text

CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A config that does not describe a buildable model. The message names the file (when known), the
    ``model_type`` and the missing or bad keys; raised before any weight is allocated."""

    def __init__(self, model_type, problems, source=None, hint=""):
        self.model_type, self.problems, self.source, self.hint = model_type, list(problems), source, hint
        super().__init__(self._message())

    def _message(self):
        where = f"{self.source}: " if self.source else ""
        kind = f"model_type {self.model_type!r}" if self.model_type else "model"
        return f"{where}invalid config for {kind}: " + "; ".join(self.problems) + self.hint

    def __str__(self):
        return self._message()

    def __reduce__(self):
        return ConfigError, (self.model_type, self.problems, self.source, self.hint)

    def with_source(self, source):
        """The same error naming the file ``source`` (unless it names one already)."""
        if self.source:
            return self
        return ConfigError(self.model_type, self.problems, source, self.hint)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class PretrainedConfig:
    """Attribute bag built from an HF ``config.json``.

    Subclasses set ``model_type``, ``defaults`` (values used when the file lacks a key) and ``attribute_map``
    (generic names such as ``hidden_size`` mapped onto the architecture's own, such as ``n_embd``).
    """

    model_type = ""
    defaults = {}
    attribute_map = {}
    required_keys = ()  # keys a config file of this model_type must have: the sizes the model is built from
    _registry = {}  # model_type -> config class, to name the type whose keys a mislabelled file has

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.model_type:
            PretrainedConfig._registry.setdefault(cls.model_type, cls)

    def __init__(self, **kwargs):
        common = {"pad_token_id": None, "bos_token_id": None, "eos_token_id": None, "tie_word_embeddings": True,
                  "is_encoder_decoder": False, "num_labels": 2}
        values = {**common, **copy.deepcopy(self.defaults), **kwargs}
        if "id2label" in values and "num_labels" not in kwargs:
            values["num_labels"] = len(values["id2label"])
        for key, value in values.items():
            setattr(self, key, value)
        self.model_type = type(self).model_type or values.get("model_type", "")

    def __setattr__(self, key, value):
        key = type(self).attribute_map.get(key, key)
        object.__setattr__(self, key, value)

    def __getattr__(self, key):
        mapped = type(self).attribute_map.get(key)
        if mapped is not None:
            return getattr(self, mapped)
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        values = {**config_dict, **kwargs}
        cls.check_required_keys(values)
        return cls(**values)

    # ----- validation (runs before any model is built) --------------------------------------------------------
    @classmethod
    def _has_key(cls, values, key):
        return key in values or any(alias in values for alias, target in cls.attribute_map.items() if target == key)

    @classmethod
    def check_required_keys(cls, values):
        """Raise :class:`ConfigError` when the dict ``values`` (a config file's content) lacks a key of
        ``required_keys``: the sign of a file of another architecture, which defaults would turn into a model of
        the wrong (possibly huge) size."""
        missing = [k for k in cls.required_keys if not cls._has_key(values, k)]
        if not missing:
            return
        declared = values.get("model_type") or ""
        own = cls.model_type or declared
        problems = [f"missing required key(s) {', '.join(missing)} (a {own or cls.__name__} config needs "
                    f"{', '.join(cls.required_keys)})"]
        if declared and cls.model_type and declared != cls.model_type:
            problems.insert(0, f"{cls.__name__} cannot read a config whose model_type is {declared!r}")
        fits = [t for t, c in PretrainedConfig._registry.items()
                if t != own and c.required_keys and all(c._has_key(values, k) for k in c.required_keys)]
        hint = f" (its keys fit model_type {' / '.join(repr(t) for t in fits)})" if fits else ""
        raise ConfigError(own, problems, hint=hint)

    def check_sizes(self, positive=(), optional_positive=(), divisible=()):
        """Raise :class:`ConfigError` unless the attributes ``positive`` are positive integers (``optional_positive``
        may also be ``None``) and, for each ``(a, b)`` of ``divisible``, ``b`` divides ``a``."""
        problems = []
        for key in positive + optional_positive:
            value = getattr(self, key, None)
            if value is None and key in optional_positive:
                continue
            if not _is_int(value) or value <= 0:
                problems.append(f"{key}={value!r} must be a positive integer")
        for a, b in divisible:
            va, vb = getattr(self, a, None), getattr(self, b, None)
            if _is_int(va) and _is_int(vb) and vb > 0 and va % vb:
                problems.append(f"{a}={va} is not divisible by {b}={vb}")
        if problems:
            raise ConfigError(self.model_type, problems)

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Read ``config.json`` from ``path``: a local folder or file, or a hub id in the local HF cache."""
        if not os.path.isfile(path):
            path = os.path.join(resolve_folder(path, kwargs.pop("revision", None), kwargs.pop("subfolder", None)),
                                CONFIG_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"No {CONFIG_NAME} at {path!r}")
        try:
            return cls.from_dict(read_json_object(path), **kwargs)
        except ConfigError as err:
            raise err.with_source(path) from None

    def to_dict(self):
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        out["model_type"] = self.model_type
        return out

    def to_json_string(self):
        """The ``config.json`` text; a ``TypeError``/``ValueError`` naming the key JSON cannot hold."""
        return json_dumps(self.to_dict()) + "\n"

    def save_pretrained(self, save_directory):
        """Write ``config.json``, replacing the folder as a whole (see :func:`mindpeft.utils.io.atomic_directory`)."""
        text = self.to_json_string()
        with atomic_directory(save_directory) as staging:
            write_text(os.path.join(staging, CONFIG_NAME), text)

    def __repr__(self):
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)}"
