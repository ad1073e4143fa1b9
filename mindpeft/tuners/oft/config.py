"""Configuration of OFT (orthogonal finetuning, Qiu et al., 2023), field for field as HF peft 0.21's ``OFTConfig``."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_bool, check_choice, check_integer, check_number, check_targets
from ...utils.peft_types import PeftType


def check_shared_fields(config, bias_choices):
    """Checks of the fields OFT and BOFT share: targets, ``bias``, ``init_weights`` and the layer selection."""
    check_targets(config)
    check_choice(config, "bias", bias_choices)
    check_bool(config, "fan_in_fan_out")
    check_bool(config, "init_weights")


@dataclass
class OFTConfig(PeftConfig):
    """A learned block-diagonal orthogonal matrix ``R`` rotates the input of each targeted layer: ``W x`` becomes
    ``W (R^T x)``. Give exactly one of ``r`` (number of blocks) and ``oft_block_size`` (their size); the other is
    inferred from the layer's input size (``r * oft_block_size == in_features``)."""

    r: int = field(default=0, metadata={"help": "Number of OFT blocks per layer (0: inferred from oft_block_size)"})
    oft_block_size: int = field(default=32, metadata={"help": "OFT block size (0: inferred from r)"})
    module_dropout: float = field(default=0.0, metadata={"help": "Multiplicative dropout; HF peft 0.21 stores it but "
                                                                 "never applies it, and neither does mindpeft"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match), a regex (full match), or "
                                        "'all-linear'. Defaults to the architecture's usual attention projections."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for (in, out) weights (set to False for "
                                                                  "Linear layers, with a warning)"})
    bias: str = field(default="none", metadata={"help": "Biases to train: 'none', 'all' or 'oft_only'"})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    init_weights: bool = field(default=True, metadata={"help": "True: R starts as the identity; False: random"})
    layers_to_transform: Optional[Union[list, int]] = field(
        default=None, metadata={"help": "Layer indexes to adapt (all by default)"})
    layers_pattern: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'h' or 'layers', used with layers_to_transform"})
    modules_to_save: Optional[list] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)"})
    coft: bool = field(default=False, metadata={"help": "Constrained OFT: keep each block within eps of the identity"})
    eps: float = field(default=6e-5, metadata={"help": "COFT's radius (only with coft=True)"})
    block_share: bool = field(default=False, metadata={"help": "One block shared by all blocks of a layer"})
    use_cayley_neumann: bool = field(default=True, metadata={"help": "Approximate the Cayley transform's inverse by "
                                                                     "a Neumann series (False: exact inverse)"})
    num_cayley_neumann_terms: int = field(default=5, metadata={"help": "Terms of the Neumann series"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.OFT
        check_integer(self, "r", minimum=0)
        check_integer(self, "oft_block_size", minimum=0)
        if self.r == 0 and self.oft_block_size == 0:
            raise ValueError(f"Either `r` or `oft_block_size` must be non-zero. Currently, r = {self.r} and "
                             f"oft_block_size = {self.oft_block_size}.")
        if self.r != 0 and self.oft_block_size != 0:
            raise ValueError(f"You can only specify either r ({self.r}) or oft_block_size ({self.oft_block_size}), "
                             "but not both simultaneously, because r x oft_block_size == in_features.")
        check_number(self, "module_dropout")
        if not 0 <= self.module_dropout < 1:
            raise ValueError(f"module_dropout must be in [0, 1), got {self.module_dropout}")
        check_shared_fields(self, ("none", "all", "oft_only"))
        for name in ("coft", "block_share", "use_cayley_neumann"):
            check_bool(self, name)
        check_number(self, "eps")
        if self.eps <= 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        check_integer(self, "num_cayley_neumann_terms", minimum=1)
