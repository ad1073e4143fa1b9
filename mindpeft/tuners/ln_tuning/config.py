"""Configuration of LN tuning (Zhao et al., 2023): train copies of the LayerNorm layers."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_names
from ...utils.peft_types import PeftType


@dataclass
class LNTuningConfig(PeftConfig):
    """A trainable copy of each targeted layer (by default the architecture's LayerNorms) replaces it."""

    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match) or a regex (full match); defaults to "
                                        "the architecture's LayerNorm layers"})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    modules_to_save: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.LN_TUNING
        for name in ("target_modules", "exclude_modules"):
            check_names(self, name)
        check_names(self, "modules_to_save", keep_str=False, as_set=False)
