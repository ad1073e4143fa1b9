from ...utils.registry import register_peft_method
from .config import PromptEncoderConfig, PromptEncoderReparameterizationType
from .model import LSTM, PromptEncoder

register_peft_method(name="p_tuning", config_cls=PromptEncoderConfig, model_cls=PromptEncoder)
