from ...utils.registry import register_peft_method
from .config import LoKrConfig
from .layer import Conv1d, Conv2d, Linear, LoKrLayer, factorization
from .model import LoKrModel

register_peft_method(name="lokr", config_cls=LoKrConfig, model_cls=LoKrModel)
