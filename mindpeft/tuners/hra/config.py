"""Configuration of HRA (Householder reflection adaptation, Yuan et al., 2024), as HF peft's."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_bool, check_choice, check_integer, check_targets
from ...utils.peft_types import PeftType

BIAS_CHOICES = ("none", "all", "hra_only")


@dataclass
class HRAConfig(PeftConfig):
    """``W H_1 ... H_r``: the targeted weights times ``r`` Householder reflections ``H_i = I - 2 u_i u_i^T``
    (``u_i`` the normalised columns of the trained ``hra_u``, or orthonormalised with ``apply_GS``)."""

    r: int = field(default=8, metadata={"help": "Number of reflections (even, for the identity initialisation)"})
    apply_GS: bool = field(default=False, metadata={"help": "Gram-Schmidt orthogonalise the reflection vectors"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match), a regex (full match) or "
                                        "'all-linear'; Linear and Conv2d layers"})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    init_weights: bool = field(default=True, metadata={"help": "Pairs of equal vectors (the identity); False: "
                                                                "random vectors"})
    layers_to_transform: Optional[Union[list, int]] = field(default=None, metadata={"help": "Layer indexes to adapt"})
    layers_pattern: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'h' or 'layers', used with layers_to_transform"})
    bias: str = field(default="none", metadata={"help": "Biases to train: 'none', 'all' or 'hra_only'"})
    modules_to_save: Optional[list] = field(default=None, metadata={"help": "Modules trained in full and saved"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.HRA
        check_integer(self, "r", minimum=1)
        for name in ("apply_GS", "init_weights"):
            check_bool(self, name)
        check_choice(self, "bias", BIAS_CHOICES)
        check_targets(self)
