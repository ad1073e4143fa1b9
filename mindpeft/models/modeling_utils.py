"""Base class of mindpeft's models: HF ``model.safetensors`` loading and saving by HF key names."""
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..utils.hub import recorded_name, resolve_folder
from ..utils.io import atomic_directory, read_json_object, write_text
from .configuration_utils import CONFIG_NAME, ConfigError, PretrainedConfig
from .gradient_checkpointing import (disable_gradient_checkpointing, enable_gradient_checkpointing,
                                     is_gradient_checkpointing)
from .model_outputs import ModelOutputMixin
from .peft_integration import PeftAdapterMixin, adapter_base_model_path

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
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
    return dict(SafetensorsCheckpoint(path))


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _safetensors_header(path):
    """``(data offset, {key: entry})`` of a safetensors file; ``ValueError`` naming a damaged file."""
    try:
        with safe_open(path, framework="numpy"):  # validates the header against the file
            pass
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file (empty, truncated or damaged?): {err}") from None
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


class SafetensorsCheckpoint(Mapping):
    """``{key: numpy array}`` of a ``.safetensors`` file, or of the shards a ``model.safetensors.index.json``
    names, each tensor read from disk when asked for (no memory map): loading it into a model needs the model's
    memory plus one tensor. Iteration goes shard by shard, in file order. bfloat16 is widened to float32."""

    def __init__(self, path):
        self.path = path
        if not path.endswith(".json"):
            start, header = _safetensors_header(path)
            self._entries = {key: (path, start, header[key]) for key in _file_order(header)}
            return
        weight_map = read_json_object(path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path} has no 'weight_map' object")
        folder = os.path.dirname(path)
        self._entries = {}
        for name in sorted(set(weight_map.values())):
            shard = os.path.join(folder, name)
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"{path} names the shard {name!r}, which is not in {folder!r}")
            start, header = _safetensors_header(shard)
            for key in _file_order(header):
                if weight_map.get(key) == name:
                    self._entries[key] = (shard, start, header[key])
        absent = [key for key in weight_map if key not in self._entries]
        if absent:
            raise ValueError(f"{path} maps {len(absent)} key(s) to shards that lack them: {absent[:10]}")

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def dtype_name(self, key):
        """The safetensors dtype of ``key`` (``"F32"``, ``"BF16"``...)."""
        return self._entries[key][2]["dtype"]

    def __getitem__(self, key):
        path, start, entry = self._entries[key]
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {key!r} has dtype {entry['dtype']}, which mindpeft cannot read")
        begin, end = entry["data_offsets"]
        with open(path, "rb") as f:
            f.seek(start + begin)
            array = np.frombuffer(f.read(end - begin), dtype=np.dtype(dtype).newbyteorder("<"))
        if entry["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array.reshape(entry["shape"])


def _file_order(header):
    """The keys of a safetensors header in the order their data lies in the file."""
    return sorted(header, key=lambda key: header[key]["data_offsets"][0])


def checkpoint_file(folder):
    """``model.safetensors`` in ``folder``, else its sharded checkpoint's ``model.safetensors.index.json``."""
    for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"No {WEIGHTS_NAME} (or sharded {WEIGHTS_INDEX_NAME}) in {folder!r}")


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


_DTYPE_NAMES = {"float32": ms.float32, "fp32": ms.float32, "float": ms.float32, "float16": ms.float16,
                "fp16": ms.float16, "half": ms.float16, "bfloat16": ms.bfloat16, "bf16": ms.bfloat16}
_CHECKPOINT_DTYPES = {"F32": ms.float32, "F16": ms.float16, "BF16": ms.bfloat16}
_FLOAT_DTYPES = (ms.float16, ms.bfloat16, ms.float32, ms.float64)


def floating_dtype(value, name="ms_dtype"):
    """A MindSpore floating-point dtype from a MindSpore dtype or a name (``"float16"``, ``"bfloat16"``,
    ``"float32"``, also torch's ``torch.float16`` or its text); ``None`` and ``"auto"`` are returned as they are."""
    if value is None or value == "auto" or value in _FLOAT_DTYPES[:3]:
        return value
    dtype = _DTYPE_NAMES.get(str(value).lower().removeprefix("torch."))
    if dtype is None:
        raise ValueError(f"{name}={value!r} is not a dtype mindpeft loads models in; use 'float32', 'float16', "
                         "'bfloat16' (or the MindSpore dtypes) or 'auto'")
    return dtype


def check_dtype_supported(dtype):
    """bfloat16 on CPU raises: MindSpore 2.10's CPU backend has no bfloat16 MatMul or Softmax kernels."""
    if dtype == ms.bfloat16 and ms.get_context("device_target") == "CPU":
        raise ValueError("bfloat16 weights need bfloat16 MatMul and Softmax kernels, which MindSpore's CPU backend "
                         "lacks; load the model in float16 or float32 on CPU (bfloat16 runs on Ascend)")


