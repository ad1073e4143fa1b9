from ...utils.registry import register_peft_method
from .config import HRAConfig
from .layer import HRAConv2d, HRALayer, HRALinear
from .model import HRAModel

register_peft_method(name="hra", config_cls=HRAConfig, model_cls=HRAModel)
