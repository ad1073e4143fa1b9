"""Configuration of Poly (Polytropon, Ponti et al., 2022) and Multi-Head Routing (Caccia et al., 2022), as HF
peft's."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_bool, check_integer, check_names, describe
from ...utils.peft_types import PeftType


@dataclass
class PolyConfig(PeftConfig):
    """Each targeted Linear layer gets an inventory of ``n_skills`` LoRA modules of rank ``r``; a router learns,
    per task, how to mix them (``task_ids`` is passed with every forward and generate call). ``n_splits > 1``
    routes each of ``n_splits`` slices of the layer's features separately (Multi-Head Routing)."""

    r: int = field(default=8, metadata={"help": "Rank of each LoRA skill"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match) or a regex (full match); defaults to "
                                        "LoRA's targets for the architecture"})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    modules_to_save: Optional[list] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)"})
    init_weights: bool = field(default=True, metadata={"help": "True: poly_lora_B starts at zero (the adapter is the "
                                                               "identity); False: random"})
    poly_type: str = field(default="poly", metadata={"help": 'The router; only "poly" exists'})
    n_tasks: int = field(default=1, metadata={"help": "Number of tasks (task_ids run from 0 to n_tasks - 1)"})
    n_skills: int = field(default=4, metadata={"help": "Number of LoRA skills in each Poly layer"})
    n_splits: int = field(default=1, metadata={"help": "Number of feature splits routed separately (MHR when > 1)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.POLY
        for name in ("target_modules", "exclude_modules"):
            check_names(self, name)
        check_names(self, "modules_to_save", keep_str=False, as_set=False)
        check_bool(self, "init_weights")
        for name in ("r", "n_tasks", "n_skills", "n_splits"):
            check_integer(self, name, minimum=1)
        if self.poly_type != "poly":
            raise ValueError(f"Unsupported poly_type: {describe(self.poly_type)}. Currently, only the following "
                             "types are supported: `poly`.")
