"""Configuration of AdaLoRA (Zhang et al., 2023): SVD-form LoRA whose ranks are pruned during training."""
import warnings
from dataclasses import dataclass, field
from typing import Optional

from ...config import check_integer, check_mapping, check_number
from ...utils.peft_types import PeftType
from ..lora.config import LoraConfig


@dataclass
class AdaLoraConfig(LoraConfig):
    """LoRA as ``B diag(E) A`` with the rank budget shrinking from ``init_r`` to ``target_r`` per layer on average,
    by a cubic schedule between ``tinit`` and ``total_step - tfinal`` (call ``update_and_allocate`` every step)."""

    target_r: int = field(default=8, metadata={"help": "Target average rank of the incremental matrices"})
    init_r: int = field(default=12, metadata={"help": "Initial rank of each incremental matrix"})
    tinit: int = field(default=0, metadata={"help": "Steps of initial warm-up (no pruning)"})
    tfinal: int = field(default=0, metadata={"help": "Steps of final fine-tuning (fixed ranks)"})
    deltaT: int = field(default=1, metadata={"help": "Step interval of rank allocation"})
    beta1: float = field(default=0.85, metadata={"help": "EMA factor of the sensitivity"})
    beta2: float = field(default=0.85, metadata={"help": "EMA factor of the uncertainty"})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "Weight of the orthogonal regularisation"})
    total_step: Optional[int] = field(default=None, metadata={"help": "Total training steps"})
    rank_pattern: Optional[dict] = field(default=None, metadata={"help": "Kept ranks per layer (set by training)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.ADALORA
        if self.use_dora:
            raise ValueError(f"{self.peft_type} does not support DoRA.")
        for name, minimum in (("target_r", 1), ("init_r", 1), ("tinit", 0), ("tfinal", 0), ("deltaT", 1)):
            check_integer(self, name, minimum)
        check_integer(self, "total_step", optional=True)
        for name in ("beta1", "beta2", "orth_reg_weight"):
            check_number(self, name)
        if self.r != 8:
            warnings.warn("Note that `r` is not used in AdaLora and will be ignored. If you intended to set the "
                          "initial rank, use `init_r` instead.")
        if self.total_step is None or self.total_step <= 0:
            raise ValueError("AdaLoRA does not work when `total_step` is None, supply a value > 0.")
        if self.orth_reg_weight < 0:
            raise ValueError(f"`orth_reg_weight` should be greater than or equal to 0, but the value passed is "
                             f"{self.orth_reg_weight}")
        if self.tinit >= (self.total_step - self.tfinal):
            raise ValueError("The supplied schedule values don't allow for a budgeting phase. Decrease "
                             "`tfinal`/`tinit` or increase `total_step`.")
        if not (0 < self.beta1 < 1 and 0 < self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in (0, 1), got {self.beta1}, {self.beta2}")

    def _check_rank_pattern(self):
        check_mapping(self, "rank_pattern", _is_bool_list, "lists of booleans (the ranks AdaLoRA keeps)")


def _is_bool_list(value):
    return isinstance(value, list) and all(isinstance(v, bool) for v in value)
