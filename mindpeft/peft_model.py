"""``PeftModel`` and its task subclasses: a base model plus adapters, saved and loaded in HF peft's format."""
import os
from contextlib import contextmanager

import numpy as np
from mindspore import nn

from .config import PeftConfig
from .utils.constants import TASK_HEAD_MODULE_NAMES
from .utils.peft_types import TaskType
from .utils.save_and_load import (get_peft_model_state_dict, load_peft_weights, save_peft_weights,
                                  set_peft_model_state_dict)


class PeftModel(nn.Cell):
    """Base model with adapters; ``construct`` forwards to the adapted model.

    Args:
        model: the base model, any ``mindspore.nn.Cell`` (mindpeft.models, mindnlp, mindone or your own).
        peft_config: the adapter configuration, e.g. a :class:`LoraConfig`.
        adapter_name: name of the first adapter.
    """

    def __init__(self, model, peft_config, adapter_name="default"):
        super().__init__()
        from .mapping import PEFT_TYPE_TO_TUNER_MAPPING

        key = peft_config.peft_type.value
        if key not in PEFT_TYPE_TO_TUNER_MAPPING:
            raise ValueError(f"peft_type {key!r} is not supported yet by mindpeft")
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        self._prepare_config(peft_config)
        self.peft_type = peft_config.peft_type
        self.base_model = PEFT_TYPE_TO_TUNER_MAPPING[key](model, {adapter_name: peft_config}, adapter_name)
        if peft_config.inference_mode:
            self.set_train(False)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "_cells", "_params"):
                raise
            return getattr(self.base_model, name)

    def construct(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    # ----- configuration and parameters -------------------------------------------------------------
    @property
    def peft_config(self):
        return self.base_model.peft_config

    @property
    def active_adapter(self):
        return self.base_model.active_adapter

    @property
    def active_adapters(self):
        return self.base_model.active_adapters

    @property
    def active_peft_config(self):
        return self.peft_config[self.active_adapters[0]]

    @property
    def state_version(self):
        """Changes whenever adapter state read by compiled graphs changes (see :mod:`mindpeft.training`)."""
        return self.base_model.state_version

    def get_base_model(self):
        return self.base_model.model

    def get_nb_trainable_parameters(self):
        """``(trainable, total)`` parameter counts; each shared Parameter is counted once."""
        trainable, total = 0, 0
        for _, param in self.parameters_and_names():
            n = int(np.prod(param.shape))
            total += n
            if param.requires_grad:
                trainable += n
        return trainable, total

    def print_trainable_parameters(self):
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ----- adapters ----------------------------------------------------------------------------------
    def add_adapter(self, adapter_name, peft_config):
        """Add a second adapter (not activated; use :meth:`set_adapter`)."""
        if peft_config.peft_type != self.peft_type:
            raise ValueError(f"Cannot combine adapters with different peft types. Found {self.peft_type.value} "
                             f"and {peft_config.peft_type.value}.")
        if adapter_name in self.peft_config:
            raise ValueError(f"Adapter {adapter_name!r} already exists")
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = self.active_peft_config.base_model_name_or_path
        self._prepare_config(peft_config)
        self.base_model.peft_config[adapter_name] = peft_config
        try:
            self.base_model.inject_adapter(self.base_model.model, adapter_name)
        except Exception:
            del self.base_model.peft_config[adapter_name]
            raise

    def _prepare_config(self, peft_config):
        """Add the task's head (classifier, qa_outputs) to ``modules_to_save`` before injection, as HF peft does."""
        heads = TASK_HEAD_MODULE_NAMES.get(peft_config.task_type.value if peft_config.task_type else None, [])
        if heads and hasattr(peft_config, "modules_to_save"):
            names = list(peft_config.modules_to_save or [])
            peft_config.modules_to_save = names + [n for n in heads if n not in names]

    def set_adapter(self, adapter_name):
        """Activate ``adapter_name``; a clear error if it does not exist."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name!r} not found; available adapters: {list(self.peft_config)}")
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name):
        self.base_model.delete_adapter(adapter_name)

    @contextmanager
    def disable_adapter(self):
        """Context manager running the plain base model (adapters off, merged weights unmerged)."""
        with self.base_model._adapters_disabled():
            yield

    def merge_adapter(self, adapter_names=None, safe_merge=False):
        self.base_model.merge_adapter(adapter_names, safe_merge)

    def unmerge_adapter(self):
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, safe_merge=False, adapter_names=None):
        """Merge adapters into the base weights and return the base model without adapter layers."""
        return self.base_model.merge_and_unload(safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self):
        """Return the base model with adapter layers removed and weights untouched."""
        return self.base_model.unload()

    # ----- saving and loading ------------------------------------------------------------------------
    def save_pretrained(self, save_directory, selected_adapters=None, **kwargs):
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` per adapter (non-default adapters go
        into a sub-folder named after them), readable by HF peft."""
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"You passed an invalid `selected_adapters` arguments, current supported adapter "
                             f"names are {list(self.peft_config)} - got {unknown}.")
        for name in names:
            config = self.peft_config[name]
            out_dir = save_directory if name == "default" else os.path.join(save_directory, name)
            save_peft_weights(get_peft_model_state_dict(self, name), out_dir)
            inference_mode = config.inference_mode
            config.inference_mode = True
            try:
                config.save_pretrained(out_dir, **kwargs)
            finally:
                config.inference_mode = inference_mode

    @classmethod
    def from_pretrained(cls, model, model_id, adapter_name="default", is_trainable=False, config=None, **kwargs):
        """Wrap ``model`` and load the adapter saved in the local folder ``model_id`` (by mindpeft or HF peft)."""
        from .mapping import MODEL_TYPE_TO_PEFT_MODEL_MAPPING

        if not os.path.isdir(model_id):
            raise ValueError(f"Adapter folder {model_id!r} does not exist (mindpeft loads adapters from local "
                             "folders)")
        if config is None:
            config = PeftConfig.from_pretrained(model_id, **kwargs)
        config.inference_mode = not is_trainable
        task = config.task_type.value if config.task_type is not None else None
        model_cls = cls if cls is not PeftModel else MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task, PeftModel)
        weights = load_peft_weights(model_id)
        peft_model = model_cls(model, config, adapter_name)
        peft_model._load_weights(weights, adapter_name, is_trainable)
        return peft_model

    def load_adapter(self, model_id, adapter_name, is_trainable=False, **kwargs):
        """Load the adapter in the local folder ``model_id`` as ``adapter_name`` (not activated)."""
        if adapter_name not in self.peft_config:
            config = PeftConfig.from_pretrained(model_id, **kwargs)
            config.inference_mode = not is_trainable
            weights = load_peft_weights(model_id)
            self.add_adapter(adapter_name, config)
        else:
            weights = load_peft_weights(model_id)
        self._load_weights(weights, adapter_name, is_trainable)

    def _load_weights(self, weights, adapter_name, is_trainable):
        set_peft_model_state_dict(self, weights, adapter_name)
        if not is_trainable:
            self.base_model._freeze_adapter(adapter_name)
            self.set_train(False)

    # ----- inference ---------------------------------------------------------------------------------
    def generate(self, *args, **kwargs):
        return self.get_base_model().generate(*args, **kwargs)


