from ...utils.registry import register_peft_method
from .config import LoHaConfig
from .layer import Conv1d, Conv2d, Linear, LoHaLayer
from .model import LoHaModel

register_peft_method(name="loha", config_cls=LoHaConfig, model_cls=LoHaModel)
