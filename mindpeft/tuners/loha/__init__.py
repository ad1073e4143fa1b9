from ...utils.registry import register_peft_method
from .config import LoHaConfig
from .layer import Linear, LoHaLayer
from .model import LoHaModel

register_peft_method(name="loha", config_cls=LoHaConfig, model_cls=LoHaModel)
