"""LoftQ (Li et al., 2023): LoRA factors that absorb the quantization error of the base weight, HF peft's
``LoftQConfig``, ``loftq_init`` and ``replace_lora_weights_loftq`` in numpy.

``loftq_init`` alternates ``Q = dequant(quant(W - B A))`` and ``B A = rank-r SVD of (W - Q)``; the adapter is
``lora_A = sqrt(S_r) V_r^T``, ``lora_B = U_r sqrt(S_r)`` without dividing by the LoRA scaling, as HF peft does, so
``Q + B A`` approximates ``W`` when ``lora_alpha == r``.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import describe, is_integer
from ..models.modeling_utils import SafetensorsCheckpoint, checkpoint_file, write_parameter
from ..utils.hub import resolve_folder
from . import functional as F
from .lora import QuantizedLoraLinear


@dataclass
class LoftQConfig:
    """``loftq_bits``: 4 (NF4) or 8 (int8) bits; ``loftq_iter``: alternating iterations."""

    loftq_bits: int = field(default=4, metadata={"help": "Quantization bits for LoftQ"})
    loftq_iter: int = field(default=1, metadata={"help": "Alternating iterations for LoftQ"})


def _low_rank(matrix, rank):
    """``(L, R)`` with ``L R`` the best rank-``rank`` approximation of ``matrix``, the singular values split evenly."""
    u, s, vh = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return (u[:, :rank] * root).astype(np.float32), (root[:, None] * vh[:rank]).astype(np.float32)


def _quantized_dequantized(weight, num_bits):
    """``weight`` after bitsandbytes' NF4 (blocks of 64, no double quantization) or int8 round trip."""
    if num_bits == 4:
        state = F.quantize_4bit(weight, "nf4")
        return F.dequantize_4bit(state["weight"], state["absmax"], weight.shape)
    return F.dequantize_int8(*F.quantize_int8(weight))


def loftq_init(weight, num_bits, reduced_rank, num_iter=1):
    """``(dequantized quantized weight, lora_A, lora_B)`` for the float ``weight`` (out, in), HF peft's
    ``loftq_init``."""
    if num_bits not in (4, 8):
        raise ValueError("Only nf4 and int8 quantization is supported")
    if not is_integer(num_iter) or num_iter <= 0:
        raise ValueError("Number of iterations must be greater than 0")
    weight = np.asarray(weight, np.float32)
    residual = weight
    for i in range(num_iter):
        dequantized = _quantized_dequantized(residual, num_bits)
        lora_b, lora_a = _low_rank(weight - dequantized, reduced_rank)
        if i + 1 < num_iter:
            residual = weight - lora_b @ lora_a
    return dequantized, lora_a, lora_b


def loftq_init_layer(layer, adapter_name, loftq_config):
    """``init_lora_weights="loftq"`` for the LoRA linear ``layer`` on a float base (HF peft's
    ``LoraLayer.loftq_init``): its factors from :func:`loftq_init` and the base weight replaced by the dequantized
    quantized one, ready to be quantized for training. ``loftq_config``: a :class:`LoftQConfig` or its dict."""
    values = loftq_config if isinstance(loftq_config, dict) else vars(loftq_config)
    base_weight = layer.get_base_layer().weight
    fan_in_fan_out = getattr(layer, "fan_in_fan_out", False)
    weight = base_weight.asnumpy().T if fan_in_fan_out else base_weight.asnumpy()
    dequantized, lora_a, lora_b = loftq_init(weight, values["loftq_bits"], layer.r[adapter_name],
                                             values["loftq_iter"])
    write_parameter(layer.lora_A[adapter_name].weight, lora_a)
    write_parameter(layer.lora_B[adapter_name].weight, lora_b)
    write_parameter(base_weight, dequantized.T if fan_in_fan_out else dequantized)


def _checkpoint_reader(peft_model, model_path):
    if model_path is None:
        model_path = getattr(getattr(peft_model.get_base_model(), "config", None), "_name_or_path", None)
        if not model_path:
            raise ValueError("The provided model does not appear to be a transformers model or is a local model. In "
                             "this case, you must pass the model_path argument that points to the safetensors file.")
    if os.path.isfile(model_path):
        return SafetensorsCheckpoint(model_path)
    return SafetensorsCheckpoint(checkpoint_file(resolve_folder(model_path)))  # a folder, or a hub id in the cache


def _float_weight(reader, base_model, path, layer):
    """The float checkpoint weight (out, in) of the quantized layer at ``path``."""
    prefix = getattr(base_model, "base_model_prefix", "")
    candidates = [f"{path}.weight"]
    if prefix:  # the checkpoint may name the backbone with or without the prefix
        stripped = path[len(prefix) + 1:] if path.startswith(prefix + ".") else f"{prefix}.{path}"
        candidates.append(f"{stripped}.weight")
    key = next((k for k in candidates if k in reader), None)
    if key is None:
        raise KeyError(f"No weight {candidates[0]!r} in the checkpoint")
    value = reader[key]
    base = layer.get_base_layer()
    if not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"The checkpoint's {key!r} is {value.dtype}, not a float weight: replace_lora_weights_loftq "
                         "needs the original (not quantized) model's safetensors file (model_path)")
    return value.T if base.from_conv1d else value


def replace_lora_weights_loftq(peft_model, model_path=None, adapter_name="default", callback=None):
    """Replace the LoRA weights of the adapter on 4-bit quantized layers with LoftQ's (one alternation), reading the
    original float weights from the model's safetensors file (``model_path``, by default where the base model was
    loaded from: its folder, or its hub id in the local Hugging Face cache), HF peft's function.

    ``callback(model, module_name)`` is called after each layer; when it returns ``False`` that layer's LoRA weights
    go back to what they were.
    """
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, got {describe(callback)}")
    base_model = peft_model.get_base_model()
    layers = [(path, cell) for path, cell in base_model.cells_and_names()
              if isinstance(cell, QuantizedLoraLinear) and cell.get_base_layer().bits == 4]
    if not layers:
        raise ValueError("No bnb LoRA module found on the model")
    reader = _checkpoint_reader(peft_model, model_path)
    for path, layer in layers:
        if adapter_name not in layer.lora_A:
            continue
        weight = _float_weight(reader, base_model, path, layer)
        lora_b, lora_a = _low_rank(weight - layer.get_base_layer().dequantize_numpy(), layer.r[adapter_name])
        params = (layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight)
        before = [p.asnumpy().copy() for p in params]  # asnumpy shares the Parameter's memory
        for param, value in zip(params, (lora_a, lora_b)):
            write_parameter(param, value)
        if callback is not None and not callback(peft_model, path):
            for param, value in zip(params, before):
                write_parameter(param, value)
