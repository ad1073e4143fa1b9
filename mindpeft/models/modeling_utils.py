"""Base class of mindpeft's models: HF ``model.safetensors`` loading and saving by HF key names."""
import json
import os
import warnings
from collections import Counter

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..utils.hub import resolve_folder
from ..utils.io import atomic_directory, write_text
from .configuration_utils import CONFIG_NAME, ConfigError, PretrainedConfig
from .model_outputs import ModelOutputMixin

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
    """A ``{key: numpy array}`` dict from a ``.safetensors`` file; bfloat16 tensors are widened to float32.

    A damaged file (empty, truncated, bad header) raises ``ValueError`` naming it.
    """
    try:
        with safe_open(path, framework="numpy") as f:
            keys = list(f.keys())
            bf16 = [k for k in keys if f.get_slice(k).get_dtype() == "BF16"]
            out = {k: f.get_tensor(k) for k in keys if k not in bf16}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file (empty, truncated or damaged?): {err}") from None
    out.update(_read_bfloat16(path, bf16))
    return {k: out[k] for k in keys}


def _read_bfloat16(path, keys):
    """The bfloat16 tensors ``keys`` of a (validated) safetensors file, as float32."""
    if not keys:
        return {}
    out = {}
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        for key in keys:
            start, end = header[key]["data_offsets"]
            f.seek(8 + header_size + start)
            raw = np.frombuffer(f.read(end - start), dtype="<u2")
            out[key] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(header[key]["shape"])
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
    write_parameter(param, value)


def write_parameter(param, value):
    """Set ``param`` to ``value`` (an array or Tensor). Same shape: copied into its storage in place, so graphs
    compiled earlier see it (measured on MindSpore 2.10: ``Parameter.set_data`` swaps the storage, and a compiled
    ``mindspore.jit`` function keeps reading the old one); another shape: new storage."""
    value = value.asnumpy() if isinstance(value, Tensor) else np.asarray(value)
    tensor = Tensor(np.require(value, numpy_dtype(param.dtype), "C"), dtype=param.dtype)  # keeps 0-d shapes
    if tuple(tensor.shape) == tuple(param.shape):
        param.copy_(tensor)
    else:
        param.set_data(tensor)


