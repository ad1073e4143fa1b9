"""``get_peft_model`` and the registries of PEFT methods (filled by :mod:`mindpeft.tuners`) and tasks."""
import warnings

from .peft_model import TASK_TYPE_TO_PEFT_MODEL, PeftModel
from .utils.registry import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

MODEL_TYPE_TO_PEFT_MODEL_MAPPING = TASK_TYPE_TO_PEFT_MODEL


def get_peft_model(model, peft_config, adapter_name="default"):
    """Wrap ``model`` (any ``mindspore.nn.Cell``) with the adapter ``peft_config`` describes.

    Returns the PeftModel subclass for ``peft_config.task_type`` (plain :class:`PeftModel` when it is unset).
    A model that already holds adapters gets HF peft's warning; one that already holds an adapter named
    ``adapter_name`` is refused, since wrapping it again would re-initialise that adapter's trained weights.
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
    task = peft_config.task_type.value if peft_config.task_type is not None else None
    return MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task, PeftModel)(model, peft_config, adapter_name)
