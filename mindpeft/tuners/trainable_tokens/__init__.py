from ...utils.registry import register_peft_method
from .config import TrainableTokensConfig
from .layer import TrainableTokensLayer, TrainableTokensWrapper
from .model import TrainableTokensModel

register_peft_method(name="trainable_tokens", config_cls=TrainableTokensConfig, model_cls=TrainableTokensModel)
