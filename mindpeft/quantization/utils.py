"""Whole-model helpers for quantized models: their weight bytes, and dequantizing them back to float."""
import numpy as np

from ..models.layers import Conv1D, Linear
from ..models.modeling_utils import sync_parameter_names, write_parameter
from ..tuners.tuners_utils import BaseTuner, replace_everywhere
from ..utils.graph_state import bump_graph_version
from .serialization import quantized_layers


def _nbytes(param):
    return int(np.prod(param.shape)) * param.itemsize


def quantized_model_bytes(model):
    """Bytes of ``model``'s Parameters: ``{"quantized": the quantized layers' storage (codes and scales),
    "quantized_fp32": what those weights take in float32, "other": every other Parameter (biases, norms,
    embeddings, float heads, adapters), "total": quantized + other}``."""
    quantized = quantized_fp32 = 0
    storage_ids = set()
    for layer in quantized_layers(model).values():
        for param in layer.storage().values():
            quantized += _nbytes(param)
            storage_ids.add(id(param))
        quantized_fp32 += 4 * layer.in_features * layer.out_features
    other = sum(_nbytes(p) for p in model.get_parameters() if id(p) not in storage_ids)
    return {"quantized": quantized, "quantized_fp32": quantized_fp32, "other": other, "total": quantized + other}


def _float_layer(layer):
    weight = layer.dequantize_numpy()
    if layer.from_conv1d:
        float_layer = Conv1D(layer.out_features, layer.in_features)
        write_parameter(float_layer.weight, weight.T)
    else:
        float_layer = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        write_parameter(float_layer.weight, weight)
    if layer.bias is not None:
        write_parameter(float_layer.bias, layer.bias.asnumpy())
    return float_layer


def dequantize_model(model):
    """Replace every quantized linear layer of ``model`` (a model or a ``PeftModel``) by a float32 ``Linear`` (or
    GPT-2 ``Conv1D``) holding its dequantized weight, transformers' ``model.dequantize()``: adapter layers on them
    become the float adapter layers, so ``merge_and_unload`` afterwards merges in float. Returns ``model``."""
    layers = quantized_layers(model)
    replace_everywhere(model, {id(layer): _float_layer(layer) for layer in layers.values()})
    for _, cell in model.cells_and_names():
        float_class = getattr(type(cell), "float_class", None)
        if float_class is not None:
            cell.__class__ = float_class
            if isinstance(cell.get_base_layer(), Conv1D):
                cell.fan_in_fan_out = True
                cell.dora_axis = 1
    for _, cell in model.cells_and_names():
        config = getattr(cell, "config", None)
        if getattr(config, "quantization_config", None) is not None:
            del config.quantization_config
        for name in ("is_loaded_in_8bit", "is_loaded_in_4bit"):
            if getattr(cell, name, False):
                setattr(cell, name, False)
        if isinstance(cell, BaseTuner):
            cell._bump()  # compiled steps rebuild
    sync_parameter_names(model)
    bump_graph_version()
    return model
