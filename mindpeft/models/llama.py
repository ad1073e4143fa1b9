"""LLaMA as MindSpore Cells, with HF module names (``model.layers.0.self_attn.q_proj``...).

Qwen2 and Mistral (``qwen2.py``, ``mistral.py``) subclass these Cells: they differ in projection biases and
sliding-window attention.
"""
import math

from mindspore import nn, ops

from .configuration_utils import ConfigError, PretrainedConfig
from .generation import GenerationMixin
from .layers import (Activation, Dropout, Embedding, Linear, RMSNorm, RotaryEmbedding, apply_rotary_pos_emb, linear,
                     repeat_kv, sliding_window_bias)
from .model_outputs import (attention_bias, causal_lm_loss, check_model_inputs, concat, merge_heads,
                            scaled_dot_product_attention, split_heads, with_optional)
from .modeling_utils import PreTrainedModel


class LlamaConfig(PretrainedConfig):
    model_type = "llama"
    defaults = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
                "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "rope_scaling": None, "rope_parameters": None, "attention_bias": False,
                "attention_dropout": 0.0, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
                "tie_word_embeddings": False}
    required_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(positive=("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "max_position_embeddings"),
                         optional_positive=("num_key_value_heads", "head_dim"))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.check_sizes(divisible=(("hidden_size", "num_attention_heads"),))
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.check_sizes(divisible=(("num_attention_heads", "num_key_value_heads"),))
        if self.head_dim % 2:
            raise ConfigError(self.model_type, [f"head_dim={self.head_dim} must be even (rotary embeddings rotate "
                                                "pairs of dimensions)"])
        rope = dict(self.rope_parameters or getattr(self, "rope_scaling", None) or {})
        self.rope_theta = rope.get("rope_theta", self.rope_theta)
        self.rope_type = rope.get("rope_type", rope.get("type", "default"))
        if self.rope_type not in ("default", "linear"):
            raise ValueError(f"Unsupported rope type {self.rope_type!r}; mindpeft's {self.model_type} supports "
                             "'default' and 'linear'")
        self.rope_factor = float(rope.get("factor", 1.0)) if self.rope_type == "linear" else 1.0


class LlamaAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        std = config.initializer_range
        qkv_bias, o_bias = self.projection_biases(config)
        self.q_proj = Linear(config.hidden_size, self.num_heads * self.head_dim, qkv_bias, std)
        self.k_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, qkv_bias, std)
        self.v_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, qkv_bias, std)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, o_bias, std)
        self.attention_dropout = Dropout(config.attention_dropout)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    @staticmethod
    def projection_biases(config):
        """Whether the query/key/value projections and the output projection have biases."""
        return config.attention_bias, config.attention_bias

    def project(self, proj, hidden_states, heads):
        batch, seq = hidden_states.shape[0], hidden_states.shape[1]
        return split_heads(proj(hidden_states), heads, self.head_dim)

    def query_states(self, hidden_states, cos, sin):
        """Rotary-embedded queries, (batch, heads, seq, head_dim)."""
        return apply_rotary_pos_emb(self.project(self.q_proj, hidden_states, self.num_heads), cos, sin)

    def construct(self, hidden_states, cos, sin, bias=None, layer_past=None, use_cache=False):
        query = self.query_states(hidden_states, cos, sin)
        key = apply_rotary_pos_emb(self.project(self.k_proj, hidden_states, self.num_kv_heads), cos, sin)
        value = self.project(self.v_proj, hidden_states, self.num_kv_heads)
        if layer_past is not None:
            key = concat((layer_past[0], key), -2)
            value = concat((layer_past[1], value), -2)
        present = (key, value) if use_cache else None
        n_rep = self.num_heads // self.num_kv_heads
        attn = scaled_dot_product_attention(query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), bias,
                                            self.scale, self.attention_dropout)
        return self.o_proj(merge_heads(attn)), present


class LlamaMLP(nn.Cell):
    def __init__(self, config):
        super().__init__()
        std = config.initializer_range
        bias = getattr(config, "mlp_bias", False)  # a LLaMA key; Qwen2 and Mistral have no MLP biases
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias, std)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias, std)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias, std)
        self.act_fn = Activation(config.hidden_act)

    def construct(self, x):
        return self.down_proj(self.act_fn.gated(self.gate_proj(x), self.up_proj(x)))


class LlamaDecoderLayer(nn.Cell):
    attention_class = LlamaAttention

    def __init__(self, config):
        super().__init__()
        self.self_attn = self.attention_class(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def construct(self, hidden_states, cos, sin, bias=None, layer_past=None, use_cache=False):
        attn_out, present = self.self_attn(self.input_layernorm(hidden_states), cos, sin, bias, layer_past,
                                           use_cache)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, present


class LlamaPreTrainedModel(PreTrainedModel, GenerationMixin):
    config_class = LlamaConfig
    supports_static_cache = True
    base_model_prefix = "model"
    _tied_keys = ("rotary_emb.inv_freq",)


class LlamaModel(LlamaPreTrainedModel):
    decoder_layer_class = LlamaDecoderLayer

    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, config.pad_token_id,
                                      config.initializer_range)
        self.layers = nn.CellList([self.decoder_layer_class(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_factor)
        self.vocab_size = config.vocab_size
        self.sliding_window, self.windowed_layers = self.attention_windows(config)

    @staticmethod
    def attention_windows(config):
        """``(window, per-layer flags)``: the layers flagged attend only to the last ``window`` positions."""
        return None, (False,) * config.num_hidden_layers

    def get_input_embeddings(self):
        return self.embed_tokens

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, use_cache=False):
        """Rotary positions have no table: like transformers, inputs may exceed ``max_position_embeddings``."""
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_model_inputs(input_ids, inputs_embeds, attention_mask, past_len, self.vocab_size, position_ids)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        seq_len = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = ops.arange(past_len, past_len + seq_len).view(1, seq_len)
        cos, sin = self.rotary_emb(position_ids)
        bias = attention_bias(attention_mask, seq_len, past_len + seq_len, causal=True)
        window_bias = None
        if self.sliding_window is not None:
            window_bias = bias + sliding_window_bias(seq_len, past_len + seq_len, self.sliding_window)
        hidden_states = inputs_embeds
        presents = ()
        for i, layer in enumerate(self.layers):
            layer_past = None if past_key_values is None else past_key_values[i]
            layer_bias = window_bias if self.windowed_layers[i] else bias
            hidden_states, present = layer(hidden_states, cos, sin, layer_bias, layer_past, use_cache)
            if use_cache:
                presents = presents + (present,)
        hidden_states = self.norm(hidden_states)
        return with_optional({"last_hidden_state": hidden_states}, past_key_values=presents if use_cache else None)


class LlamaForCausalLM(LlamaPreTrainedModel):
    model_class = LlamaModel

    def __init__(self, config):
        super().__init__(config)
        self.model = self.model_class(config)
        self.tie_word_embeddings = config.tie_word_embeddings
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, std=config.initializer_range)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        hidden_states = out["last_hidden_state"]
        if self.tie_word_embeddings:
            logits = linear(hidden_states, self.model.embed_tokens.weight)
        else:
            logits = self.lm_head(hidden_states)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss, past_key_values=out.get("past_key_values"))
