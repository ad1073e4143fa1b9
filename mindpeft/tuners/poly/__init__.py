from ...utils.registry import register_peft_method
from .config import PolyConfig
from .layer import Linear, PolyLayer
from .model import PolyModel
from .router import PolyRouter

register_peft_method(name="poly", config_cls=PolyConfig, model_cls=PolyModel)
