"""mindpeft: Parameter-Efficient Fine-Tuning (HF peft's API and file format) for MindSpore."""
__version__ = "0.1.0"

from .utils.runtime import tune_cpu_runtime, tune_dataset_runtime

tune_cpu_runtime()
tune_dataset_runtime()

from .auto import (AutoPeftModel, AutoPeftModelForCausalLM, AutoPeftModelForFeatureExtraction,
                   AutoPeftModelForQuestionAnswering, AutoPeftModelForSeq2SeqLM,
                   AutoPeftModelForSequenceClassification, AutoPeftModelForTokenClassification)
from .config import PeftConfig, PromptLearningConfig
from .mapping import PEFT_TYPE_TO_CONFIG_MAPPING, get_peft_model, inject_adapter_in_model
from .models.tokenization_auto import AutoTokenizer
from .mixed_model import PeftMixedModel
from .peft_model import (PeftModel, PeftModelForCausalLM, PeftModelForFeatureExtraction,
                         PeftModelForQuestionAnswering, PeftModelForSeq2SeqLM, PeftModelForSequenceClassification,
                         PeftModelForTokenClassification)
from .tuners import (AdaLoraConfig, AdaLoraModel, AdaptionPromptConfig, AdaptionPromptModel, IA3Config, IA3Model,
                     LNTuningConfig, LNTuningModel, LoHaConfig, LoHaModel, LoKrConfig, LoKrModel, LoraConfig,
                     LoraModel, PrefixEncoder, PrefixTuningConfig,
                     PromptEmbedding, PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType,
                     PromptTuningConfig, PromptTuningInit)
from .tuners import BOFTConfig, BOFTModel, OFTConfig, OFTModel
from .tuners import (MultitaskPromptEmbedding, MultitaskPromptTuningConfig, MultitaskPromptTuningInit, PolyConfig,
                     PolyModel)
from .tuners import TrainableTokensConfig, TrainableTokensModel
from .tuners import FourierFTConfig, FourierFTModel, HRAConfig, HRAModel, VeraConfig, VeraModel
from .quantization import (BitsAndBytesConfig, LoftQConfig, QuantizationConfig, prepare_model_for_kbit_training,
                           replace_lora_weights_loftq)
from .training.schedules import get_linear_schedule_with_warmup
from .training import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
from .utils import (PeftType, TaskType, get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict,
                    set_seed)
from .utils.status import TunerLayerStatus, TunerModelStatus, get_layer_status, get_model_status
