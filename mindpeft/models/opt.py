"""OPT as MindSpore Cells, with HF module names (``model.decoder.layers.0.self_attn.q_proj``...).

Learned positions (table offset by 2) counted over the real tokens of ``attention_mask``; embeddings of width
``word_embed_proj_dim`` projected in and out (``project_in``/``project_out``) when it differs from ``hidden_size``;
pre-LayerNorm layers, or post-LayerNorm ones when ``do_layer_norm_before`` is false (OPT-350m). ``layerdrop``
(skipping random layers in training) is not applied.
"""
import math

import mindspore as ms
from mindspore import nn, ops

from .configuration_utils import ConfigError, PretrainedConfig
from .generation import GenerationMixin
from .gpt2 import last_token_logits
from .layers import Activation, Dropout, Embedding, LayerNorm, Linear, broadcast_like, linear
from .model_outputs import (attention_bias, causal_lm_loss, check_model_inputs, concat, merge_heads,
                            scaled_dot_product_attention, sequence_classification_loss, split_heads, with_optional)
from .modeling_utils import PreTrainedModel

POSITION_OFFSET = 2  # OPT's position table starts with two unused rows (fairseq's padding convention)


class OPTConfig(PretrainedConfig):
    model_type = "opt"
    defaults = {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
                "max_position_embeddings": 2048, "do_layer_norm_before": True, "_remove_final_layer_norm": False,
                "word_embed_proj_dim": None, "dropout": 0.1, "attention_dropout": 0.0, "num_attention_heads": 12,
                "activation_function": "relu", "layerdrop": 0.0, "init_std": 0.02, "pad_token_id": 1,
                "bos_token_id": 2, "eos_token_id": 2, "enable_bias": True, "layer_norm_elementwise_affine": True,
                "tie_word_embeddings": True}
    required_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.word_embed_proj_dim is None:
            self.word_embed_proj_dim = self.hidden_size
        self.check_sizes(positive=("vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
                                   "max_position_embeddings", "word_embed_proj_dim"),
                         divisible=(("hidden_size", "num_attention_heads"),))
        if not self.layer_norm_elementwise_affine:
            raise ConfigError(self.model_type, ["layer_norm_elementwise_affine=False (LayerNorms without weights) is "
                                                "not supported by mindpeft's OPT"])

    def to_dict(self):
        out = super().to_dict()
        out["_remove_final_layer_norm"] = self._remove_final_layer_norm
        return out


class OPTAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        size, bias, std = config.hidden_size, config.enable_bias, config.init_std
        self.k_proj = Linear(size, size, bias, std)
        self.v_proj = Linear(size, size, bias, std)
        self.q_proj = Linear(size, size, bias, std)
        self.out_proj = Linear(size, size, bias, std)
        self.attention_dropout = Dropout(config.attention_dropout)

    def construct(self, hidden_states, bias, layer_past=None, use_cache=False):
        query = split_heads(self.q_proj(hidden_states) * self.scale, self.num_heads, self.head_dim)
        key = split_heads(self.k_proj(hidden_states), self.num_heads, self.head_dim)
        value = split_heads(self.v_proj(hidden_states), self.num_heads, self.head_dim)
        if layer_past is not None:
            key = concat((layer_past[0], key), -2)
            value = concat((layer_past[1], value), -2)
        present = (key, value) if use_cache else None
        attn = scaled_dot_product_attention(query, key, value, bias, 1.0, self.attention_dropout)
        return self.out_proj(merge_heads(attn)), present


