from ...utils.registry import register_peft_method
from .config import MultitaskPromptTuningConfig, MultitaskPromptTuningInit
from .model import MultitaskPromptEmbedding

register_peft_method(name="multitask_prompt_tuning", config_cls=MultitaskPromptTuningConfig,
                     model_cls=MultitaskPromptEmbedding)
