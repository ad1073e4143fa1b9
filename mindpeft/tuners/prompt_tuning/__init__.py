from .config import PromptTuningConfig, PromptTuningInit
from .model import PromptEmbedding
