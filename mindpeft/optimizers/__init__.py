from .adamw import AdamW
from .loraplus import create_loraplus_optimizer, loraplus_parameter_groups
