"""Configuration of LLaMA-Adapter (Zhang et al., 2023): gated adaption prompts in the top attention layers."""
from dataclasses import dataclass, field
from typing import Optional

from ...config import PeftConfig, check_integer, check_string
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
        check_string(self, "target_modules")
        for name in ("adapter_len", "adapter_layers"):
            check_integer(self, name, minimum=1)

    @property
    def is_adaption_prompt(self):
        return True
