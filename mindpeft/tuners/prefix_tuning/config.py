"""Configuration of prefix tuning (Li & Liang, 2021)."""
from dataclasses import dataclass, field
from typing import Optional

from ...config import PromptLearningConfig, check_bool, check_integer
from ...utils.peft_types import PeftType


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Learned key/value prefixes injected into every attention layer."""

    encoder_hidden_size: Optional[int] = field(default=None, metadata={"help": "Hidden size of the prefix MLP"})
    prefix_projection: bool = field(default=False, metadata={"help": "Reparameterise the prefix with an MLP"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.PREFIX_TUNING
        check_integer(self, "encoder_hidden_size", minimum=1, optional=True)
        check_bool(self, "prefix_projection")
