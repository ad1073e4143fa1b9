from ...utils.registry import register_peft_method
from .config import PromptTuningConfig, PromptTuningInit
from .model import PromptEmbedding

register_peft_method(name="prompt_tuning", config_cls=PromptTuningConfig, model_cls=PromptEmbedding)
