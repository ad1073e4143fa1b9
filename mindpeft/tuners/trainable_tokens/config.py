"""Configuration of trainable tokens: train chosen rows of an embedding matrix, field for field as HF peft's
``TrainableTokensConfig``."""
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PeftConfig, check_bool, check_names, describe, is_integer
from ...utils.peft_types import PeftType


def check_token_indices(name, value):
    """``value`` must be a non-empty list of distinct non-negative ints; ``ValueError`` naming ``name`` otherwise."""
    if (not isinstance(value, list) or not value or not all(is_integer(i) and i >= 0 for i in value)
            or len(set(value)) != len(value)):
        raise ValueError(f"{name} must be a non-empty list of distinct non-negative token indices, got "
                         f"{describe(value)}")


@dataclass
class TrainableTokensConfig(PeftConfig):
    """Trains the embeddings of the tokens in ``token_indices`` only; the rest of the matrix stays frozen.

    The target defaults to the model's input embedding (``get_input_embeddings()``), else ``embed_tokens``; layers
    whose weight is tied to it (an LM head) follow it. ``init_weights=True`` starts from the current embeddings, so
    the untrained adapter changes nothing.
    """

    token_indices: list = field(default_factory=list, metadata={"help": "Indices of the tokens to train"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Embedding module names or a regex; defaults to the input embedding"})
    init_weights: bool = field(default=True, metadata={"help": "Start from the current embeddings (else random)"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.TRAINABLE_TOKENS
        check_token_indices("token_indices", self.token_indices)
        check_names(self, "target_modules")
        check_bool(self, "init_weights")
