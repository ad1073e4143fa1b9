from .adalora import AdaLoraConfig, AdaLoraModel
from .adaption_prompt import AdaptionPromptConfig, AdaptionPromptModel
from .boft import BOFTConfig, BOFTModel
from .fourierft import FourierFTConfig, FourierFTModel
from .hra import HRAConfig, HRAModel
from .ia3 import IA3Config, IA3Model
from .ln_tuning import LNTuningConfig, LNTuningModel
from .loha import LoHaConfig, LoHaModel
from .lokr import LoKrConfig, LoKrModel
from .lora import LoraConfig, LoraModel
from .oft import OFTConfig, OFTModel
from .multitask_prompt_tuning import (MultitaskPromptEmbedding, MultitaskPromptTuningConfig,
                                      MultitaskPromptTuningInit)
from .poly import PolyConfig, PolyModel
from .p_tuning import PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType
from .prefix_tuning import PrefixEncoder, PrefixTuningConfig
from .prompt_tuning import PromptEmbedding, PromptTuningConfig, PromptTuningInit
from .trainable_tokens import TrainableTokensConfig, TrainableTokensModel
from .vera import VeraConfig, VeraModel