class PeftModelForCausalLM(PeftModel):
    """PeftModel for decoder-only language models (``TaskType.CAUSAL_LM``)."""


class PeftModelForSeq2SeqLM(PeftModel):
    """PeftModel for encoder-decoder language models (``TaskType.SEQ_2_SEQ_LM``)."""


class PeftModelForSequenceClassification(PeftModel):
    """PeftModel for sequence classification; the ``classifier``/``score`` head is trained and saved too."""


class PeftModelForTokenClassification(PeftModel):
    """PeftModel for token classification; the ``classifier``/``score`` head is trained and saved too."""


class PeftModelForQuestionAnswering(PeftModel):
    """PeftModel for extractive question answering; the ``qa_outputs`` head is trained and saved too."""


class PeftModelForFeatureExtraction(PeftModel):
    """PeftModel returning hidden states (``TaskType.FEATURE_EXTRACTION``)."""


TASK_TYPE_TO_PEFT_MODEL = {
    TaskType.SEQ_CLS.value: PeftModelForSequenceClassification,
    TaskType.SEQ_2_SEQ_LM.value: PeftModelForSeq2SeqLM,
    TaskType.CAUSAL_LM.value: PeftModelForCausalLM,
    TaskType.TOKEN_CLS.value: PeftModelForTokenClassification,
    TaskType.QUESTION_ANS.value: PeftModelForQuestionAnswering,
    TaskType.FEATURE_EXTRACTION.value: PeftModelForFeatureExtraction,
}