def cast_parameters(cell, dtype, keep_in_float32=()):
    """Cast ``cell``'s floating-point Parameters to ``dtype`` in place, one at a time, except those inside modules
    named in ``keep_in_float32`` (a name part of the parameter's path, as transformers' ``_keep_in_fp32_modules``)."""
    for name, param in named_parameters(cell).items():
        if param.dtype in _FLOAT_DTYPES and param.dtype != dtype:
            if not any(part in keep_in_float32 for part in name.split(".")):
                param.set_dtype(dtype)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12, "KIB": 2 ** 10,
               "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_shard_size(size):
    """Bytes from transformers' ``max_shard_size``: an integer, or text such as ``"5GB"`` (powers of 1000) or
    ``"500MiB"`` (powers of 1024)."""
    value = size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size) if isinstance(size, str) else None
    if match and match[2].upper() in _SIZE_UNITS:
        value = float(match[1]) * _SIZE_UNITS[match[2].upper()]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ValueError(f"max_shard_size={size!r} is not a size; use a number of bytes or text such as '5GB'")
    return int(value)


def split_into_shards(tensors, max_bytes):
    """Lists of keys, one per shard, taken in order, each shard at most ``max_bytes`` (a larger tensor gets a shard
    of its own): huggingface_hub's rule, which transformers uses."""
    shards, current, current_bytes = [], [], 0
    for key, array in tensors.items():
        if array.nbytes > max_bytes:
            shards.append([key])
            continue
        if current and current_bytes + array.nbytes > max_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(key)
        current_bytes += array.nbytes
    return shards + [current] if current or not shards else shards


def _is_weights_file(name):
    return name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME) or _SHARD_NAME.fullmatch(name) is not None


