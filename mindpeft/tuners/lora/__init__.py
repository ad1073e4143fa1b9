from ...utils.registry import register_peft_method
from .config import LoraConfig
from .layer import LORA_LAYERS, ConvNd, Embedding, Linear, LoraLayer, MultiheadAttention
from .model import LoraModel
from .param_wrapper import ParamWrapper

register_peft_method(name="lora", config_cls=LoraConfig, model_cls=LoraModel)
