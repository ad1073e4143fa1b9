from ...utils.registry import register_peft_method
from .config import LoKrConfig
from .layer import Linear, LoKrLayer, factorization
from .model import LoKrModel

register_peft_method(name="lokr", config_cls=LoKrConfig, model_cls=LoKrModel)
