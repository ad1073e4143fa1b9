"""Configuration of LoKr (low-rank Kronecker product, Yeh et al., 2023), as HF peft's."""
from dataclasses import dataclass, field
from typing import Union

from ...config import check_bool, check_integer
from ...utils.peft_types import PeftType
from ..lycoris_utils import LycorisConfig


@dataclass
class LoKrConfig(LycorisConfig):
    """``W + (alpha / r) * kron(w1, w2)`` on the targeted Linear layers, each factor full or a rank-r product; see
    :class:`~mindpeft.tuners.lycoris_utils.LycorisConfig` for the shared fields."""

    decompose_both: bool = field(default=False, metadata={"help": "Also decompose the left Kronecker factor"})
    decompose_factor: int = field(default=-1, metadata={"help": "Kronecker product decomposition factor (-1: near "
                                                                "the square root)"})
    rank_dropout_scale: bool = field(default=False, metadata={"help": "Rescale rank dropout by its mask's mean"})
    init_weights: Union[bool, str] = field(default=True, metadata={"help": "True: w1 (or w1_a) zero, the adapter "
                                                                            "starts as the identity; 'lycoris': w2 "
                                                                            "(or w2_b) zero; False: random"})

    init_weights_choices = (True, False, "lycoris")

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.LOKR
        check_bool(self, "decompose_both")
        check_bool(self, "rank_dropout_scale")
        check_integer(self, "decompose_factor")
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise ValueError(f"decompose_factor must be -1 or a positive integer, got {self.decompose_factor}")
