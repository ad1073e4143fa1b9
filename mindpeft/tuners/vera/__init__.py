from ...utils.registry import register_peft_method
from .config import VeraConfig
from .layer import Linear, VeraProjection
from .model import VeraModel

register_peft_method(name="vera", config_cls=VeraConfig, model_cls=VeraModel, prefix="vera_lambda_")
