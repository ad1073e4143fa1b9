"""Configuration of FourierFT (Gao et al., 2024): a few trained spectral coefficients per layer, as HF peft's."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import (PeftConfig, check_bool, check_choice, check_integer, check_mapping, check_number, check_targets,
                       is_integer)
from ...utils.peft_types import PeftType

BIAS_CHOICES = ("none", "all", "fourier_only")


@dataclass
class FourierFTConfig(PeftConfig):
    """``W x + (scaling * Re(ifft2(S))) x``: ``S`` (out, in) is zero except at ``n_frequency`` locations drawn by
    torch's ``randperm`` seeded with ``random_loc_seed``, where it holds the trained ``fourierft_spectrum``."""

    n_frequency: int = field(default=1000, metadata={"help": "Trained spectral coefficients per layer"})
    scaling: float = field(default=150.0, metadata={"help": "Scale of the weight update"})
    random_loc_seed: Optional[int] = field(default=777, metadata={"help": "Seed of the frequency locations"})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for (in, out) weights such as GPT-2 Conv1D"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match) or a regex (full match); Linear and "
                                        "GPT-2 Conv1D layers"})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    bias: str = field(default="none", metadata={"help": "Biases to train: 'none', 'all' or 'fourier_only'"})
    modules_to_save: Optional[list] = field(default=None, metadata={"help": "Modules trained in full and saved"})
    layers_to_transform: Optional[Union[list, int]] = field(default=None, metadata={"help": "Layer indexes to adapt"})
    layers_pattern: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'h' or 'layers', used with layers_to_transform"})
    n_frequency_pattern: Optional[dict] = field(
        default_factory=dict, metadata={"help": "Per-module n_frequency overrides (regex ending the module name)"})
    init_weights: bool = field(default=False, metadata={"help": "True: zero spectrum (the identity); False: "
                                                                "N(0, 1)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.FOURIERFT
        check_integer(self, "n_frequency", minimum=1)
        check_number(self, "scaling")
        check_integer(self, "random_loc_seed")
        for name in ("fan_in_fan_out", "init_weights"):
            check_bool(self, name)
        check_choice(self, "bias", BIAS_CHOICES)
        check_targets(self)
        if self.n_frequency_pattern is None:
            self.n_frequency_pattern = {}
        check_mapping(self, "n_frequency_pattern", lambda n: is_integer(n) and n > 0, "positive integers")