class PreTrainedModel(ModelOutputMixin, PeftAdapterMixin, nn.Cell):
    """A Cell built from a :class:`PretrainedConfig` that loads HF weights by their HF key names.

    Subclasses set ``config_class`` and ``base_model_prefix`` (the attribute holding the backbone, such as
    ``transformer`` or ``bert``) so checkpoints of the backbone load into heads and the other way round.
    """

    config_class = PretrainedConfig
    base_model_prefix = ""
    _tied_keys = ()  # checkpoint keys that duplicate a tied Parameter and are ignored on load
    _head_modules = ("classifier", "score", "qa_outputs", "lm_head", "pooler")  # may be newly initialised
    _keep_in_fp32_modules = ()  # module names whose weights stay float32 when loaded in float16 (transformers')
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__()
        self.config = config

    @property
    def name_or_path(self):
        return getattr(self.config, "_name_or_path", "")

    @classmethod
    def from_pretrained(cls, path, config=None, strict=None, ms_dtype=None, **config_kwargs):
        """Build the model from ``config.json`` in ``path`` (a local folder, or a hub id found in the local Hugging
        Face cache) and load ``model.safetensors``, or the shards ``model.safetensors.index.json`` names, one
        tensor at a time (peak memory: the model plus its largest tensor).

        The config is validated before anything is allocated. ``strict`` is passed to :meth:`load_state_dict`:
        by default weights missing from the checkpoint raise, except task heads, which are newly initialised with a
        warning (as in transformers). ``ms_dtype`` (or transformers' ``dtype``/``torch_dtype``): the dtype of the
        floating-point weights, a MindSpore dtype, ``"float32"`` (default), ``"float16"``, ``"bfloat16"`` (not on
        CPU) or ``"auto"`` (the config's ``dtype``, else the checkpoint's); in float16 the modules in
        ``_keep_in_fp32_modules`` stay float32, as in transformers.

        A folder holding an adapter (``adapter_config.json``) and no ``config.json`` loads the base model its
        ``base_model_name_or_path`` names and then the adapter (:meth:`load_adapter`, as ``adapter_name``), as
        transformers does.
        """
        name = path
        path = resolve_folder(path, config_kwargs.pop("revision", None), config_kwargs.pop("subfolder", None))
        adapter_name = config_kwargs.pop("adapter_name", "default")
        base_path = adapter_base_model_path(path)
        if base_path is not None:  # an adapter folder (transformers): the base model it names, then the adapter
            model = cls.from_pretrained(base_path, config, strict, ms_dtype, **config_kwargs)
            model.load_adapter(path, adapter_name=adapter_name)
            return model
        dtype = cls._requested_dtype(ms_dtype, config_kwargs.pop("dtype", None), config_kwargs.pop("torch_dtype", None))
        weights = checkpoint_file(path)
        if config is None:
            try:
                config = cls.config_class.from_pretrained(path, **config_kwargs)
            except ConfigError as err:
                raise err.with_source(os.path.join(path, CONFIG_NAME)) from None
        config._name_or_path = recorded_name(name, path)
        checkpoint = SafetensorsCheckpoint(weights)
        if dtype == "auto":
            dtype = cls._checkpoint_dtype(config, checkpoint)
        check_dtype_supported(dtype)
        if getattr(config, "quantization_config", None) is not None:  # quantized linear layers (bitsandbytes formats)
            from ..quantization.loading import load_quantized_model
            return load_quantized_model(cls, config, checkpoint, dtype, strict=strict, source=path)
        model = cls(config)
        if dtype is not None:
            cast_parameters(model, dtype, cls._keep_in_fp32_modules if dtype == ms.float16 else ())
        model.load_state_dict(checkpoint, strict=strict, source=path)
        model.set_train(False)
        return model

    @staticmethod
    def _requested_dtype(ms_dtype, dtype, torch_dtype):
        given = {name: floating_dtype(value, name) for name, value in
                 (("ms_dtype", ms_dtype), ("dtype", dtype), ("torch_dtype", torch_dtype)) if value is not None}
        if len(set(given.values())) > 1:
            raise ValueError(f"Conflicting dtypes: {', '.join(f'{k}={v}' for k, v in given.items())}; pass one")
        return next(iter(given.values()), None)

    @staticmethod
    def _checkpoint_dtype(config, checkpoint):
        """``dtype="auto"``: the config's ``dtype`` (or ``torch_dtype``), else the first floating-point tensor's."""
        named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if named is not None:
            return floating_dtype(named, "config.dtype")
        return next((_CHECKPOINT_DTYPES[checkpoint.dtype_name(k)] for k in checkpoint
                     if checkpoint.dtype_name(k) in _CHECKPOINT_DTYPES), None)

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

    def save_pretrained(self, save_directory, max_shard_size="5GB", save_peft_format=True):
        """Write ``config.json`` and the weights with HF key names, replacing the folder as a whole (see
        :func:`mindpeft.utils.io.atomic_directory`; weight files of an earlier save are not kept).

        Weights over ``max_shard_size`` (bytes, or text such as ``"5GB"``, ``"500MB"``) are split as transformers
        does: ``model-00001-of-00003.safetensors``... and ``model.safetensors.index.json``.

        A model holding adapters (:meth:`add_adapter`, :meth:`load_adapter`) writes only its active adapter, in HF
        peft's format (keys prefixed ``base_model.model.`` unless ``save_peft_format=False``), as transformers does.
        """
        if self._hf_peft_config_loaded:
            return self._save_adapters(save_directory, save_peft_format)
        max_bytes = parse_shard_size(max_shard_size)
        config_text = self.config.to_json_string()
        tensors = {k: np.require(v, requirements="C") for k, v in self.state_dict().items()}  # keeps 0-d shapes
        shards = split_into_shards(tensors, max_bytes)
        with atomic_directory(save_directory, discard=_is_weights_file) as staging:
            write_text(os.path.join(staging, CONFIG_NAME), config_text)
            if len(shards) == 1:
                save_file(tensors, os.path.join(staging, WEIGHTS_NAME), metadata={"format": "pt"})
                return
            weight_map = {}
            for number, keys in enumerate(shards, 1):
                name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
                save_file({k: tensors[k] for k in keys}, os.path.join(staging, name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(keys, name))
            index = {"metadata": {"total_parameters": sum(int(v.size) for v in tensors.values()),
                                  "total_size": sum(int(v.nbytes) for v in tensors.values())},
                     "weight_map": weight_map}
            write_text(os.path.join(staging, WEIGHTS_INDEX_NAME), json.dumps(index, indent=2, sort_keys=True) + "\n")

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Recompute each layer's activations in the backward pass instead of keeping them (``Cell.recompute`` on
        every block of the model's layer lists); see :mod:`mindpeft.models.gradient_checkpointing`."""
        enable_gradient_checkpointing(self, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        disable_gradient_checkpointing(self)

    @property
    def is_gradient_checkpointing(self):
        return is_gradient_checkpointing(self)

    def enable_input_require_grads(self):
        """transformers' workaround for checkpointed layers whose inputs need no gradient (frozen embeddings): not
        needed here, since MindSpore's non-reentrant recompute gives those layers' parameters their gradients;
        kept so that code written for transformers runs."""

    def disable_input_require_grads(self):
        """See :meth:`enable_input_require_grads`."""

    def get_input_embeddings(self):
        raise NotImplementedError(f"{type(self).__name__} does not define get_input_embeddings")

    def num_parameters(self):
        return sum(int(np.prod(p.shape)) for p in named_parameters(self).values())
