"""Configuration of IA3 (Liu et al., 2022): learned rescaling vectors."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_bool, check_names
from ...utils.peft_types import PeftType


@dataclass
class IA3Config(PeftConfig):
    """Learned vectors that rescale the outputs of the targeted layers (the inputs of ``feedforward_modules``)."""

    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match) or a regex (full match)"})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    feedforward_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Targeted modules whose input (not output) is rescaled"})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for (in, out) weights such as GPT-2 Conv1D"})
    modules_to_save: Optional[list] = field(default=None, metadata={"help": "Modules trained in full and saved"})
    init_ia3_weights: bool = field(default=True, metadata={"help": "Initialise the vectors to ones"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.IA3
        for name in ("target_modules", "exclude_modules", "feedforward_modules"):
            check_names(self, name)
        check_names(self, "modules_to_save", keep_str=False, as_set=False)
        for name in ("fan_in_fan_out", "init_ia3_weights"):
            check_bool(self, name)
        if (isinstance(self.target_modules, set) and isinstance(self.feedforward_modules, set)
                and not self.feedforward_modules.issubset(self.target_modules)):
            raise ValueError("`feedforward_modules` should be a subset of `target_modules`")
