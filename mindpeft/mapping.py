"""``get_peft_model`` and the registries of PEFT methods (filled by :mod:`mindpeft.tuners`) and tasks."""
import warnings

from .models.modeling_utils import sync_parameter_names
from .peft_model import TASK_TYPE_TO_PEFT_MODEL, PeftModel
from .utils.registry import (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING,
                             peft_type_key)
from .utils.save_and_load import unchanged_on_error

MODEL_TYPE_TO_PEFT_MODEL_MAPPING = TASK_TYPE_TO_PEFT_MODEL


def get_peft_model(model, peft_config, adapter_name="default", mixed=False, autocast_adapter_dtype=True):
    """Wrap ``model`` (any ``mindspore.nn.Cell``) with the adapter ``peft_config`` describes.

    Returns the PeftModel subclass for ``peft_config.task_type`` (plain :class:`PeftModel` when it is unset), or
    with ``mixed=True`` a :class:`~mindpeft.PeftMixedModel` (adapters of LoRA, LoHa, LoKr and OFT together).
    A model that already holds adapters gets HF peft's warning; one that already holds an adapter named
    ``adapter_name`` is refused, since wrapping it again would re-initialise that adapter's trained weights. A config
    refused part-way (a module that cannot be adapted) leaves ``model`` as it was.
    ``autocast_adapter_dtype`` (HF peft's): adapter weights stay float32 on a float16 or bfloat16 base (the adapter
    layers cast their input and output); ``False`` gives them the base layer's dtype.
    """
    from .tuners.tuners_utils import BaseTunerLayer

    held = {name for _, cell in model.cells_and_names() if isinstance(cell, BaseTunerLayer)
            for name in cell.adapter_names()}
    if adapter_name in held:
        raise ValueError(f"This model already holds an adapter named {adapter_name!r} (get_peft_model was called on "
                         f"it before); wrapping it again would re-initialise that adapter. Call .unload() on the "
                         f"PeftModel first, load the base model again, or pass another adapter_name.")
    if held:
        warnings.warn("You are trying to modify a model with PEFT for a second time. If you want to reload the model "
                      "with a different config, make sure to call `.unload()` before.")
    with unchanged_on_error(model):  # a refused config leaves no half-injected adapter behind
        if mixed:
            from .mixed_model import PeftMixedModel
            return PeftMixedModel(model, peft_config, adapter_name)
        task = peft_config.task_type.value if peft_config.task_type is not None else None
        return MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task, PeftModel)(model, peft_config, adapter_name,
                                                                      autocast_adapter_dtype=autocast_adapter_dtype)


def inject_adapter_in_model(peft_config, model, adapter_name="default"):
    """Put the adapter layers ``peft_config`` describes into ``model`` in place and return ``model`` (no PeftModel
    wrapper), as HF peft's function of that name; ``model.peft_config`` maps adapter names to configs, so
    :func:`mindpeft.get_peft_model_state_dict` / :func:`mindpeft.set_peft_model_state_dict` work on it.

    Prompt learning, adaption prompt and tuners that keep state on themselves (``uses_shared_state = True``, as
    HF peft's VeRA) are refused.
    """
    if peft_config.is_prompt_learning or peft_config.is_adaption_prompt:
        raise ValueError("`create_and_replace` does not support prompt learning and adaption prompt yet.")
    key = peft_type_key(peft_config.peft_type)
    if key not in PEFT_TYPE_TO_TUNER_MAPPING:
        raise ValueError(f"`inject_adapter_in_model` does not support {key} yet. Please use `get_peft_model`.")
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[key]
    if getattr(tuner_cls, "uses_shared_state", False):
        raise ValueError(f"`inject_adapter_in_model` does not support {key} because it uses shared state stored on "
                         "the tuner. Please use `get_peft_model` instead.")
    sync_parameter_names(model)
    name, param = next(iter(model.parameters_and_names()), ("", None))
    prefix = param.name[: len(param.name) - len(name)] if param is not None else ""
    tuner = tuner_cls(model, {adapter_name: peft_config}, adapter_name)
    for name, param in model.parameters_and_names():  # the tuner named them "model.<name>"
        param.name = prefix + name
    model.peft_config = tuner.peft_config
    return model
