from .config import IA3Config
from .layer import IA3Layer, Linear
from .model import IA3Model
