"""``LNTuningModel``: replaces the targeted layers of a Cell model with :class:`LNTuningLayer`."""
from ...utils.other import replace_child
from ..tuners_utils import BaseTuner
from .layer import LNTuningLayer

# HF peft's defaults (``TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING``); BERT/RoBERTa have none there.
TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING = {
    "llama": ["input_layernorm", "post_attention_layernorm", "norm"],
    "bloom": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "llava": ["multi_modal_projector", "input_layernorm", "post_attention_layernorm", "norm", "embed_tokens",
              "lm_head"],
    "t5": ["layer_norm", "final_layer_norm"],
    "mt5": ["layer_norm", "final_layer_norm"],
    "bart": ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"],
    "gpt2": ["ln_1", "ln_2", "ln_f"],
    "blip-2": ["layernorm", "LayerNorm", "final_layer_norm", "self_attn_layer_norm"],
    "gptj": ["ln_1", "ln_f"],
    "falcon": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "mistral": ["input_layernorm", "post_attention_layernorm", "norm"],
    "phi": ["input_layernorm", "final_layernorm"],
    "gemma": ["input_layernorm", "post_attention_layernorm", "norm"],
    "gemma2": ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm", "norm"],
    "gemma3_text": ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                    "post_feedforward_layernorm", "norm"],
    "qwen2": ["post_attention_layernorm"],
    "qwen3": ["post_attention_layernorm"],
}


class LNTuningModel(BaseTuner):
    """Creates an LN tuning model from a base model (see :class:`LNTuningConfig`); one adapter is active at a time,
    and merging puts its copies' weights into the base layers."""

    prefix = "ln_tuning_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if isinstance(target, LNTuningLayer):
            target.update_layer(adapter_name)
        else:
            replace_child(parent, target_name, LNTuningLayer(target, adapter_name))

    def _mark_only_adapters_as_trainable(self, model):
        for name, param in model.parameters_and_names():
            if self.prefix not in name and ".modules_to_save." not in name:
                param.requires_grad = False

    def set_adapter(self, adapter_name):
        if not isinstance(adapter_name, str) and len(adapter_name) > 1:
            raise ValueError(f"LN tuning runs one adapter at a time; got {list(adapter_name)}")
        super().set_adapter(adapter_name)
