"""Hot-swapping LoRA adapters in place (HF peft's ``peft.utils.hotswap``), so that functions already compiled with
``mindspore.jit`` (a forward step, ``generate``'s decode step) serve the new adapter without compiling again.

A compiled graph keeps its Parameters and the Python values it read (LoRA's scalings are Python floats), so a swap
must keep every Parameter's shape and every such value: the new weights are written into the old Parameters in
place, adapters of a lower rank are zero-padded to the rank the Parameters have
(:func:`prepare_model_for_compiled_hotswap` makes room for the largest rank before compiling), and a new
``lora_alpha`` / rank is folded into ``lora_B``: ``B * (new scaling / compiled scaling)`` gives exactly the new
adapter's output, since LoRA's scaling only ever multiplies ``B``'s output (DoRA's weight norm included).
"""
import math

import numpy as np
from mindspore import Parameter, Tensor, mint, nn

from ..config import PeftConfig
from ..models.layers import Linear as LinearLayer
from ..models.modeling_utils import sync_parameter_names, to_numpy, write_parameter
from .hub import resolve_folder
from .peft_types import PeftType
from .save_and_load import _adapter_parameter_keys, _tuner, load_peft_weights

CONFIG_KEYS_TO_CHECK = {PeftType.LORA: ["use_rslora", "lora_dropout", "alpha_pattern", "use_dora"]}
_LINEAR_FACTORS = (LinearLayer, nn.Dense, mint.nn.Linear)


def _lora_layers(model):
    """``(name, layer)`` of the LoRA layers of ``model`` (AdaLoRA's excluded: it is not hot-swappable)."""
    from ..tuners.adalora.layer import AdaLoraLayer
    from ..tuners.lora.layer import LoraLayer

    return [(name, cell) for name, cell in model.cells_and_names()
            if isinstance(cell, LoraLayer) and not isinstance(cell, AdaLoraLayer)]


def _padded_array(value, shape):
    """``value`` in the top-left corner of zeros shaped ``shape``."""
    padded = np.zeros(shape, value.dtype)
    padded[tuple(slice(0, n) for n in value.shape)] = value
    return padded


def _padded_parameter(param, rank, axis):
    value = to_numpy(param)
    shape = list(value.shape)
    shape[axis] = rank
    return Parameter(Tensor(_padded_array(value, shape), dtype=param.dtype), name=param.name,
                     requires_grad=param.requires_grad)


def _check_rank(current, rank):
    if current > rank:
        raise ValueError(f"Trying to pad the adapter to the target rank {rank}, but the original rank is larger "
                         f"({current}). This is not possible.")


def _padded_factor(layer, factor, rank, axis):
    """A linear LoRA factor with its rank dimension (``axis`` of the weight) zero-padded to ``rank``."""
    if not isinstance(factor, _LINEAR_FACTORS):
        raise NotImplementedError(
            f"prepare_model_for_compiled_hotswap pads the ranks of LoRA on linear, Conv1D, embedding and "
            f"MultiheadAttention layers; {type(layer).__name__} holds {type(factor).__name__} factors. Give every "
            f"adapter the same rank, or leave out target_rank.")
    _check_rank(factor.weight.shape[axis], rank)
    out_features, in_features = factor.weight.shape
    bias = getattr(factor, "bias", None)
    padded = LinearLayer(rank if axis == 1 else in_features, rank if axis == 0 else out_features, bias=False)
    padded.weight = _padded_parameter(factor.weight, rank, axis)
    if bias is not None:
        padded.bias = _padded_parameter(bias, rank, 0) if axis == 0 else bias
    return padded


def _pad_layer(layer, rank):
    for name in layer.lora_A.keys():
        layer.lora_A[name] = _padded_factor(layer, layer.lora_A[name], rank, 0)
        layer.lora_B[name] = _padded_factor(layer, layer.lora_B[name], rank, 1)
    for name in layer.lora_embedding_A.keys():
        _check_rank(layer.lora_embedding_A[name].shape[0], rank)
        layer.lora_embedding_A[name] = _padded_parameter(layer.lora_embedding_A[name], rank, 0)
        layer.lora_embedding_B[name] = _padded_parameter(layer.lora_embedding_B[name], rank, 1)


