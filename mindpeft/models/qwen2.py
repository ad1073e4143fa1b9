"""Qwen2 as MindSpore Cells, with HF module names: LLaMA's layers with biases on the query/key/value projections,
grouped-query attention, and sliding-window attention in the layers ``layer_types`` names (``use_sliding_window``)."""
from .configuration_utils import ConfigError
from .gpt2 import last_token_logits
from .layers import Linear
from .llama import LlamaAttention, LlamaConfig, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from .model_outputs import sequence_classification_loss, with_optional

LAYER_TYPES = ("full_attention", "sliding_attention")


class Qwen2Config(LlamaConfig):
    model_type = "qwen2"
    defaults = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": None, "hidden_act": "silu",
                "max_position_embeddings": 32768, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "rope_parameters": None, "use_sliding_window": False, "sliding_window": 4096,
                "max_window_layers": 28, "layer_types": None, "attention_dropout": 0.0, "tie_word_embeddings": False}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(optional_positive=("sliding_window",))
        if not self.use_sliding_window:
            self.sliding_window = None
        if self.layer_types is None:
            self.layer_types = ["sliding_attention" if self.sliding_window is not None and i >= self.max_window_layers
                                else "full_attention" for i in range(self.num_hidden_layers)]
        types = self.layer_types
        if (not isinstance(types, (list, tuple)) or len(types) != self.num_hidden_layers
                or any(t not in LAYER_TYPES for t in types)):
            raise ConfigError(self.model_type, [f"layer_types={types!r} must list {self.num_hidden_layers} "
                                                f"(num_hidden_layers) entries out of {list(LAYER_TYPES)}"])


class Qwen2Attention(LlamaAttention):
    @staticmethod
    def projection_biases(config):
        return True, False


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen2Attention


class Qwen2Model(LlamaModel):
    config_class = Qwen2Config
    decoder_layer_class = Qwen2DecoderLayer

    @staticmethod
    def attention_windows(config):
        flags = tuple(config.sliding_window is not None and t == "sliding_attention" for t in config.layer_types)
        return (config.sliding_window if any(flags) else None), flags


class Qwen2ForCausalLM(LlamaForCausalLM):
    config_class = Qwen2Config
    model_class = Qwen2Model
    _tied_keys = ("rotary_emb.inv_freq", "lm_head.weight")


class Qwen2ForSequenceClassification(LlamaPreTrainedModel):
    """Qwen2 with a ``score`` head read at each sequence's last non-padding token."""

    config_class = Qwen2Config

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config)
        self.score = Linear(config.hidden_size, config.num_labels, bias=False, std=config.initializer_range)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        pooled = last_token_logits(self.score(out["last_hidden_state"]), input_ids, self.config.pad_token_id)
        loss = sequence_classification_loss(pooled, labels, self.num_labels) if labels is not None else None
        return with_optional({"logits": pooled}, loss=loss)