class OPTDecoderLayer(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.self_attn = OPTAttention(config)
        self.do_layer_norm_before = config.do_layer_norm_before
        self.self_attn_layer_norm = LayerNorm(config.hidden_size)
        self.fc1 = Linear(config.hidden_size, config.ffn_dim, config.enable_bias, config.init_std)
        self.fc2 = Linear(config.ffn_dim, config.hidden_size, config.enable_bias, config.init_std)
        self.final_layer_norm = LayerNorm(config.hidden_size)
        self.activation_fn = Activation(config.activation_function)
        self.dropout = Dropout(config.dropout)

    def construct(self, hidden_states, bias, layer_past=None, use_cache=False):
        normed = self.self_attn_layer_norm(hidden_states) if self.do_layer_norm_before else hidden_states
        attn_out, present = self.self_attn(normed, bias, layer_past, use_cache)
        hidden_states = hidden_states + self.dropout(attn_out)
        if not self.do_layer_norm_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        normed = self.final_layer_norm(hidden_states) if self.do_layer_norm_before else hidden_states
        hidden_states = hidden_states + self.dropout(self.fc2(self.activation_fn(self.fc1(normed))))
        if not self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, present


class OPTDecoder(nn.Cell):
    def __init__(self, config):
        super().__init__()
        std, embed_dim = config.init_std, config.word_embed_proj_dim
        self.embed_tokens = Embedding(config.vocab_size, embed_dim, config.pad_token_id, std)
        self.embed_positions = Embedding(config.max_position_embeddings + POSITION_OFFSET, config.hidden_size,
                                         std=std)
        projected = embed_dim != config.hidden_size
        self.project_out = Linear(config.hidden_size, embed_dim, False, std) if projected else None
        self.project_in = Linear(embed_dim, config.hidden_size, False, std) if projected else None
        has_final_norm = config.do_layer_norm_before and not config._remove_final_layer_norm
        self.final_layer_norm = LayerNorm(config.hidden_size) if has_final_norm else None
        self.layers = nn.CellList([OPTDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.vocab_size = config.vocab_size
        self.max_positions = config.max_position_embeddings

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, use_cache=False):
        """Positions default to the count of real tokens before each one (``attention_mask``'s cumulative sum)."""
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_model_inputs(input_ids, inputs_embeds, attention_mask, past_len, self.vocab_size, position_ids,
                           self.max_positions)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        seq_len = inputs_embeds.shape[1]
        if position_ids is None:
            if attention_mask is None:
                position_ids = ops.arange(past_len, past_len + seq_len).view(1, seq_len)
            else:
                mask = attention_mask.astype(ms.int32)
                position_ids = (ops.cumsum(mask, 1) * mask - 1)[:, past_len:]
        if self.project_in is not None:
            inputs_embeds = self.project_in(inputs_embeds)
        positions = self.embed_positions(position_ids + POSITION_OFFSET)
        hidden_states = inputs_embeds + broadcast_like(positions, inputs_embeds)
        bias = attention_bias(attention_mask, seq_len, past_len + seq_len, causal=True)
        presents = ()
        for i, layer in enumerate(self.layers):
            layer_past = None if past_key_values is None else past_key_values[i]
            hidden_states, present = layer(hidden_states, bias, layer_past, use_cache)
            if use_cache:
                presents = presents + (present,)
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        return with_optional({"last_hidden_state": hidden_states}, past_key_values=presents if use_cache else None)


class OPTPreTrainedModel(PreTrainedModel, GenerationMixin):
    config_class = OPTConfig
    supports_static_cache = True
    base_model_prefix = "model"
    _tied_keys = ("lm_head.weight",)


class OPTModel(OPTPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.decoder = OPTDecoder(config)

    def get_input_embeddings(self):
        return self.decoder.embed_tokens

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, use_cache=False):
        return self.decoder(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)


class OPTForCausalLM(OPTPreTrainedModel):
    """OPT with a language-model head, tied to ``model.decoder.embed_tokens`` unless ``tie_word_embeddings`` is
    false."""

    def __init__(self, config):
        super().__init__(config)
        self.model = OPTModel(config)
        self.tie_word_embeddings = config.tie_word_embeddings
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.word_embed_proj_dim, config.vocab_size, bias=False, std=config.init_std)

    def get_input_embeddings(self):
        return self.model.decoder.embed_tokens

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        hidden_states = out["last_hidden_state"]
        if self.tie_word_embeddings:
            logits = linear(hidden_states, self.model.decoder.embed_tokens.weight)
        else:
            logits = self.lm_head(hidden_states)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss, past_key_values=out.get("past_key_values"))


class OPTForSequenceClassification(OPTPreTrainedModel):
    """OPT with a ``score`` head read at each sequence's last non-padding token."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = OPTModel(config)
        self.score = Linear(config.word_embed_proj_dim, config.num_labels, bias=False, std=config.init_std)

    def get_input_embeddings(self):
        return self.model.decoder.embed_tokens

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        pooled = last_token_logits(self.score(out["last_hidden_state"]), input_ids, self.config.pad_token_id)
        loss = sequence_classification_loss(pooled, labels, self.num_labels) if labels is not None else None
        return with_optional({"logits": pooled}, loss=loss)
