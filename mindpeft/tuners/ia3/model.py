"""``IA3Model``: injects IA3 vectors into a Cell model."""
import re

from ...utils.constants import (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
                                TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING)
from ...utils.other import replace_child
from ..tuners_utils import BaseTuner
from .layer import IA3Layer, dispatch_ia3_layer


def is_feedforward(config, key):
    targets = config.feedforward_modules or set()
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    return any(key.endswith(t) for t in targets)


class IA3Model(BaseTuner):
    """Creates an IA3 model from a base model (see :class:`IA3Config`)."""

    prefix = "ia3_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

    def _prepare_adapter_config(self, config, model_config):
        config = super()._prepare_adapter_config(config, model_config)
        if config.feedforward_modules is None:
            model_type = getattr(model_config, "model_type", None)
            if model_type not in TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING:
                raise ValueError("Please specify `feedforward_modules` in `peft_config`")
            config.feedforward_modules = set(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[model_type])
        return config

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        feedforward = is_feedforward(config, current_key)
        if isinstance(target, IA3Layer):
            if target.is_feedforward != feedforward:
                raise ValueError(f"{current_key} is a feed-forward module for one adapter and not for another")
            target.update_layer(adapter_name, config.init_ia3_weights)
        else:
            replace_child(parent, target_name, dispatch_ia3_layer(target, adapter_name, config, feedforward))

    def _mark_only_adapters_as_trainable(self, model):
        for name, param in model.parameters_and_names():
            if self.prefix not in name and ".modules_to_save." not in name:
                param.requires_grad = False
