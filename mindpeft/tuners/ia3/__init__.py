from ...utils.registry import register_peft_method
from .config import IA3Config
from .layer import IA3Layer, Linear
from .model import IA3Model

register_peft_method(name="ia3", config_cls=IA3Config, model_cls=IA3Model)
