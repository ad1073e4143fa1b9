"""bitsandbytes' checkpoint keys for quantized layers, as transformers writes them, and the way back.

For a layer ``p`` quantized to 4 bits: ``p.weight`` (packed uint8 (ceil(n / 2), 1)), ``p.weight.absmax``,
``p.weight.quant_map`` (the 16 code values), with double quantization ``p.weight.nested_absmax`` and
``p.weight.nested_quant_map`` (the 256-value dynamic map), and ``p.weight.quant_state.bitsandbytes__nf4`` (or
``__fp4``): the UTF-8 JSON of the scalars (quant type, blocksize, dtype, shape, nested blocksize, dtype and offset)
as a uint8 tensor. For 8 bits: ``p.weight`` (int8), ``p.SCB`` and ``p.weight_format`` (0, row-major).
"""
import json

import numpy as np

from . import functional as F
from .layers import QuantizedLinear

QUANT_STATE = "weight.quant_state.bitsandbytes__"
_4BIT_RENAMES = {"weight": "weight", "weight.absmax": "weight_absmax", "weight.nested_absmax": "weight_nested_absmax"}
_8BIT_RENAMES = {"weight": "weight", "SCB": "SCB"}
_CHECKED_ONLY = ("weight.quant_map", "weight.nested_quant_map", "weight_format")  # validated, not loaded


def quantized_layers(model):
    """``{path: layer}`` of the quantized linear layers of ``model``."""
    return {path: cell for path, cell in model.cells_and_names() if isinstance(cell, QuantizedLinear)}


def _quant_state_json(layer, offset):
    state = {"quant_type": layer.quant_type, "blocksize": layer.blocksize, "dtype": layer.weight_dtype,
             "shape": list(layer.shape)}
    if layer.compress_statistics:
        state.update(nested_blocksize=F.NESTED_BLOCKSIZE, nested_dtype="float32", nested_offset=float(offset))
    return np.frombuffer(json.dumps(state).encode("utf-8"), np.uint8).copy()


def quantized_checkpoint(model, state):
    """``state`` (``{model parameter name: array}``) with the quantized layers' entries under bitsandbytes' keys."""
    out = dict(state)
    for path, layer in quantized_layers(model).items():
        p = f"{path}."
        if layer.bits == 8:
            out[p + "weight_format"] = np.array(0, np.uint8)
            continue
        out[p + "weight.absmax"] = out.pop(p + "weight_absmax")
        out[p + "weight.quant_map"] = F.CODES[layer.quant_type].copy()
        offset = None
        if layer.compress_statistics:
            out[p + "weight.nested_absmax"] = out.pop(p + "weight_nested_absmax")
            out[p + "weight.nested_quant_map"] = F.DYNAMIC_MAP.copy()
            offset = out.pop(p + "weight_nested_offset").reshape(-1)[0]
        out[p + QUANT_STATE + layer.quant_type] = _quant_state_json(layer, offset)
    return out


