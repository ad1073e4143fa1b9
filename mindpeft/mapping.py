"""Registries of PEFT methods and tasks, and ``get_peft_model``."""
from .peft_model import TASK_TYPE_TO_PEFT_MODEL, PeftModel
from .tuners.lora import LoraConfig, LoraModel

PEFT_TYPE_TO_CONFIG_MAPPING = {"LORA": LoraConfig}
PEFT_TYPE_TO_TUNER_MAPPING = {"LORA": LoraModel}
MODEL_TYPE_TO_PEFT_MODEL_MAPPING = TASK_TYPE_TO_PEFT_MODEL


def get_peft_model(model, peft_config, adapter_name="default"):
    """Wrap ``model`` (any ``mindspore.nn.Cell``) with the adapter ``peft_config`` describes.

    Returns the PeftModel subclass for ``peft_config.task_type`` (plain :class:`PeftModel` when it is unset).
    """
    task = peft_config.task_type.value if peft_config.task_type is not None else None
    return MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task, PeftModel)(model, peft_config, adapter_name)
