from ...utils.registry import register_peft_method
from .config import FourierFTConfig
from .layer import FourierFTLinear
from .model import FourierFTModel

register_peft_method(name="fourierft", config_cls=FourierFTConfig, model_cls=FourierFTModel)