def prepare_model_for_compiled_hotswap(model, *, target_rank=None, config=None):
    """Get ``model`` (a PeftModel, or a Cell with injected LoRA adapters) ready to be compiled and then hot-swapped.

    Call it after loading the first adapter and *before* compiling: with ``target_rank`` (the largest rank of the
    adapters to come) every LoRA factor is zero-padded to that rank, which changes the Parameters compiled graphs
    hold. Different ``lora_alpha`` values need nothing here (:func:`hotswap_adapter` folds them into ``lora_B``).
    ``config`` (a ``LoraConfig`` or a dict of them) gets ``r`` and its ``rank_pattern`` set to ``target_rank``, as
    HF peft does.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("No adapter layers found on the model, make sure call `prepare_model_for_compiled_hotswap` "
                         "after loading the first adapter and before loading the second adapter.")
    if target_rank is None:
        return
    for _, layer in layers:
        _pad_layer(layer, target_rank)
    sync_parameter_names(model)
    if _tuner(model) is not None:
        _tuner(model)._bump()
    for lora_config in (config.values() if isinstance(config, dict) else [config] if config else []):
        lora_config.r = target_rank
        for key in lora_config.rank_pattern or {}:
            lora_config.rank_pattern[key] = target_rank


def check_hotswap_configs_compatible(config0, config1):
    """Refuse to swap adapters whose configs differ where a swap cannot follow (HF peft's rule)."""
    if config0.peft_type != config1.peft_type:
        raise ValueError(f"Incompatible PEFT types found: {config0.peft_type.value} and {config1.peft_type.value}")
    if config0.peft_type not in CONFIG_KEYS_TO_CHECK:
        raise ValueError(f"Hotswapping only supports {', '.join(k.value for k in CONFIG_KEYS_TO_CHECK)} but "
                         f"{config0.peft_type.value} was passed.")
    values0, values1, missing = config0.to_dict(), config1.to_dict(), object()
    for key in CONFIG_KEYS_TO_CHECK[config0.peft_type]:
        val0, val1 = values0.get(key, missing), values1.get(key, missing)
        if val0 != val1:
            raise ValueError(f"Configs are incompatible: for {key}, {val0} != {val1}")


def _scaling(config, layer_name):
    """The scaling ``config`` gives the LoRA layer at ``layer_name`` (its rank/alpha patterns applied)."""
    from ..tuners.tuners_utils import get_pattern_key

    rank_key = get_pattern_key((config.rank_pattern or {}).keys(), layer_name)
    alpha_key = get_pattern_key((config.alpha_pattern or {}).keys(), layer_name)
    rank = config.rank_pattern[rank_key] if rank_key else config.r
    alpha = config.alpha_pattern[alpha_key] if alpha_key else config.lora_alpha
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank


def _fitted(value, shape, key):
    """``value`` zero-padded along one (rank) axis to ``shape``; a clear error when that is not possible."""
    if tuple(value.shape) == tuple(shape):
        return value
    differing = [i for i, (n, o) in enumerate(zip(value.shape, shape)) if n != o]
    if len(value.shape) == len(shape) and len(differing) == 1 and value.shape[differing[0]] < shape[differing[0]]:
        return _padded_array(value, shape)
    raise ValueError(f"Incompatible shapes found for LoRA weights {key}: {tuple(shape)} vs {tuple(value.shape)}. "
                     "Please ensure that all ranks are padded to the largest rank among all LoRA adapters by using "
                     "mindpeft.utils.hotswap.prepare_model_for_compiled_hotswap before compiling.")


def hotswap_adapter_from_state_dict(model, state_dict, adapter_name, config):
    """Write the adapter checkpoint ``state_dict`` (HF peft's keys, as in ``adapter_model.safetensors``) with
    config ``config`` into the Parameters of ``adapter_name``, in place: LoRA weights the checkpoint lacks become
    zero, lower ranks are zero-padded and the new scaling is folded into ``lora_B``. Everything is checked before
    anything is written; the adapter must not be merged."""
    layers = dict(_lora_layers(model))
    if any(adapter_name in layer.merged_adapters for layer in layers.values()):
        raise ValueError(f"Cannot hot-swap adapter '{adapter_name}' because it is currently merged into the base "
                         "weights. Please unmerge the adapter first by calling `peft_model.unmerge_adapter()`; "
                         "unmerging after a swap of merged weights would otherwise corrupt them.")
    keys = _adapter_parameter_keys(model, adapter_name)  # {model key: checkpoint key}
    unexpected = sorted(set(state_dict) - set(keys.values()))
    if unexpected:
        raise RuntimeError(f"Hot swapping the adapter did not succeed, unexpected keys found: {', '.join(unexpected)}.")
    params = dict(model.parameters_and_names())
    plan = []
    for model_key, checkpoint_key in keys.items():
        param = params[model_key]
        layer_name = max((n for n in layers if model_key.startswith(n + ".")), key=len, default=None)
        if checkpoint_key not in state_dict:
            if layer_name is not None:  # a LoRA weight the new adapter does not have: no update there
                plan.append((param, np.zeros(param.shape, np.float32)))
            continue
        value = _fitted(np.asarray(state_dict[checkpoint_key]), param.shape, checkpoint_key)
        if layer_name is not None and (".lora_B." in model_key or ".lora_embedding_B." in model_key):
            compiled = float(layers[layer_name].scaling[adapter_name])
            new = _scaling(config, layer_name)
            if compiled == 0 and new != 0:
                raise ValueError(f"Cannot hot-swap into {layer_name}: its compiled scaling is 0 (lora_alpha=0)")
            value = value * (new / compiled if compiled else 0.0)
        plan.append((param, value))
    for param, value in plan:
        write_parameter(param, value)


def hotswap_adapter(model, model_name_or_path, adapter_name, **kwargs):
    """Replace the weights of ``model``'s adapter ``adapter_name`` with the LoRA adapter in ``model_name_or_path``
    (a folder or a cached hub id), keeping its name, its Parameters and every compiled graph that uses them.

    The configs must agree on ``use_rslora``, ``lora_dropout``, ``alpha_pattern`` and ``use_dora`` and the new
    adapter must target a subset of the old one's modules, with ranks no larger than the model's (see
    :func:`prepare_model_for_compiled_hotswap`); ``lora_alpha`` and ranks may differ. ``model.peft_config`` keeps
    the old config: with the folded ``lora_B`` its scaling gives the new adapter's output.
    """
    folder = resolve_folder(model_name_or_path, kwargs.pop("revision", None), kwargs.pop("subfolder", None))
    config = PeftConfig.from_pretrained(folder, **kwargs)
    check_hotswap_configs_compatible(model.peft_config[adapter_name], config)
    hotswap_adapter_from_state_dict(model, load_peft_weights(folder), adapter_name, config)
