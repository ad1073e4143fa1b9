"""Configuration of AdaLoRA (Zhang et al., 2023): SVD-form LoRA whose ranks are pruned during training."""
import warnings
from dataclasses import dataclass, field
from typing import Optional

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
        if self.init_r <= 0 or self.target_r <= 0:
            raise ValueError(f"init_r and target_r must be positive, got {self.init_r}, {self.target_r}")

    def _check_rank_pattern(self):
        for name, kept in (self.rank_pattern or {}).items():
            if not isinstance(kept, list) or not all(isinstance(k, bool) for k in kept):
                raise ValueError(f"AdaLoRA rank_pattern[{name!r}] must be a list of booleans")
