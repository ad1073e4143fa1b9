"""BLOOM as MindSpore Cells, with HF module names (``transformer.h.0.self_attention.query_key_value``...).

No position embeddings: ALiBi adds ``slope_h * position_of_key`` to the attention scores of head ``h``, positions
counted over the real (unmasked) tokens.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .configuration_utils import PretrainedConfig
from .generation import GenerationMixin
from .gpt2 import last_token_logits
from .layers import Activation, Dropout, Embedding, LayerNorm, Linear, linear
from .model_outputs import (attention_bias, causal_lm_loss, check_model_inputs, concat, merge_heads,
                            scaled_dot_product_attention, sequence_classification_loss, swap_axes, with_optional)
from .modeling_utils import PreTrainedModel


class BloomConfig(PretrainedConfig):
    model_type = "bloom"
    defaults = {"vocab_size": 250880, "hidden_size": 64, "n_layer": 2, "n_head": 8, "layer_norm_epsilon": 1e-5,
                "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
                "apply_residual_connection_post_layernorm": False, "hidden_dropout": 0.0, "attention_dropout": 0.0,
                "pretraining_tp": 1, "slow_but_exact": False, "tie_word_embeddings": True}
    attribute_map = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "n_embed": "hidden_size"}
    required_keys = ("vocab_size", "hidden_size", "n_layer", "n_head")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(positive=("vocab_size", "hidden_size", "n_layer", "n_head"),
                         divisible=(("hidden_size", "n_head"),))


def alibi_slopes(num_heads):
    """ALiBi's per-head slopes: a geometric sequence over the largest power of two of heads, then every other slope
    of the sequence for twice as many heads."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, closest + 1)]
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base ** p for p in range(1, 1 + 2 * min(closest, num_heads - closest), 2)]
    return np.array(slopes, np.float32)


class BloomAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.n_head
        self.head_dim = config.hidden_size // config.n_head
        std = config.initializer_range
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size, True, std)
        self.dense = Linear(config.hidden_size, config.hidden_size, True, std)
        self.attention_dropout = Dropout(config.attention_dropout)
        self.hidden_dropout = Dropout(config.hidden_dropout)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def construct(self, hidden_states, residual, bias, layer_past=None, use_cache=False):
        batch, seq = hidden_states.shape[0], hidden_states.shape[1]
        # the fused projection interleaves heads: (..., heads, [query, key, value], head_dim)
        fused = self.query_key_value(hidden_states).view(batch, seq, self.num_heads, 3, self.head_dim)
        query = swap_axes(fused[:, :, :, 0])
        key = swap_axes(fused[:, :, :, 1])
        value = swap_axes(fused[:, :, :, 2])
        if layer_past is not None:
            key = concat((layer_past[0], key), -2)
            value = concat((layer_past[1], value), -2)
        present = (key, value) if use_cache else None
        attn = scaled_dot_product_attention(query, key, value, bias, self.scale, self.attention_dropout)
        return residual + self.hidden_dropout(self.dense(merge_heads(attn))), present


class BloomMLP(nn.Cell):
    def __init__(self, config):
        super().__init__()
        std = config.initializer_range
        self.dense_h_to_4h = Linear(config.hidden_size, 4 * config.hidden_size, True, std)
        self.dense_4h_to_h = Linear(4 * config.hidden_size, config.hidden_size, True, std)
        self.gelu_impl = Activation("gelu_new")
        self.hidden_dropout = Dropout(config.hidden_dropout)

    def construct(self, hidden_states, residual):
        return residual + self.hidden_dropout(self.dense_4h_to_h(self.gelu_impl(self.dense_h_to_4h(hidden_states))))


class BloomBlock(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, config.layer_norm_epsilon)
        self.self_attention = BloomAttention(config)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = BloomMLP(config)
        self.residual_post_layernorm = config.apply_residual_connection_post_layernorm

    def construct(self, hidden_states, bias, layer_past=None, use_cache=False):
        normed = self.input_layernorm(hidden_states)
        residual = normed if self.residual_post_layernorm else hidden_states
        hidden_states, present = self.self_attention(normed, residual, bias, layer_past, use_cache)
        normed = self.post_attention_layernorm(hidden_states)
        residual = normed if self.residual_post_layernorm else hidden_states
        return self.mlp(normed, residual), present


class BloomPreTrainedModel(PreTrainedModel, GenerationMixin):
    config_class = BloomConfig
    supports_static_cache = True  # positions come from the mask (ALiBi) or position_ids
    base_model_prefix = "transformer"
    _tied_keys = ("lm_head.weight",)


class BloomModel(BloomPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, std=config.initializer_range)
        self.word_embeddings_layernorm = LayerNorm(config.hidden_size, config.layer_norm_epsilon)
        self.h = nn.CellList([BloomBlock(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)
        self.slopes = Tensor(alibi_slopes(config.n_head).reshape(1, config.n_head, 1, 1))
        self.vocab_size = config.vocab_size

    def get_input_embeddings(self):
        return self.word_embeddings

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, use_cache=False):
        """``position_ids`` is accepted (``generate`` passes it) and unused: ALiBi counts positions from
        ``attention_mask``, as transformers does."""
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_model_inputs(input_ids, inputs_embeds, attention_mask, past_len, self.vocab_size)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, seq_len = inputs_embeds.shape[0], inputs_embeds.shape[1]
        kv_len = past_len + seq_len
        if attention_mask is None:
            key_positions = ops.arange(kv_len).astype(ms.float32).view(1, 1, 1, kv_len)
        else:
            mask = attention_mask.astype(ms.float32)
            key_positions = ((ops.cumsum(mask, 1) - 1.0) * mask).view(batch, 1, 1, kv_len)
        bias = attention_bias(attention_mask, seq_len, kv_len, causal=True) + self.slopes * key_positions
        hidden_states = self.word_embeddings_layernorm(inputs_embeds)
        presents = ()
        for i, block in enumerate(self.h):
            layer_past = None if past_key_values is None else past_key_values[i]
            hidden_states, present = block(hidden_states, bias, layer_past, use_cache)
            if use_cache:
                presents = presents + (present,)
        hidden_states = self.ln_f(hidden_states)
        return with_optional({"last_hidden_state": hidden_states}, past_key_values=presents if use_cache else None)


class BloomForCausalLM(BloomPreTrainedModel):
    """BLOOM with a language-model head, tied to ``transformer.word_embeddings`` unless ``tie_word_embeddings`` is
    false."""

    def __init__(self, config):
        super().__init__(config)
        self.transformer = BloomModel(config)
        self.tie_word_embeddings = config.tie_word_embeddings
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, std=config.initializer_range)

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.transformer(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        hidden_states = out["last_hidden_state"]
        if self.tie_word_embeddings:
            logits = linear(hidden_states, self.transformer.word_embeddings.weight)
        else:
            logits = self.lm_head(hidden_states)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss, past_key_values=out.get("past_key_values"))


class BloomForSequenceClassification(BloomPreTrainedModel):
    """BLOOM with a ``score`` head read at each sequence's last non-padding token."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = BloomModel(config)
        self.score = Linear(config.hidden_size, config.num_labels, bias=False, std=config.initializer_range)

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.transformer(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        pooled = last_token_logits(self.score(out["last_hidden_state"]), input_ids, self.config.pad_token_id)
        loss = sequence_classification_loss(pooled, labels, self.num_labels) if labels is not None else None
        return with_optional({"logits": pooled}, loss=loss)
