"""Configuration of LoHa (low-rank Hadamard product, FedPara, Hyeon-Woo et al., 2022), as HF peft's."""
from dataclasses import dataclass

from ...utils.peft_types import PeftType
from ..lycoris_utils import LycorisConfig


@dataclass
class LoHaConfig(LycorisConfig):
    """``W + (alpha / r) * (w1_a @ w1_b) * (w2_a @ w2_b)`` on the targeted Linear layers; see
    :class:`~mindpeft.tuners.lycoris_utils.LycorisConfig` for the fields."""

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.LOHA
