"""Configuration of P-tuning (Liu et al., 2021)."""
import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import PromptLearningConfig, check_integer, check_number
from ...utils.peft_types import PeftType


class PromptEncoderReparameterizationType(str, enum.Enum):
    MLP = "MLP"
    LSTM = "LSTM"


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """Virtual token embeddings reparameterised by an MLP or a bidirectional LSTM."""

    encoder_reparameterization_type: Union[str, PromptEncoderReparameterizationType] = field(
        default=PromptEncoderReparameterizationType.MLP, metadata={"help": "MLP or LSTM"})
    encoder_hidden_size: Optional[int] = field(default=None, metadata={"help": "Hidden size of the encoder"})
    encoder_num_layers: int = field(default=2, metadata={"help": "Layers of the LSTM (the MLP always has 3)"})
    encoder_dropout: float = field(default=0.0, metadata={"help": "Dropout between LSTM layers"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.P_TUNING
        check_integer(self, "encoder_hidden_size", minimum=1, optional=True)
        check_integer(self, "encoder_num_layers", minimum=1)
        check_number(self, "encoder_dropout")
        if not 0 <= self.encoder_dropout < 1:
            raise ValueError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout}")
        valid = [t.value for t in PromptEncoderReparameterizationType]
        if self.encoder_reparameterization_type not in valid:
            raise ValueError(f"encoder_reparameterization_type must be one of {valid}, got "
                             f"{self.encoder_reparameterization_type!r}")
        self.encoder_reparameterization_type = PromptEncoderReparameterizationType(
            self.encoder_reparameterization_type)
