"""Registries of PEFT methods and tasks, and ``get_peft_model``."""
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
    """
    task = peft_config.task_type.value if peft_config.task_type is not None else None
    return MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task, PeftModel)(model, peft_config, adapter_name)
