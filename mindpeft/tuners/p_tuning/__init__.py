from .config import PromptEncoderConfig, PromptEncoderReparameterizationType
from .model import LSTM, PromptEncoder
