"""Configuration of BOFT (butterfly orthogonal finetuning, Liu et al., 2024), field for field as HF peft 0.21's."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_integer, check_number
from ...utils.peft_types import PeftType
from ..oft.config import check_shared_fields


@dataclass
class BOFTConfig(PeftConfig):
    """An orthogonal matrix made of ``boft_n_butterfly_factor`` permuted block-diagonal factors rotates the input of
    each targeted layer, and a learned vector ``boft_s`` scales its outputs. Give exactly one of ``boft_block_size``
    and ``boft_block_num`` (``boft_block_size * boft_block_num == in_features``)."""

    boft_block_size: int = field(default=4, metadata={"help": "BOFT block size (0: inferred from boft_block_num)"})
    boft_block_num: int = field(default=0, metadata={"help": "BOFT blocks per layer (0: inferred from "
                                                             "boft_block_size)"})
    boft_n_butterfly_factor: int = field(default=1, metadata={"help": "Number of butterfly factors (1: plain OFT)"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match), a regex (full match), or "
                                        "'all-linear'. Defaults to the architecture's usual attention projections."})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    boft_dropout: float = field(default=0.0, metadata={"help": "Multiplicative dropout: in training, blocks of one "
                                                               "random butterfly factor are set to the identity"})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for (in, out) weights (set to False for "
                                                                  "Linear layers, with a warning)"})
    bias: str = field(default="none", metadata={"help": "Biases to train: 'none', 'all' or 'boft_only'"})
    modules_to_save: Optional[list] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)"})
    init_weights: bool = field(default=True, metadata={"help": "True: the identity rotation and unit scales; "
                                                               "False: random"})
    layers_to_transform: Optional[Union[list, int]] = field(
        default=None, metadata={"help": "Layer indexes to adapt (all by default)"})
    layers_pattern: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'h' or 'layers', used with layers_to_transform"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.BOFT
        check_integer(self, "boft_block_size", minimum=0)
        check_integer(self, "boft_block_num", minimum=0)
        if self.boft_block_size == 0 and self.boft_block_num == 0:
            raise ValueError(f"Either `boft_block_size` or `boft_block_num` must be non-zero. Currently, "
                             f"boft_block_size = {self.boft_block_size} and boft_block_num = {self.boft_block_num}.")
        if self.boft_block_size != 0 and self.boft_block_num != 0:
            raise ValueError(f"You can only specify either boft_block_size ({self.boft_block_size}) or boft_block_num "
                             f"({self.boft_block_num}), but not both simultaneously, because boft_block_size x "
                             "boft_block_num == in_features.")
        factor = self.boft_n_butterfly_factor
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"You can only specify boft_n_butterfly_factor {factor!r} to be a positive integer "
                             "number.")
        check_number(self, "boft_dropout")
        if not 0 <= self.boft_dropout < 1:
            raise ValueError(f"boft_dropout must be in [0, 1), got {self.boft_dropout}")
        check_shared_fields(self, ("none", "all", "boft_only"))
