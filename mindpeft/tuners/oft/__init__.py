from ...utils.registry import register_peft_method
from .config import OFTConfig
from .layer import Conv2d, Embedding, Linear, OFTLayer
from .model import OFTModel

register_peft_method(name="oft", config_cls=OFTConfig, model_cls=OFTModel)
