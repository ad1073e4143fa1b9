"""Registries of PEFT methods and tasks, and ``get_peft_model``."""
import warnings

from .peft_model import TASK_TYPE_TO_PEFT_MODEL, PeftModel
from .tuners.adalora import AdaLoraConfig, AdaLoraModel
from .tuners.adaption_prompt import AdaptionPromptConfig, AdaptionPromptModel
from .tuners.ia3 import IA3Config, IA3Model
from .tuners.lora import LoraConfig, LoraModel
from .tuners.p_tuning import PromptEncoder, PromptEncoderConfig
from .tuners.prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .tuners.prompt_tuning import PromptEmbedding, PromptTuningConfig

PEFT_TYPE_TO_CONFIG_MAPPING = {"LORA": LoraConfig, "IA3": IA3Config, "ADALORA": AdaLoraConfig,
                               "ADAPTION_PROMPT": AdaptionPromptConfig, "PROMPT_TUNING": PromptTuningConfig,
                               "PREFIX_TUNING": PrefixTuningConfig, "P_TUNING": PromptEncoderConfig}
# Layer-injecting methods map to their tuner (a Cell wrapping the model); prompt-learning methods to their encoder.
PEFT_TYPE_TO_TUNER_MAPPING = {"LORA": LoraModel, "IA3": IA3Model, "ADALORA": AdaLoraModel,
                              "ADAPTION_PROMPT": AdaptionPromptModel, "PROMPT_TUNING": PromptEmbedding,
                              "PREFIX_TUNING": PrefixEncoder, "P_TUNING": PromptEncoder}
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
