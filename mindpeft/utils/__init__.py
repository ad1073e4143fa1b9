from .peft_types import PeftType, TaskType
from .save_and_load import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from .seeding import reseed_dropout, set_seed
from .registry import register_peft_method
