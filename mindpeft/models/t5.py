"""T5 / mT5 encoder-decoder as MindSpore Cells, with HF module names (``encoder.block.0.layer.0.SelfAttention.q``...)."""
import functools
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops.primitive import constexpr

from .configuration_utils import ConfigError, PretrainedConfig
from .generation import GenerationMixin
from .layers import Activation, Dropout, Embedding, Linear, RMSNorm, linear
from .model_outputs import (attention_bias, check_attention_mask, check_model_inputs, concat, merge_heads,
                            scaled_dot_product_attention, split_heads, token_loss, with_optional)
from .modeling_utils import PreTrainedModel


class T5Config(PretrainedConfig):
    model_type = "t5"
    defaults = {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
                "num_decoder_layers": None, "num_heads": 8, "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
                "initializer_factor": 1.0, "feed_forward_proj": "relu", "is_encoder_decoder": True,
                "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "tie_word_embeddings": True}
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}
    required_keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(positive=("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                                   "relative_attention_num_buckets", "relative_attention_max_distance"),
                         optional_positive=("num_decoder_layers",))
        buckets, distance = self.relative_attention_num_buckets, self.relative_attention_max_distance
        if buckets < 4:
            raise ConfigError(self.model_type, [f"relative_attention_num_buckets={buckets} must be at least 4"])
        if distance <= buckets // 2:
            raise ConfigError(self.model_type, [f"relative_attention_max_distance={distance} must exceed "
                                                f"relative_attention_num_buckets // 2 = {buckets // 2}"])
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        proj = self.feed_forward_proj.split("-")
        if len(proj) > 2 or (len(proj) == 2 and proj[0] != "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not 'ACT' or 'gated-ACT'")
        self.is_gated_act = len(proj) == 2
        self.dense_act_fn = "gelu_new" if self.feed_forward_proj == "gated-gelu" else proj[-1]
        # transformers 5 always ties and records the T5 v1.0 output scaling separately; older configs
        # (and mT5) mark both with tie_word_embeddings
        if getattr(self, "scale_decoder_outputs", None) is None:
            self.scale_decoder_outputs = self.tie_word_embeddings


class MT5Config(T5Config):
    model_type = "mt5"
    defaults = {**T5Config.defaults, "vocab_size": 250112, "d_ff": 1024, "num_heads": 6,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "scale_decoder_outputs": False}


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """T5's bucketing of (key - query) offsets (numpy int array in, int64 array out): exact for small offsets,
    logarithmic up to ``max_distance``.

    Computed with numpy's float32 log, the same float32 arithmetic as transformers'
    ``T5Attention._relative_position_bucket``: MindSpore's CPU ``ops.log`` is a few ulp low (log(2) = 0.693147 on
    8+ elements), which truncates one bucket low wherever the expression is a whole number (offsets 16, 32, 64
    with 32 buckets / distance 128).
    """
    relative_position = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(np.int64) * num_buckets
        relative_position = np.abs(relative_position)
    else:
        relative_position = -np.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    safe = np.maximum(relative_position, 1).astype(np.float32)
    large = max_exact + (np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
                         * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, relative_position, large)


@functools.lru_cache(maxsize=32)  # one per (query, key) length; 1 MB for 512 x 512
def _bucket_table(q_len, kv_len, bidirectional, num_buckets, max_distance):
    """(q_len, kv_len) int32 Tensor of buckets, queries being the last ``q_len`` of ``kv_len`` positions."""
    context = np.arange(kv_len - q_len, kv_len).reshape(q_len, 1)
    memory = np.arange(kv_len).reshape(1, kv_len)
    buckets = relative_position_bucket(memory - context, bidirectional, num_buckets, max_distance)
    return Tensor(buckets.astype(np.int32))


@constexpr(check=False)
def bucket_table(q_len, kv_len, bidirectional, num_buckets, max_distance):
    """The bucket table as a constant: built in numpy once per shape, in PyNative and under ``mindspore.jit``."""
    return _bucket_table(q_len, kv_len, bidirectional, num_buckets, max_distance)


class T5Attention(nn.Cell):
    def __init__(self, config, has_relative_attention_bias, is_decoder):
        super().__init__()
        self.is_decoder = is_decoder
        self.num_heads = config.num_heads
        self.d_kv = config.d_kv
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        inner = config.num_heads * config.d_kv
        std = config.initializer_factor * (config.d_model * config.d_kv) ** -0.5
        self.q = Linear(config.d_model, inner, bias=False, std=std)
        self.k = Linear(config.d_model, inner, bias=False, std=config.initializer_factor * config.d_model ** -0.5)
        self.v = Linear(config.d_model, inner, bias=False, std=config.initializer_factor * config.d_model ** -0.5)
        self.o = Linear(inner, config.d_model, bias=False, std=config.initializer_factor * inner ** -0.5)
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            self.relative_attention_bias = Embedding(self.num_buckets, config.num_heads,
                                                     std=config.initializer_factor * config.d_model ** -0.5)
        self.dropout = Dropout(config.dropout_rate)

    def compute_bias(self, q_len, kv_len):
        """(1, heads, q_len, kv_len) relative position bias; queries are the last ``q_len`` positions."""
        buckets = bucket_table(q_len, kv_len, not self.is_decoder, self.num_buckets, self.max_distance)
        values = self.relative_attention_bias(buckets)
        return values.transpose(2, 0, 1).view(1, self.num_heads, q_len, kv_len)

    def construct(self, hidden_states, key_value_states=None, position_bias=None, mask_bias=None,
                  layer_past=None, use_cache=False, prefix=None):
        """``layer_past``: cached (key, value); ``prefix``: prefix-tuning (key, value) put before the
        self-attention keys when there is no cache yet."""
        query = split_heads(self.q(hidden_states), self.num_heads, self.d_kv)
        if key_value_states is not None and layer_past is not None:
            key, value = layer_past
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key = split_heads(self.k(source), self.num_heads, self.d_kv)
            value = split_heads(self.v(source), self.num_heads, self.d_kv)
            before = layer_past if layer_past is not None else prefix
            if before is not None:
                key = concat((before[0], key), -2)
                value = concat((before[1], value), -2)
        if position_bias is None:
            q_len, kv_len = query.shape[2], key.shape[2]
            if self.has_relative_attention_bias:
                position_bias = self.compute_bias(q_len, kv_len)
            else:
                position_bias = ops.zeros((1, self.num_heads, q_len, kv_len), ms.float32)
            if mask_bias is not None:
                position_bias = position_bias + mask_bias
        out = self.o(merge_heads(scaled_dot_product_attention(query, key, value, position_bias, 1.0, self.dropout)))
        present = (key, value) if use_cache else None
        return out, position_bias, present


class T5LayerSelfAttention(nn.Cell):
    def __init__(self, config, has_relative_attention_bias, is_decoder):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, is_decoder)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)

    def construct(self, hidden_states, position_bias=None, mask_bias=None, layer_past=None, use_cache=False,
                  prefix=None):
        out, position_bias, present = self.SelfAttention(self.layer_norm(hidden_states), None, position_bias,
                                                         mask_bias, layer_past, use_cache, prefix)
        return hidden_states + self.dropout(out), position_bias, present


