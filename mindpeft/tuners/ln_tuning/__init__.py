from ...utils.registry import register_peft_method
from .config import LNTuningConfig
from .layer import LNTuningLayer
from .model import LNTuningModel

register_peft_method(name="ln_tuning", config_cls=LNTuningConfig, model_cls=LNTuningModel)
