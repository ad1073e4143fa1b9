"""``prepare_model_for_kbit_training``: HF peft's preparation of a quantized model for adapter training."""
import inspect
import warnings

import mindspore as ms

from ..utils.graph_state import bump_graph_version


def prepare_model_for_kbit_training(model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=None):
    """Freeze every parameter and put the float16/bfloat16 ones (norms, embeddings, float heads; never the
    quantized storage) in float32. For a model loaded in 8 or 4 bits with ``use_gradient_checkpointing``, also
    make the input embeddings' output require gradients (``enable_input_require_grads``, unless
    ``use_reentrant=False`` is asked for) and turn on gradient checkpointing (``gradient_checkpointing_enable``), as
    HF peft does; a model without those methods is left as it is, with a warning for the checkpointing.
    Returns ``model``.
    """
    kwargs = dict(gradient_checkpointing_kwargs or {})
    for param in model.get_parameters():
        param.requires_grad = False
        if param.dtype in (ms.float16, ms.bfloat16):
            param.set_dtype(ms.float32)
    loaded_in_kbit = getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
    if loaded_in_kbit and use_gradient_checkpointing:
        if kwargs.get("use_reentrant", True) and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            warnings.warn(f"{type(model).__name__} has no gradient_checkpointing_enable; training without gradient "
                          "checkpointing")
        elif "gradient_checkpointing_kwargs" in inspect.signature(enable).parameters:
            enable(gradient_checkpointing_kwargs=kwargs)
        else:
            if kwargs:
                warnings.warn("gradient_checkpointing_kwargs is not supported by this model's "
                              "gradient_checkpointing_enable; the passed kwargs will be ignored.", FutureWarning)
            enable()
    bump_graph_version()
    return model
