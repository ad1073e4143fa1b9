from ...utils.registry import register_peft_method
from .config import AdaLoraConfig
from .layer import AdaLoraLayer, RankAllocator, SVDLinear
from .model import AdaLoraModel

register_peft_method(name="adalora", config_cls=AdaLoraConfig, model_cls=AdaLoraModel)
