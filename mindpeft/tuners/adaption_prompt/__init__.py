from .config import AdaptionPromptConfig
from .layer import AdaptedAttention
from .model import AdaptionPromptModel
