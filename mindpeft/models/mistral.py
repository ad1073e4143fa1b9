"""Mistral as MindSpore Cells, with HF module names: LLaMA's layers without biases, grouped-query attention and
sliding-window attention (each position attends to the last ``sliding_window`` positions, itself included)."""
from .llama import LlamaAttention, LlamaConfig, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel


class MistralConfig(LlamaConfig):
    model_type = "mistral"
    defaults = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": None, "hidden_act": "silu",
                "max_position_embeddings": 4096 * 32, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "rope_parameters": None, "sliding_window": 4096, "attention_dropout": 0.0,
                "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(optional_positive=("sliding_window",))


class MistralAttention(LlamaAttention):
    @staticmethod
    def projection_biases(config):
        return False, False


class MistralDecoderLayer(LlamaDecoderLayer):
    attention_class = MistralAttention


class MistralModel(LlamaModel):
    config_class = MistralConfig
    decoder_layer_class = MistralDecoderLayer

    @staticmethod
    def attention_windows(config):
        window = config.sliding_window
        return window, (window is not None,) * config.num_hidden_layers


class MistralForCausalLM(LlamaForCausalLM):
    config_class = MistralConfig
    model_class = MistralModel
    _tied_keys = ("rotary_emb.inv_freq", "lm_head.weight")