class PreTrainedModel(ModelOutputMixin, nn.Cell):
    """A Cell built from a :class:`PretrainedConfig` that loads HF weights by their HF key names.

    Subclasses set ``config_class`` and ``base_model_prefix`` (the attribute holding the backbone, such as
    ``transformer`` or ``bert``) so checkpoints of the backbone load into heads and the other way round.
    """

    config_class = PretrainedConfig
    base_model_prefix = ""
    _tied_keys = ()  # checkpoint keys that duplicate a tied Parameter and are ignored on load
    _head_modules = ("classifier", "score", "qa_outputs", "lm_head", "pooler")  # may be newly initialised

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def name_or_path(self):
        return getattr(self.config, "_name_or_path", "")

    @classmethod
    def from_pretrained(cls, path, config=None, strict=None, **config_kwargs):
        """Build the model from ``config.json`` in ``path`` (a local folder, or a hub id found in the local Hugging
        Face cache) and load ``model.safetensors``.

        The config is validated before anything is allocated. ``strict`` is passed to :meth:`load_state_dict`:
        by default weights missing from the checkpoint raise, except task heads, which are newly initialised with a
        warning (as in transformers).
        """
        path = resolve_folder(path, config_kwargs.pop("revision", None), config_kwargs.pop("subfolder", None))
        weights = os.path.join(path, WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"No {WEIGHTS_NAME} in {path!r}")
        if config is None:
            try:
                config = cls.config_class.from_pretrained(path, **config_kwargs)
            except ConfigError as err:
                raise err.with_source(os.path.join(path, CONFIG_NAME)) from None
        config._name_or_path = os.path.abspath(path)
        if getattr(config, "quantization_config", None) is not None:  # quantized linear layers (bitsandbytes formats)
            from ..quantization.loading import load_quantized_model
            return load_quantized_model(cls, config, weights, strict=strict, source=path)
        model = cls(config)
        model.load_state_dict(load_safetensors(weights), strict=strict, source=path)
        model.set_train(False)
        return model

    def _checkpoint_key_to_model_key(self, key, model_keys):
        """The model's name for checkpoint ``key`` (legacy ``gamma``/``beta`` names, with or without the
        ``base_model_prefix``), or ``None``."""
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

    def _is_head_key(self, key):
        """Whether model key ``key`` belongs to a task head (or pooler), which may be newly initialised."""
        prefix = self.base_model_prefix
        if prefix and key.startswith(prefix + "."):
            key = key[len(prefix) + 1:]
        return key.split(".", 1)[0] in self._head_modules

    def _layer_lists(self):
        """``{name: length}`` of the model's layer lists (``h``, ``encoder.layer``, ``decoder.block``...)."""
        return {name: len(cell) for name, cell in self.cells_and_names() if isinstance(cell, nn.CellList)}

    def _layer_count_problems(self, checkpoint_keys, unexpected):
        """Lines describing layer lists whose count differs between the checkpoint and the config."""
        lists = self._layer_lists()
        if not lists:
            return [], []
        prefix = self.base_model_prefix
        found = {}  # list name -> highest layer index in the checkpoint
        for key in checkpoint_keys:
            candidates = [key]
            if prefix:
                candidates += [key[len(prefix) + 1:]] if key.startswith(prefix + ".") else [f"{prefix}.{key}"]
            for cand in candidates:
                for name in lists:
                    if cand.startswith(name + "."):
                        index = cand[len(name) + 1:].split(".", 1)[0]
                        if index.isdigit():
                            found[name] = max(found.get(name, -1), int(index))
        config_keys = ("n_layer", "num_hidden_layers", "num_layers", "num_decoder_layers")
        extra, fewer = [], []
        for name, length in lists.items():
            if name not in found:
                continue
            in_checkpoint = found[name] + 1
            if in_checkpoint == length:
                continue
            keys = [k for k in config_keys if getattr(self.config, k, None) == length and k in self.config.__dict__]
            said = f" ({', '.join(f'{k}={length}' for k in keys)})" if keys else ""
            line = f"{name}: the checkpoint has {in_checkpoint} layers, the config{said} {length}"
            (extra if in_checkpoint > length else fewer).append(line)
        return extra, fewer

    @staticmethod
    def _summarise(keys, limit=20):
        shown = ", ".join(keys[:limit])
        return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

    def load_state_dict(self, state_dict, strict=None, source=None):
        """Load ``{HF key: array}``; returns ``(missing, unexpected)`` key lists. Shape mismatches raise.

        ``strict=None`` (default), as transformers does: weights the checkpoint lacks raise a ``ValueError`` naming
        them, except task heads (``classifier``, ``score``, ``qa_outputs``, ``lm_head``, ``pooler``), which stay newly
        initialised with a warning; unused checkpoint weights warn, but a checkpoint with more layers than the config
        raises. ``strict=True`` raises on any missing or unused weight; ``strict=False`` only warns. ``source``
        (the checkpoint's path) is named in the messages.
        """
        params = named_parameters(self)
        from ..quantization.serialization import quantized_model_state  # quantized layers: bitsandbytes keys
        state_dict = quantized_model_state(self, state_dict)
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
        name = type(self).__name__
        where = f" at {source}" if source else ""
        extra, fewer = self._layer_count_problems(list(state_dict), unexpected)
        if strict is not False and extra:
            raise ValueError(f"The checkpoint{where} has more layers than the config of {name}: {'; '.join(extra)}. "
                             "The config and the weights disagree (wrong config.json?)")
        heads = [] if strict else [k for k in missing if self._is_head_key(k)]
        required = [k for k in missing if k not in heads]
        if strict is not False and (required or (strict and unexpected)):
            problems = []
            if required:
                problems.append(f"missing {len(required)} weight(s): {self._summarise(required)}")
            if fewer:
                problems.append("; ".join(fewer))
            if strict and unexpected:
                problems.append(f"unexpected {len(unexpected)} weight(s): {self._summarise(unexpected)}")
            raise ValueError(f"The checkpoint{where} does not match {name}: " + "; ".join(problems))
        newly = heads if strict is None else missing
        if newly:
            warnings.warn(f"Some weights of {name} were not initialized from the model checkpoint{where} and are "
                          f"newly initialized: {newly}\nYou should probably TRAIN this model on a down-stream task to "
                          "be able to use it for predictions and inference.")
        if unexpected:
            warnings.warn(f"Some weights of the model checkpoint{where} were not used when initializing {name}: "
                          f"{unexpected}\n- This IS expected if you are initializing {name} from the checkpoint of a "
                          "model trained on another task or with another architecture.")
        return missing, unexpected

    def state_dict(self):
        """``{HF key: numpy array}`` of every parameter."""
        from ..quantization.serialization import quantized_checkpoint  # quantized layers: bitsandbytes keys
        return quantized_checkpoint(self, {name: to_numpy(p) for name, p in named_parameters(self).items()})

    def save_pretrained(self, save_directory):
        """Write ``config.json`` and ``model.safetensors`` with HF key names, replacing the folder as a whole
        (see :func:`mindpeft.utils.io.atomic_directory`)."""
        config_text = self.config.to_json_string()
        tensors = {k: np.require(v, requirements="C") for k, v in self.state_dict().items()}  # keeps 0-d shapes
        with atomic_directory(save_directory) as staging:
            write_text(os.path.join(staging, CONFIG_NAME), config_text)
            save_file(tensors, os.path.join(staging, WEIGHTS_NAME), metadata={"format": "pt"})

    def get_input_embeddings(self):
        raise NotImplementedError(f"{type(self).__name__} does not define get_input_embeddings")

    def num_parameters(self):
        return sum(int(np.prod(p.shape)) for p in named_parameters(self).values())
