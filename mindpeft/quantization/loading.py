"""``from_pretrained(path, quantization_config=...)``: a model whose linear layers are quantized while its checkpoint
is read, without the float model ever existing as a whole.

The model is built with placeholder linear layers (no float weight is allocated; accelerate's
``init_empty_weights`` works the same way), the placeholders become quantized layers (or real float layers for
the modules kept in float), and the checkpoint is read one tensor at a time, each float weight quantized as soon
as it is read. Peak memory is the quantized model plus the largest single tensor.
"""
import inspect
import re
from contextlib import contextmanager

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn

from ..models.layers import Conv1D, Linear
from ..models.modeling_utils import sync_parameter_names
from ..tuners.tuners_utils import replace_everywhere
from .config import QuantizationConfig
from .layers import Linear4bit, Linear8bitLt
from .serialization import quantized_layers

# transformers keeps these modules in float32 (``_keep_in_fp32_modules``), quantization included.
KEEP_IN_FLOAT = {"t5": ("wo",), "mt5": ("wo",)}
OUTPUT_HEADS = ("lm_head", "proj_out")  # output embeddings, never quantized by default


@contextmanager
def _placeholder_linear_layers():
    """``Linear`` and ``Conv1D`` layers built inside hold one-element placeholder Parameters (kept in the order a
    real layer creates them) and their constructor arguments in ``placeholder_arguments``."""
    originals = {cls: cls.__init__ for cls in (Linear, Conv1D)}

    def placeholder_init(original):
        signature = inspect.signature(original)

        def init(self, *args, **kwargs):
            nn.Cell.__init__(self)
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            self.placeholder_arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
            self.weight = Parameter(Tensor(np.zeros(1, np.float32)), name="weight")
            if self.placeholder_arguments.get("bias", True):
                self.bias = Parameter(Tensor(np.zeros(1, np.float32)), name="bias")
        return init

    try:
        for cls, original in originals.items():
            cls.__init__ = placeholder_init(original)
        yield
    finally:
        for cls, original in originals.items():
            cls.__init__ = original


def _matches(name, patterns):
    """transformers' rule for ``llm_int8_skip_modules``: a pattern matches from the start up to a module boundary
    (as a regex), or as a suffix."""
    return any(re.match(rf"(?:{p})(?:(?<=\.)|(?=\.|$))", name) or name.endswith(p) for p in patterns)


def _modules_kept_in_float(model, qconfig):
    """Module name patterns not to quantize: ``llm_int8_skip_modules`` if given, else transformers' defaults (the
    output embeddings and the module of the model's last weight), plus the family's float32 modules."""
    keep = list(getattr(model, "_keep_in_fp32_modules", ()))
    keep += KEEP_IN_FLOAT.get(getattr(model.config, "model_type", None), ())
    if qconfig.llm_int8_skip_modules is not None:
        return keep + list(qconfig.llm_int8_skip_modules)
    names = [name for name, _ in model.parameters_and_names()]
    if names and names[-1].endswith(".weight"):
        keep.append(names[-1][: -len(".weight")])
    return keep + [name for name, _ in model.cells_and_names() if name in OUTPUT_HEADS]


def _quantized_layer(placeholder, qconfig):
    arguments = placeholder.placeholder_arguments
    if isinstance(placeholder, Conv1D):
        shape = dict(in_features=arguments["in_features"], out_features=arguments["out_features"], bias=True,
                     from_conv1d=True)
    else:
        shape = dict(in_features=arguments["in_features"], out_features=arguments["out_features"],
                     bias=bool(arguments["bias"]))
    if qconfig.bits == 8:
        return Linear8bitLt(**shape)
    return Linear4bit(**shape, quant_type=qconfig.bnb_4bit_quant_type,
                      compress_statistics=qconfig.bnb_4bit_use_double_quant, compute_dtype=qconfig.compute_dtype)


def _replace_placeholders(model, qconfig):
    """Swap every placeholder for a quantized layer, or a real float layer where it is kept in float; returns
    ``{path: (quantized layer, placeholder)}``."""
    keep = _modules_kept_in_float(model, qconfig)
    replacements, quantized = {}, {}
    for path, cell in model.cells_and_names():
        if not hasattr(cell, "placeholder_arguments") or id(cell) in replacements:
            continue
        if _matches(path, keep):
            replacements[id(cell)] = type(cell)(**cell.placeholder_arguments)
        else:
            replacements[id(cell)] = _quantized_layer(cell, qconfig)
            quantized[path] = (replacements[id(cell)], cell)
    replace_everywhere(model, replacements)
    sync_parameter_names(model)
    return quantized


def _initialise_missing(quantized, missing):
    """Quantized layers the checkpoint lacked (new task heads) get the float layer's random initialisation."""
    missing = set(missing)
    for path, (layer, placeholder) in quantized.items():
        if f"{path}.weight" in missing:
            float_layer = type(placeholder)(**placeholder.placeholder_arguments)
            weight = float_layer.weight.asnumpy()
            layer.quantize_weight(weight.T if layer.from_conv1d else weight)


def _check_compute_dtype(qconfig):
    if qconfig.bits == 4 and qconfig.compute_dtype == ms.bfloat16 and ms.get_context("device_target") == "CPU":
        raise ValueError("bnb_4bit_compute_dtype='bfloat16' needs bfloat16 MatMul kernels, which MindSpore's CPU "
                         "backend lacks; use 'float32' or 'float16' on CPU")


def _cast_float_parameters(model, dtype):
    """``ms_dtype`` for the Parameters outside the quantized storage (norms, embeddings, biases, float heads); in
    float16 the model's ``_keep_in_fp32_modules`` stay float32."""
    storage = {id(p) for layer in quantized_layers(model).values() for p in layer.storage().values()}
    keep = getattr(model, "_keep_in_fp32_modules", ()) if dtype == ms.float16 else ()
    for name, param in model.parameters_and_names():
        if id(param) in storage or any(part in keep for part in name.split(".")):
            continue
        if param.dtype in (ms.float16, ms.bfloat16, ms.float32) and param.dtype != dtype:
            param.set_dtype(dtype)


def load_quantized_model(cls, config, checkpoint, dtype=None, strict=None, source=None):
    """Build ``cls(config)`` with the linear layers quantized as ``config.quantization_config`` says (a
    :class:`QuantizationConfig`, transformers' ``BitsAndBytesConfig`` or the dict of a saved quantized model) and
    load ``checkpoint`` (a lazy ``{key: array}`` mapping of a float checkpoint, quantized while read, or of a
    bitsandbytes-quantized one). ``dtype``: the dtype of the Parameters that are not quantized."""
    qconfig = QuantizationConfig.from_value(config.quantization_config)
    if qconfig.bits is None:
        raise ValueError("quantization_config quantizes nothing: set load_in_8bit=True or load_in_4bit=True")
    _check_compute_dtype(qconfig)
    config.quantization_config = qconfig.to_dict()
    with _placeholder_linear_layers():
        model = cls(config)
    quantized = _replace_placeholders(model, qconfig)
    if dtype is not None:
        _cast_float_parameters(model, dtype)
    missing, _ = model.load_state_dict(checkpoint, strict=strict, source=source)
    _initialise_missing(quantized, missing)
    model.is_loaded_in_8bit = qconfig.bits == 8
    model.is_loaded_in_4bit = qconfig.bits == 4
    model.quantization_method = qconfig.quant_method
    model.set_train(False)
    return model
