"""``AutoModelFor*``: pick the architecture from ``model_type`` in a local ``config.json``."""
import json
import os

from . import bert, gpt2, llama, t5
from .configuration_utils import CONFIG_NAME, ConfigError

CONFIG_MAPPING = {"gpt2": gpt2.GPT2Config, "bert": bert.BertConfig, "roberta": bert.RobertaConfig,
                  "t5": t5.T5Config, "mt5": t5.MT5Config, "llama": llama.LlamaConfig}


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
        file = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {CONFIG_NAME} in {path!r} (mindpeft loads models from local folders)")
        with open(file, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
        return cls._model_class(model_type).from_pretrained(path, **kwargs)


class AutoConfig:
    @staticmethod
    def from_pretrained(path, **kwargs):
        file = os.path.join(path, CONFIG_NAME)
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
        model_type = data.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{file}: unsupported model_type {model_type!r}; supported: {sorted(CONFIG_MAPPING)}")
        try:
            return CONFIG_MAPPING[model_type].from_dict(data, **kwargs)
        except ConfigError as err:
            raise err.with_source(file) from None


class AutoModel(_AutoModel):
    mapping = {"gpt2": gpt2.GPT2Model, "bert": bert.BertModel, "roberta": bert.RobertaModel,
               "llama": llama.LlamaModel}


class AutoModelForCausalLM(_AutoModel):
    mapping = {"gpt2": gpt2.GPT2LMHeadModel, "llama": llama.LlamaForCausalLM}


class AutoModelForSeq2SeqLM(_AutoModel):
    mapping = {"t5": t5.T5ForConditionalGeneration, "mt5": t5.MT5ForConditionalGeneration}


class AutoModelForSequenceClassification(_AutoModel):
    mapping = {"gpt2": gpt2.GPT2ForSequenceClassification, "bert": bert.BertForSequenceClassification,
               "roberta": bert.RobertaForSequenceClassification}


class AutoModelForTokenClassification(_AutoModel):
    mapping = {"bert": bert.BertForTokenClassification, "roberta": bert.RobertaForTokenClassification}


class AutoModelForQuestionAnswering(_AutoModel):
    mapping = {"bert": bert.BertForQuestionAnswering, "roberta": bert.RobertaForQuestionAnswering}
