from ...utils.registry import register_peft_method
from .config import BOFTConfig
from .layer import BOFTLayer, Conv2d, Linear
from .model import BOFTModel

register_peft_method(name="boft", config_cls=BOFTConfig, model_cls=BOFTModel)
