"""``AdaptionPromptModel``: wraps the top attention layers of a LLaMA-style model in adapted attention."""
from ...models.modeling_utils import sync_parameter_names
from ...utils.other import get_submodules, replace_child
from ..tuners_utils import BaseTuner
from .config import TRANSFORMERS_MODELS_TO_ADAPTION_PROMPT_TARGET
from .layer import AdaptedAttention


class AdaptionPromptModel(BaseTuner):
    """Creates a LLaMA-Adapter model (see :class:`AdaptionPromptConfig`); one adapter per model."""

    prefix = "adaption_"

    def inject_adapter(self, model, adapter_name):
        if len(self.peft_config) > 1:
            raise ValueError("mindpeft supports one adaption prompt adapter per model")
        config = self.peft_config[adapter_name]
        model_config = getattr(model, "config", None)
        if config.target_modules is None:
            model_type = getattr(model_config, "model_type", None)
            if model_type not in TRANSFORMERS_MODELS_TO_ADAPTION_PROMPT_TARGET:
                raise ValueError(f"Please specify `target_modules` in `peft_config`: no default for model_type "
                                 f"{model_type!r}")
            config.target_modules = TRANSFORMERS_MODELS_TO_ADAPTION_PROMPT_TARGET[model_type]
        keys = [key for key, _ in model.cells_and_names() if key.split(".")[-1] == config.target_modules]
        if not keys:
            raise ValueError(f"Target modules {config.target_modules!r} not found in the base model")
        if len(keys) < config.adapter_layers:
            raise ValueError(f"Config specifies more adapter layers '{config.adapter_layers}' than the model has "
                             f"'{len(keys)}'.")
        hidden_size = getattr(model_config, "hidden_size", None)
        for key in keys[-config.adapter_layers:]:
            parent, target, name = get_submodules(model, key)
            size = hidden_size or target.q_proj.in_features
            replace_child(parent, name, AdaptedAttention(target, adapter_name, config.adapter_len, size))
        for name, param in model.parameters_and_names():
            param.requires_grad = self.prefix in name and not config.inference_mode
        sync_parameter_names(model)
        self._bump()

    def _freeze_adapter(self, adapter_name):
        for name, param in self.model.parameters_and_names():
            if self.prefix in name:
                param.requires_grad = False
