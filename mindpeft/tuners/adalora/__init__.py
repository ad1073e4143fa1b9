from .config import AdaLoraConfig
from .layer import AdaLoraLayer, RankAllocator, SVDLinear
from .model import AdaLoraModel
