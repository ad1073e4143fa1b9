"""Base class of mindpeft's models: HF ``model.safetensors`` loading and saving by HF key names."""
import os
import warnings
from collections import Counter

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from safetensors.numpy import load_file, save_file

from .configuration_utils import PretrainedConfig

WEIGHTS_NAME = "model.safetensors"
_LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}


def named_parameters(cell):
    """``{structural name: Parameter}`` of a Cell, each shared Parameter once."""
    return dict(cell.parameters_and_names())


def sync_parameter_names(cell):
    """Give every Parameter its structural name, so names are unique (graph mode and optimizers need this).

    ``cell`` may sit inside a parent that prefixed its names (``base_model.model.``); the prefix most of its
    Parameters already carry is kept.
    """
    named = list(cell.parameters_and_names())
    prefixes = Counter(p.name[: len(p.name) - len(n)] for n, p in named
                       if p.name.endswith(n) and (len(p.name) == len(n) or p.name[-len(n) - 1] == "."))
    prefix = prefixes.most_common(1)[0][0] if prefixes else ""
    for name, param in named:
        if param.name != prefix + name:
            param.name = prefix + name


def to_numpy(param):
    return param.asnumpy() if hasattr(param, "asnumpy") else np.asarray(param)


def load_safetensors(path):
    """A ``{key: numpy array}`` dict from a ``.safetensors`` file; bfloat16 tensors are widened to float32."""
    try:
        return load_file(path)
    except (TypeError, ValueError):
        from safetensors import safe_open

        out = {}
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
        return out


_NP_DTYPES = {ms.float16: np.float16, ms.float32: np.float32, ms.float64: np.float64, ms.int32: np.int32,
              ms.int64: np.int64, ms.bool_: np.bool_}


def numpy_dtype(ms_dtype):
    """The numpy dtype for a MindSpore dtype (float32 for bfloat16, which numpy lacks)."""
    return _NP_DTYPES.get(ms_dtype, np.float32)


def assign(param, value, key):
    """Copy ``value`` into ``param``, raising a clear error when the shapes differ."""
    value = np.asarray(value)
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(
            f"Shape mismatch for {key!r}: checkpoint has {tuple(value.shape)}, model expects {tuple(param.shape)}"
        )
    param.set_data(Tensor(value.astype(numpy_dtype(param.dtype)), dtype=param.dtype))


class PreTrainedModel(nn.Cell):
    """A Cell built from a :class:`PretrainedConfig` that loads HF weights by their HF key names.

    Subclasses set ``config_class`` and ``base_model_prefix`` (the attribute holding the backbone, such as
    ``transformer`` or ``bert``) so checkpoints of the backbone load into heads and the other way round.
    """

    config_class = PretrainedConfig
    base_model_prefix = ""
    _tied_keys = ()  # checkpoint keys that duplicate a tied Parameter and are ignored on load

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def name_or_path(self):
        return getattr(self.config, "_name_or_path", "")

    @classmethod
    def from_pretrained(cls, path, config=None, strict=False, **config_kwargs):
        """Build the model from ``config.json`` in the local folder ``path`` and load ``model.safetensors``."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Model folder {path!r} does not exist (mindpeft loads models from local folders)")
        if config is None:
            config = cls.config_class.from_pretrained(path, **config_kwargs)
        config._name_or_path = os.path.abspath(path)
        model = cls(config)
        weights = os.path.join(path, WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"No {WEIGHTS_NAME} in {path!r}")
        model.load_state_dict(load_safetensors(weights), strict=strict)
        model.set_train(False)
        return model

    def _checkpoint_key_to_model_key(self, key, model_keys):
        for old, new in _LEGACY_SUFFIXES.items():
            if key.endswith(old) and key not in model_keys:
                key = key[: -len(old)] + new
        if key in model_keys:
            return key
        prefix = self.base_model_prefix
        if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in model_keys:
            return key[len(prefix) + 1:]
        if prefix and f"{prefix}.{key}" in model_keys:
            return f"{prefix}.{key}"
        return None

    def load_state_dict(self, state_dict, strict=False):
        """Load ``{HF key: array}``; returns ``(missing, unexpected)`` key lists. Shape mismatches raise."""
        params = named_parameters(self)
        loaded, unexpected = set(), []
        for key, value in state_dict.items():
            target = self._checkpoint_key_to_model_key(key, params)
            if target is None:
                if not any(key.endswith(t) for t in self._tied_keys):
                    unexpected.append(key)
                continue
            assign(params[target], value, key)
            loaded.add(target)
        missing = [k for k in params if k not in loaded]
        if strict and (missing or unexpected):
            raise ValueError(f"Checkpoint does not match {type(self).__name__}: missing {missing}, "
                             f"unexpected {unexpected}")
        if missing:
            warnings.warn(f"Some weights of {type(self).__name__} were not in the checkpoint and are newly "
                          f"initialised: {missing}")
        if unexpected:
            warnings.warn(f"Some checkpoint weights were not used by {type(self).__name__}: {unexpected}")
        return missing, unexpected

    def state_dict(self):
        """``{HF key: numpy array}`` of every parameter."""
        return {name: to_numpy(p) for name, p in named_parameters(self).items()}

    def save_pretrained(self, save_directory):
        """Write ``config.json`` and ``model.safetensors`` with HF key names."""
        os.makedirs(save_directory, exist_ok=True)
        self.config.save_pretrained(save_directory)
        tensors = {k: np.ascontiguousarray(v) for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME), metadata={"format": "pt"})

    def get_input_embeddings(self):
        raise NotImplementedError(f"{type(self).__name__} does not define get_input_embeddings")

    def num_parameters(self):
        return sum(int(np.prod(p.shape)) for p in named_parameters(self).values())
