"""Configuration of LLaMA-Adapter (Zhang et al., 2023): gated adaption prompts in the top attention layers."""
from dataclasses import dataclass, field
from typing import Optional

from ...config import PeftConfig
from ...utils.peft_types import PeftType

TRANSFORMERS_MODELS_TO_ADAPTION_PROMPT_TARGET = {"llama": "self_attn", "mistral": "self_attn"}


@dataclass
class AdaptionPromptConfig(PeftConfig):
    """``adapter_len`` learned prompt vectors attended to, through a zero-initialised gate, by the attention of
    the last ``adapter_layers`` layers."""

    target_modules: Optional[str] = field(default=None, metadata={"help": "Name of the attention submodules"})
    adapter_len: int = field(default=None, metadata={"help": "Number of adapter tokens to insert"})
    adapter_layers: int = field(default=None, metadata={"help": "Number of adapter layers (from the top)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.ADAPTION_PROMPT
        for name in ("adapter_len", "adapter_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def is_adaption_prompt(self):
        return True
