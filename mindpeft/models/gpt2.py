"""GPT-2 as MindSpore Cells, with HF module names (``transformer.h.0.attn.c_attn``...)."""
import math

import mindspore as ms
from mindspore import nn, ops

from .configuration_utils import PretrainedConfig
from .generation import GenerationMixin
from .layers import Activation, Conv1D, Dropout, Embedding, LayerNorm, Linear, broadcast_like, linear
from .model_outputs import (attention_bias, causal_lm_loss, check_model_inputs, concat, merge_heads,
                            scaled_dot_product_attention, sequence_classification_loss, split_heads, with_optional)
from .modeling_utils import PreTrainedModel


class GPT2Config(PretrainedConfig):
    model_type = "gpt2"
    defaults = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
                "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1,
                "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "bos_token_id": 50256, "eos_token_id": 50256}
    attribute_map = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                     "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}
    required_keys = ("vocab_size", "n_embd", "n_layer", "n_head")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(positive=("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"),
                         optional_positive=("n_inner",), divisible=(("n_embd", "n_head"),))


class GPT2Attention(nn.Cell):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.embed_dim = config.n_embd
        self.num_heads = config.n_head
        self.head_dim = self.embed_dim // self.num_heads
        scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale = scale / float(layer_idx + 1)
        self.scale = scale
        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim, config.initializer_range)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim, config.initializer_range)
        self.attn_dropout = Dropout(config.attn_pdrop)
        self.resid_dropout = Dropout(config.resid_pdrop)

    def construct(self, hidden_states, attention_mask=None, layer_past=None, use_cache=False):
        qkv = self.c_attn(hidden_states)
        query, key, value = ops.split(qkv, self.embed_dim, axis=2)
        query = split_heads(query, self.num_heads, self.head_dim)
        key = split_heads(key, self.num_heads, self.head_dim)
        value = split_heads(value, self.num_heads, self.head_dim)
        if layer_past is not None:
            key = concat((layer_past[0], key), -2)
            value = concat((layer_past[1], value), -2)
        bias = attention_bias(attention_mask, query.shape[2], key.shape[2], causal=True)
        attn = scaled_dot_product_attention(query, key, value, bias, self.scale, self.attn_dropout)
        out = self.resid_dropout(self.c_proj(merge_heads(attn)))
        present = (key, value) if use_cache else None
        return out, present


class GPT2MLP(nn.Cell):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = Conv1D(inner, config.n_embd, config.initializer_range)
        self.c_proj = Conv1D(config.n_embd, inner, config.initializer_range)
        self.act = Activation(config.activation_function)
        self.dropout = Dropout(config.resid_pdrop)

    def construct(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Cell):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def construct(self, hidden_states, attention_mask=None, layer_past=None, use_cache=False):
        attn_out, present = self.attn(self.ln_1(hidden_states), attention_mask, layer_past, use_cache)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, present


class GPT2PreTrainedModel(PreTrainedModel, GenerationMixin):
    config_class = GPT2Config
    supports_static_cache = True
    base_model_prefix = "transformer"
    _tied_keys = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")


class GPT2Model(GPT2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = Embedding(config.vocab_size, config.n_embd, std=config.initializer_range)
        self.wpe = Embedding(config.n_positions, config.n_embd, std=config.initializer_range)
        self.drop = Dropout(config.embd_pdrop)
        self.h = nn.CellList([GPT2Block(config, i) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.vocab_size = config.vocab_size
        self.n_positions = config.n_positions

    def get_input_embeddings(self):
        return self.wte

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, use_cache=False):
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_model_inputs(input_ids, inputs_embeds, attention_mask, past_len, self.vocab_size, position_ids,
                           self.n_positions, limit_name="n_positions")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        seq_len = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = ops.arange(past_len, past_len + seq_len).view(1, seq_len)
        hidden_states = self.drop(inputs_embeds + broadcast_like(self.wpe(position_ids), inputs_embeds))
        presents = ()
        for i, block in enumerate(self.h):
            layer_past = None if past_key_values is None else past_key_values[i]
            hidden_states, present = block(hidden_states, attention_mask, layer_past, use_cache)
            if use_cache:
                presents = presents + (present,)
        hidden_states = self.ln_f(hidden_states)
        return with_optional({"last_hidden_state": hidden_states}, past_key_values=presents if use_cache else None)


class GPT2LMHeadModel(GPT2PreTrainedModel):
    """GPT-2 with the language-model head tied to ``transformer.wte``."""

    def __init__(self, config):
        super().__init__(config)
        self.transformer = GPT2Model(config)

    def get_input_embeddings(self):
        return self.transformer.wte

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.transformer(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        logits = linear(out["last_hidden_state"], self.transformer.wte.weight)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss, past_key_values=out.get("past_key_values"))


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 with a ``score`` head read at each sequence's last non-padding token."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.score = Linear(config.n_embd, config.num_labels, bias=False, std=config.initializer_range)

    def get_input_embeddings(self):
        return self.transformer.wte

    def construct(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                  inputs_embeds=None, labels=None, use_cache=False):
        out = self.transformer(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        logits = self.score(out["last_hidden_state"])
        pooled = last_token_logits(logits, input_ids, self.config.pad_token_id)
        loss = sequence_classification_loss(pooled, labels, self.num_labels) if labels is not None else None
        return with_optional({"logits": pooled}, loss=loss)


def last_token_logits(logits, input_ids, pad_token_id):
    """Logits at each row's last non-padding token (the last position when there is no pad token)."""
    seq_len = logits.shape[1]
    if input_ids is None or pad_token_id is None:
        return logits[:, -1, :]
    positions = ops.arange(seq_len).view(1, seq_len)
    last = ops.argmax(positions * (input_ids != pad_token_id).astype(ms.int64), dim=-1)
    return ops.gather(logits, last.astype(ms.int32), 1, batch_dims=1)
