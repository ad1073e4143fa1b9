from ...utils.registry import register_peft_method
from .config import PrefixTuningConfig
from .model import PrefixEncoder

register_peft_method(name="prefix_tuning", config_cls=PrefixTuningConfig, model_cls=PrefixEncoder)
