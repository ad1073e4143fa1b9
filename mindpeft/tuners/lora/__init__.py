from ...utils.registry import register_peft_method
from .config import LoraConfig
from .layer import Embedding, Linear, LoraLayer
from .model import LoraModel

register_peft_method(name="lora", config_cls=LoraConfig, model_cls=LoraModel)