class QuantizedCheckpoint:
    """A checkpoint (``{key: array}``, possibly read lazily) as the model's quantized layers name their
    Parameters, for ``load_state_dict``: iterating gives the keys, :meth:`items` the values. Float weights of
    quantized layers are quantized as they are read, one tensor at a time; bitsandbytes-format entries are renamed
    (their code tables and JSON checked against the layer).
    """

    def __init__(self, model, checkpoint):
        self.checkpoint = checkpoint
        layers = quantized_layers(model)
        by_weight_key = {f"{path}.weight": (path, layer) for path, layer in layers.items()}
        keys = list(checkpoint)
        self.plan = {}  # checkpoint key -> (layer path, layer, suffix) for the keys of quantized layers
        for key in keys:
            for suffix in self._suffixes(key):
                found = model._checkpoint_key_to_model_key(key[: -len(suffix)] + "weight", by_weight_key)
                if found is not None:
                    self.plan[key] = (*by_weight_key[found], suffix)
                    break
        prequantized = {k[: -len(s)] for k, (_, _, s) in self.plan.items()
                        if s.startswith(QUANT_STATE) or s == "SCB"}
        for key, (path, layer, suffix) in self.plan.items():
            self._check_format(key, layer, suffix, key[: -len(suffix)] in prequantized)
        self.float_weights = {k for k, (_, _, s) in self.plan.items() if s == "weight"
                              and k[: -len("weight")] not in prequantized}

    @staticmethod
    def _suffixes(key):
        names = list(_4BIT_RENAMES) + list(_8BIT_RENAMES) + list(_CHECKED_ONLY)
        names += [QUANT_STATE + quant_type for quant_type in F.CODES]
        return sorted({n for n in names if key.endswith("." + n)}, key=len, reverse=True)

    @staticmethod
    def _check_format(key, layer, suffix, prequantized):
        bits = 8 if suffix in ("SCB", "weight_format") else 4 if suffix != "weight" else layer.bits
        if bits != layer.bits:
            raise ValueError(f"The checkpoint's {key!r} belongs to a {bits}-bit quantized layer, but the "
                             f"quantization_config quantizes it to {layer.bits} bits")
        if suffix != "weight" and not prequantized and suffix not in ("weight_format",):
            raise ValueError(f"The checkpoint has {key!r} but no {'SCB' if bits == 8 else QUANT_STATE + '...'} "
                             "entry for that layer (incomplete bitsandbytes checkpoint?)")

    def _model_keys(self, key):
        path, layer, suffix = self.plan[key]
        if key in self.float_weights:
            return [f"{path}.{name}" for name in layer.storage()]
        if suffix.startswith(QUANT_STATE):
            return [f"{path}.weight_nested_offset"] if layer.compress_statistics else []
        renames = _4BIT_RENAMES if layer.bits == 4 else _8BIT_RENAMES
        return [f"{path}.{renames[suffix]}"] if suffix in renames else []

    def __iter__(self):
        for key in self.checkpoint:
            yield from (self._model_keys(key) if key in self.plan else [key])

    def __len__(self):
        return sum(1 for _ in self)

    def items(self):
        """``(key, array)`` pairs, each checkpoint tensor read (and quantized) when its turn comes."""
        for key in self.checkpoint:
            if key not in self.plan:
                yield key, self.checkpoint[key]
            else:
                yield from self._translate(key, self.checkpoint[key])

    def _translate(self, key, value):
        path, layer, suffix = self.plan[key]
        if key in self.float_weights:
            yield from self._quantized(key, path, layer, value)
        elif suffix.startswith(QUANT_STATE):
            offset = self._read_quant_state(key, layer, value)
            if layer.compress_statistics:
                yield f"{path}.weight_nested_offset", np.array([offset], np.float32)
        elif suffix in _CHECKED_ONLY:
            self._check_table(key, layer, suffix, value)
        else:
            yield self._model_keys(key)[0], value

    @staticmethod
    def _quantized(key, path, layer, value):
        expected = layer.shape[::-1] if layer.from_conv1d else layer.shape
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"The checkpoint's {key!r} holds {value.dtype} values without bitsandbytes' quantization "
                             "state (SCB or weight.quant_state.*); a quantized layer loads float weights or a complete "
                             "bitsandbytes checkpoint")
        if tuple(value.shape) != tuple(expected):
            raise ValueError(f"Shape mismatch for {key!r}: checkpoint has {tuple(value.shape)}, model expects "
                             f"{tuple(expected)}")
        if layer.bits == 4:
            layer.weight_dtype = value.dtype.name if value.dtype in (np.float16, np.float32) else "float32"
        layer.quantize_weight(value.T if layer.from_conv1d else value)
        return [(f"{path}.{name}", param.asnumpy()) for name, param in layer.storage().items()]

    @staticmethod
    def _read_quant_state(key, layer, value):
        state = json.loads(bytes(np.asarray(value, np.uint8).reshape(-1)).decode("utf-8"))
        problems = []
        if state.get("quant_type") != layer.quant_type:
            problems.append(f"quant_type {state.get('quant_type')!r}, the model {layer.quant_type!r} "
                            "(bnb_4bit_quant_type)")
        if state.get("blocksize") != layer.blocksize:
            problems.append(f"blocksize {state.get('blocksize')}, mindpeft {layer.blocksize}")
        if list(state.get("shape") or ()) != list(layer.shape):
            problems.append(f"shape {state.get('shape')}, the model {list(layer.shape)}")
        if ("nested_offset" in state) != layer.compress_statistics:
            problems.append(f"double quantization {'nested_offset' in state}, the model {layer.compress_statistics} "
                            "(bnb_4bit_use_double_quant)")
        if problems:
            raise ValueError(f"The checkpoint's {key!r} does not match the quantized layer: it has "
                             + "; ".join(problems))
        layer.weight_dtype = state.get("dtype", "float32")
        return state.get("nested_offset")

    @staticmethod
    def _check_table(key, layer, suffix, value):
        value = np.asarray(value, np.float32).reshape(-1)
        if suffix == "weight_format":
            if value.tolist() != [0]:
                raise ValueError(f"The checkpoint's {key!r} is {value.tolist()}, not bitsandbytes' row-major format 0; "
                                 "mindpeft cannot load it")
            return
        tables = F.CODES if suffix == "weight.quant_map" else {"dynamic": F.DYNAMIC_MAP}
        found = next((name for name, table in tables.items() if np.array_equal(value, table)), None)
        if found is None:
            raise ValueError(f"The checkpoint's {key!r} is not one of bitsandbytes' standard code tables; mindpeft "
                             "cannot load it")
        if suffix == "weight.quant_map" and found != layer.quant_type:
            raise ValueError(f"The checkpoint's {key!r} holds quant_type {found!r} codes, the model "
                             f"{layer.quant_type!r} (bnb_4bit_quant_type)")


def quantized_model_state(model, checkpoint):
    """``checkpoint`` as seen by ``model.load_state_dict``: unchanged without quantized layers, else a
    :class:`QuantizedCheckpoint`."""
    return QuantizedCheckpoint(model, checkpoint) if quantized_layers(model) else checkpoint
