"""Configuration of prompt tuning (Lester et al., 2021)."""
import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PromptLearningConfig, check_string
from ...utils.peft_types import PeftType


class PromptTuningInit(str, enum.Enum):
    TEXT = "TEXT"
    RANDOM = "RANDOM"


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Learned soft-prompt embeddings prepended to the input embeddings."""

    prompt_tuning_init: Union[PromptTuningInit, str] = field(
        default=PromptTuningInit.RANDOM, metadata={"help": "TEXT (from prompt_tuning_init_text) or RANDOM"})
    prompt_tuning_init_text: Optional[str] = field(default=None, metadata={"help": "Text for TEXT initialisation"})
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Folder with tokenizer.json (or a hub id in the local Hugging Face "
                                  "cache), for TEXT initialisation"})
    tokenizer_kwargs: Optional[dict] = field(default=None, metadata={"help": "Unused; kept for HF compatibility"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.PROMPT_TUNING
        for name in ("prompt_tuning_init_text", "tokenizer_name_or_path"):
            check_string(self, name)
        if self.tokenizer_kwargs is not None and not isinstance(self.tokenizer_kwargs, dict):
            raise ValueError(f"tokenizer_kwargs must be a dict, got {self.tokenizer_kwargs!r}")
        if self.prompt_tuning_init not in [i.value for i in PromptTuningInit]:
            raise ValueError(f"prompt_tuning_init must be TEXT or RANDOM, got {self.prompt_tuning_init!r}")
        self.prompt_tuning_init = PromptTuningInit(self.prompt_tuning_init)
        if self.prompt_tuning_init == PromptTuningInit.TEXT:
            if not self.tokenizer_name_or_path:
                raise ValueError("When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be None")
            if not self.prompt_tuning_init_text:
                raise ValueError("When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None")
