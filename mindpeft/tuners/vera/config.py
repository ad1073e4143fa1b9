"""Configuration of VeRA (vector-based random matrix adaptation, Kopiczko et al., 2023), as HF peft's."""
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_bool, check_choice, check_integer, check_number, check_targets
from ...utils.peft_types import PeftType

BIAS_CHOICES = ("none", "all", "vera_only")


@dataclass
class VeraConfig(PeftConfig):
    """``W x + lambda_b * (B (lambda_d * (A x)))``: ``A`` (r, in) and ``B`` (out, r) are frozen random projections
    shared by all adapted layers (sized for the largest, sliced per layer), ``lambda_b``/``lambda_d`` are trained."""

    r: int = field(default=256, metadata={"help": "Rank of the shared projections"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match), a regex (full match) or "
                                        "'all-linear'; Linear and GPT-2 Conv1D layers"})
    projection_prng_key: int = field(default=0, metadata={"help": "Seed of the projections (torch's CPU generator)"})
    save_projection: bool = field(default=True, metadata={"help": "Save vera_A/vera_B with the adapter"})
    vera_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the layer input"})
    d_initial: float = field(default=0.1, metadata={"help": "Initial value of lambda_d"})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for (in, out) weights such as GPT-2 Conv1D"})
    bias: str = field(default="none", metadata={"help": "Biases to train: 'none', 'all' or 'vera_only'"})
    modules_to_save: Optional[list] = field(default=None, metadata={"help": "Modules trained in full and saved"})
    init_weights: bool = field(default=True, metadata={"help": "lambda_b = 0 and lambda_d = d_initial (the "
                                                                "identity); False: lambda_b = 1, lambda_d ~ N(0, 1)"})
    layers_to_transform: Optional[Union[list, int]] = field(default=None, metadata={"help": "Layer indexes to adapt"})
    layers_pattern: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'h' or 'layers', used with layers_to_transform"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.VERA
        check_integer(self, "r", minimum=1)
        check_integer(self, "projection_prng_key")
        for name in ("save_projection", "fan_in_fan_out", "init_weights"):
            check_bool(self, name)
        for name in ("vera_dropout", "d_initial"):
            check_number(self, name)
        if not 0 <= self.vera_dropout < 1:
            raise ValueError(f"vera_dropout must be in [0, 1), got {self.vera_dropout}")
        check_choice(self, "bias", BIAS_CHOICES)
        check_targets(self)
        if not self.save_projection:
            warnings.warn("Specified to not save vera_A and vera_B within the state dictionary, instead they will be "
                          "restored using the PRNG key store in `config.projection_prng_key`. Consider setting "
                          "`config.save_projection` to `True` to guarantee restoring the checkpoint correctly on all "
                          "system configurations.")