class T5LayerCrossAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.EncDecAttention = T5Attention(config, False, True)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)

    def construct(self, hidden_states, encoder_hidden_states, position_bias=None, mask_bias=None, layer_past=None,
                  use_cache=False):
        out, position_bias, present = self.EncDecAttention(self.layer_norm(hidden_states), encoder_hidden_states,
                                                           position_bias, mask_bias, layer_past, use_cache)
        return hidden_states + self.dropout(out), position_bias, present


class T5DenseActDense(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.wi = Linear(config.d_model, config.d_ff, bias=False, std=config.initializer_factor * config.d_model ** -0.5)
        self.wo = Linear(config.d_ff, config.d_model, bias=False, std=config.initializer_factor * config.d_ff ** -0.5)
        self.dropout = Dropout(config.dropout_rate)
        self.act = Activation(config.dense_act_fn)

    def construct(self, x):
        return self.wo(self.dropout(self.act(self.wi(x))))


class T5DenseGatedActDense(nn.Cell):
    def __init__(self, config):
        super().__init__()
        std_in = config.initializer_factor * config.d_model ** -0.5
        self.wi_0 = Linear(config.d_model, config.d_ff, bias=False, std=std_in)
        self.wi_1 = Linear(config.d_model, config.d_ff, bias=False, std=std_in)
        self.wo = Linear(config.d_ff, config.d_model, bias=False, std=config.initializer_factor * config.d_ff ** -0.5)
        self.dropout = Dropout(config.dropout_rate)
        self.act = Activation(config.dense_act_fn)

    def construct(self, x):
        return self.wo(self.dropout(self.act.gated(self.wi_0(x), self.wi_1(x))))


class T5LayerFF(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated_act else T5DenseActDense(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)

    def construct(self, hidden_states):
        return hidden_states + self.dropout(self.DenseReluDense(self.layer_norm(hidden_states)))


class T5Block(nn.Cell):
    def __init__(self, config, has_relative_attention_bias, is_decoder):
        super().__init__()
        self.is_decoder = is_decoder
        layers = [T5LayerSelfAttention(config, has_relative_attention_bias, is_decoder)]
        if is_decoder:
            layers.append(T5LayerCrossAttention(config))
        layers.append(T5LayerFF(config))
        self.layer = nn.CellList(layers)

    def construct(self, hidden_states, position_bias=None, mask_bias=None, encoder_hidden_states=None,
                  encoder_position_bias=None, encoder_mask_bias=None, layer_past=None, use_cache=False,
                  layer_prefix=None):
        self_past = None if layer_past is None else (layer_past[0], layer_past[1])
        self_prefix = None if layer_prefix is None else (layer_prefix[0], layer_prefix[1])
        hidden_states, position_bias, self_present = self.layer[0](hidden_states, position_bias, mask_bias,
                                                                   self_past, use_cache, self_prefix)
        present = self_present
        if self.is_decoder:
            cross_past = None if layer_past is None else (layer_past[2], layer_past[3])
            hidden_states, encoder_position_bias, cross_present = self.layer[1](
                hidden_states, encoder_hidden_states, encoder_position_bias, encoder_mask_bias, cross_past,
                use_cache)
            if use_cache:
                present = self_present + cross_present
        hidden_states = self.layer[-1](hidden_states)
        return hidden_states, position_bias, encoder_position_bias, present


class T5Stack(nn.Cell):
    def __init__(self, config, embed_tokens, is_decoder):
        super().__init__()
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens
        n = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.CellList([T5Block(config, i == 0, is_decoder) for i in range(n)])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)

    def construct(self, input_ids=None, attention_mask=None, inputs_embeds=None, encoder_hidden_states=None,
                  encoder_attention_mask=None, past_key_values=None, use_cache=False, prefix_key_values=None):
        """``prefix_key_values`` (decoder, prefix tuning): per layer a (key, value, ...) tuple whose first two
        entries go before the self-attention keys. Cross-attention gets no prefix, as in HF peft, which empties
        the cross-attention cache of its prefixes."""
        past_len = 0
        if past_key_values is not None:
            past_len = past_key_values[0][0].shape[2]
        elif prefix_key_values is not None:
            past_len = prefix_key_values[0][0].shape[2]
        check_model_inputs(input_ids, inputs_embeds, attention_mask, past_len, self.embed_tokens.num_embeddings,
                           prefix="decoder_" if self.is_decoder else "")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        q_len = inputs_embeds.shape[1]
        if self.is_decoder and encoder_hidden_states is not None:
            check_attention_mask(encoder_attention_mask, encoder_hidden_states.shape[0],
                                 encoder_hidden_states.shape[1], "attention_mask", "the encoder output")
        kv_len = q_len + past_len
        mask_bias = attention_bias(attention_mask, q_len, kv_len, causal=self.is_decoder)
        encoder_mask_bias = None
        if self.is_decoder and encoder_attention_mask is not None:
            encoder_mask_bias = attention_bias(encoder_attention_mask, q_len, encoder_attention_mask.shape[1], False)
        hidden_states = self.dropout(inputs_embeds)
        position_bias = None
        encoder_position_bias = None
        presents = ()
        for i, block in enumerate(self.block):
            layer_past = None if past_key_values is None else past_key_values[i]
            layer_prefix = None if prefix_key_values is None or past_key_values is not None else prefix_key_values[i]
            hidden_states, position_bias, encoder_position_bias, present = block(
                hidden_states, position_bias, mask_bias, encoder_hidden_states, encoder_position_bias,
                encoder_mask_bias, layer_past, use_cache, layer_prefix)
            if use_cache:
                presents = presents + (present,)
        hidden_states = self.dropout(self.final_layer_norm(hidden_states))
        return with_optional({"last_hidden_state": hidden_states}, past_key_values=presents if use_cache else None)


class T5PreTrainedModel(PreTrainedModel, GenerationMixin):
    config_class = T5Config
    supports_static_cache = True
    base_model_prefix = "transformer"
    _tied_keys = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    _keep_in_fp32_modules = ("wo",)  # as transformers: T5's feed-forward output overflows float16


def shift_right(labels, decoder_start_token_id, pad_token_id):
    """Decoder inputs from labels: prepend the start token, drop the last, replace -100 with the pad id."""
    start = ops.full((labels.shape[0], 1), decoder_start_token_id, dtype=labels.dtype)
    shifted = ops.cat([start, labels[:, :-1]], axis=1)
    return ops.select(shifted == -100, ops.full_like(shifted, pad_token_id), shifted)


class T5ForConditionalGeneration(T5PreTrainedModel):
    """T5/mT5 with an LM head: tied to ``shared`` when ``tie_word_embeddings``, decoder output scaled by
    ``d_model**-0.5`` when ``scale_decoder_outputs`` (T5 v1.0)."""

    def __init__(self, config):
        super().__init__(config)
        self.model_dim = config.d_model
        self.shared = Embedding(config.vocab_size, config.d_model, std=config.initializer_factor)
        self.encoder = T5Stack(config, self.shared, is_decoder=False)
        self.decoder = T5Stack(config, self.shared, is_decoder=True)
        self.tie_word_embeddings = config.tie_word_embeddings
        self.output_scale = self.model_dim ** -0.5 if config.scale_decoder_outputs else 1.0
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, std=config.initializer_factor)

    def get_input_embeddings(self):
        return self.shared

    def get_encoder(self):
        return self.encoder

    def construct(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                  encoder_outputs=None, past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None,
                  labels=None, use_cache=False, prefix_key_values=None):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask, inputs_embeds)["last_hidden_state"]
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if labels is None:
                raise ValueError("T5 needs decoder_input_ids, decoder_inputs_embeds or labels (from which the decoder "
                                 "inputs are made)")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        dec = self.decoder(decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds, encoder_outputs,
                           attention_mask, past_key_values, use_cache, prefix_key_values)
        sequence_output = dec["last_hidden_state"]
        if self.output_scale != 1.0:
            sequence_output = sequence_output * self.output_scale
        if self.tie_word_embeddings:
            logits = linear(sequence_output, self.shared.weight)
        else:
            logits = self.lm_head(sequence_output)
        loss = token_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss, past_key_values=dec.get("past_key_values"),
                             encoder_last_hidden_state=encoder_outputs)


class MT5ForConditionalGeneration(T5ForConditionalGeneration):
    config_class = MT5Config
