from .config import PrefixTuningConfig
from .model import PrefixEncoder
