"""``AutoModelFor*``: pick the architecture from ``model_type`` in a model folder's ``config.json``."""
import os

from ..utils.hub import resolve_folder
from ..utils.io import read_json_object
from . import bert, bloom, gpt2, llama, mistral, opt, qwen2, t5
from . import segformer, vit, whisper
from .configuration_utils import CONFIG_NAME, ConfigError
from .peft_integration import adapter_base_model_path

CONFIG_MAPPING = {"gpt2": gpt2.GPT2Config, "bert": bert.BertConfig, "roberta": bert.RobertaConfig,
                  "t5": t5.T5Config, "mt5": t5.MT5Config, "llama": llama.LlamaConfig,
                  "bloom": bloom.BloomConfig, "opt": opt.OPTConfig, "qwen2": qwen2.Qwen2Config,
                  "mistral": mistral.MistralConfig}


class _AutoModel:
    """Base of the Auto classes; subclasses map ``model_type`` to a model class."""

    mapping = {}

    def __init__(self):
        raise EnvironmentError(f"Use {type(self).__name__}.from_pretrained(path) or .from_config(config)")

    @classmethod
    def _model_class(cls, model_type):
        if model_type not in cls.mapping:
            raise ValueError(f"{cls.__name__} does not support model_type {model_type!r}; supported: "
                             f"{sorted(cls.mapping)}")
        return cls.mapping[model_type]

    @classmethod
    def from_config(cls, config):
        return cls._model_class(config.model_type)(config)

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """The model class of ``model_type`` in ``path``'s ``config.json`` (a folder or a cached hub id). An
        adapter folder (``adapter_config.json``, no ``config.json``) gives its base model with the adapter loaded
        (see :meth:`PreTrainedModel.from_pretrained <mindpeft.models.PreTrainedModel.from_pretrained>`)."""
        folder = resolve_folder(path, kwargs.get("revision"), kwargs.get("subfolder"))
        model_type = _read_config(adapter_base_model_path(folder) or folder).get("model_type")
        return cls._model_class(model_type).from_pretrained(path, **kwargs)  # the name given: a hub id is kept


def _read_config(folder):
    file = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"No {CONFIG_NAME} in {folder!r}")
    return read_json_object(file)


class AutoConfig:
    @staticmethod
    def from_pretrained(path, **kwargs):
        """The config class of ``model_type`` in ``path``'s ``config.json`` (a folder or a cached hub id)."""
        path = resolve_folder(path, kwargs.pop("revision", None), kwargs.pop("subfolder", None))
        data = _read_config(path)
        file = os.path.join(path, CONFIG_NAME)
        model_type = data.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{file}: unsupported model_type {model_type!r}; supported: {sorted(CONFIG_MAPPING)}")
        try:
            return CONFIG_MAPPING[model_type].from_dict(data, **kwargs)
        except ConfigError as err:
            raise err.with_source(file) from None


class AutoModel(_AutoModel):
    mapping = {"gpt2": gpt2.GPT2Model, "bert": bert.BertModel, "roberta": bert.RobertaModel,
               "llama": llama.LlamaModel, "bloom": bloom.BloomModel, "opt": opt.OPTModel,
               "qwen2": qwen2.Qwen2Model, "mistral": mistral.MistralModel}


class AutoModelForCausalLM(_AutoModel):
    mapping = {"gpt2": gpt2.GPT2LMHeadModel, "llama": llama.LlamaForCausalLM, "bloom": bloom.BloomForCausalLM,
               "opt": opt.OPTForCausalLM, "qwen2": qwen2.Qwen2ForCausalLM, "mistral": mistral.MistralForCausalLM}


class AutoModelForSeq2SeqLM(_AutoModel):
    mapping = {"t5": t5.T5ForConditionalGeneration, "mt5": t5.MT5ForConditionalGeneration}


class AutoModelForSequenceClassification(_AutoModel):
    mapping = {"gpt2": gpt2.GPT2ForSequenceClassification, "bert": bert.BertForSequenceClassification,
               "roberta": bert.RobertaForSequenceClassification, "bloom": bloom.BloomForSequenceClassification,
               "opt": opt.OPTForSequenceClassification, "qwen2": qwen2.Qwen2ForSequenceClassification}


class AutoModelForTokenClassification(_AutoModel):
    mapping = {"bert": bert.BertForTokenClassification, "roberta": bert.RobertaForTokenClassification}


class AutoModelForQuestionAnswering(_AutoModel):
    mapping = {"bert": bert.BertForQuestionAnswering, "roberta": bert.RobertaForQuestionAnswering}


# Vision and speech families
CONFIG_MAPPING.update({"vit": vit.ViTConfig, "segformer": segformer.SegformerConfig, "whisper": whisper.WhisperConfig})
AutoModel.mapping.update({"vit": vit.ViTModel, "segformer": segformer.SegformerModel, "whisper": whisper.WhisperModel})


class AutoModelForImageClassification(_AutoModel):
    mapping = {"vit": vit.ViTForImageClassification}


class AutoModelForSemanticSegmentation(_AutoModel):
    mapping = {"segformer": segformer.SegformerForSemanticSegmentation}


class AutoModelForSpeechSeq2Seq(_AutoModel):
    mapping = {"whisper": whisper.WhisperForConditionalGeneration}
