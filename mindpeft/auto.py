"""``AutoPeftModel*``: rebuild the base model named in ``adapter_config.json`` and load the adapter on it."""
from . import models
from .config import PeftConfig
from .models import PreTrainedModel
from .models import auto as model_auto
from .peft_model import (TASK_TYPE_TO_PEFT_MODEL, PeftModel, PeftModelForCausalLM, PeftModelForFeatureExtraction,
                         PeftModelForQuestionAnswering, PeftModelForSeq2SeqLM, PeftModelForSequenceClassification,
                         PeftModelForTokenClassification)


class _BaseAutoPeftModel:
    model_auto_class = None
    peft_model_class = PeftModel

    def __init__(self):
        raise EnvironmentError(f"Use {type(self).__name__}.from_pretrained(adapter_dir)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, adapter_name="default", is_trainable=False,
                        base_model_path=None, **kwargs):
        """Load the base model from ``base_model_path`` (default: the config's ``base_model_name_or_path``,
        a local folder) and the adapter from ``pretrained_model_name_or_path``."""
        config = PeftConfig.from_pretrained(pretrained_model_name_or_path)
        cls._check_task_type(config)
        base_path = base_model_path or config.base_model_name_or_path
        if not base_path:
            raise ValueError("The adapter config has no base_model_name_or_path; pass base_model_path=")
        base_model = cls._base_model_class(config).from_pretrained(base_path, **kwargs)
        return cls.peft_model_class.from_pretrained(base_model, pretrained_model_name_or_path,
                                                    adapter_name=adapter_name, is_trainable=is_trainable,
                                                    config=config)

    @classmethod
    def _base_model_class(cls, config):
        return cls.model_auto_class

    @classmethod
    def _check_task_type(cls, config):
        """HF peft's checks: an adapter with a task type loads only through the class of that task."""
        expected = _task_peft_model_class(config)
        if expected is not None and expected is not cls.peft_model_class:
            raise ValueError(f"Expected target PEFT class: {expected.__name__}, but you have asked for: "
                             f"{cls.peft_model_class.__name__} make sure that you are loading the correct model for "
                             f"your task type (task_type={_task(config)!r}: use {_auto_class_for(expected)}).")


def _task(config):
    return getattr(config.task_type, "value", config.task_type)


def _task_peft_model_class(config):
    return TASK_TYPE_TO_PEFT_MODEL.get(_task(config)) if config.task_type is not None else None


def _auto_class_for(peft_model_class):
    return next((auto.__name__ for auto in _BaseAutoPeftModel.__subclasses__()
                 if auto.peft_model_class is peft_model_class), f"the class loading {peft_model_class.__name__}")


class AutoPeftModel(_BaseAutoPeftModel):
    """Adapters without a task type. The base model is the class HF peft records in the config's
    ``auto_mapping`` (``ViTForImageClassification``, ``SegformerForSemanticSegmentation``,
    ``WhisperForConditionalGeneration``...) when mindpeft.models has it, else :class:`~mindpeft.models.AutoModel`."""

    model_auto_class = model_auto.AutoModel

    @classmethod
    def _base_model_class(cls, config):
        name = (config.auto_mapping or {}).get("base_model_class")
        model_class = getattr(models, name, None) if isinstance(name, str) else None
        if isinstance(model_class, type) and issubclass(model_class, PreTrainedModel):
            return model_class
        return cls.model_auto_class

    @classmethod
    def _check_task_type(cls, config):
        expected = _task_peft_model_class(config)
        if expected is not None:
            raise ValueError(f"Cannot use `AutoPeftModel` with a task type, please use a specific class for your task "
                             f"type: {_auto_class_for(expected)} for task_type={_task(config)!r}.")


class AutoPeftModelForCausalLM(_BaseAutoPeftModel):
    model_auto_class = model_auto.AutoModelForCausalLM
    peft_model_class = PeftModelForCausalLM


class AutoPeftModelForSeq2SeqLM(_BaseAutoPeftModel):
    model_auto_class = model_auto.AutoModelForSeq2SeqLM
    peft_model_class = PeftModelForSeq2SeqLM


class AutoPeftModelForSequenceClassification(_BaseAutoPeftModel):
    model_auto_class = model_auto.AutoModelForSequenceClassification
    peft_model_class = PeftModelForSequenceClassification


class AutoPeftModelForTokenClassification(_BaseAutoPeftModel):
    model_auto_class = model_auto.AutoModelForTokenClassification
    peft_model_class = PeftModelForTokenClassification


class AutoPeftModelForQuestionAnswering(_BaseAutoPeftModel):
    model_auto_class = model_auto.AutoModelForQuestionAnswering
    peft_model_class = PeftModelForQuestionAnswering


class AutoPeftModelForFeatureExtraction(_BaseAutoPeftModel):
    model_auto_class = model_auto.AutoModel
    peft_model_class = PeftModelForFeatureExtraction
