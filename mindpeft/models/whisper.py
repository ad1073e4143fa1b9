"""Whisper (speech encoder + text decoder) as MindSpore Cells, with HF module names
(``model.encoder.layers.0.self_attn.q_proj``...), and greedy/sampling ``generate`` with a key/value cache."""
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops.primitive import constexpr

from .configuration_utils import ConfigError, PretrainedConfig
from .generation import GenerationMixin, _as_numpy
from .layers import (Activation, Dropout, Embedding, LayerNorm, Linear, broadcast_like, linear,
                     uniform_param)
from .model_outputs import (attention_bias, check_model_inputs, concat, merge_heads, scaled_dot_product_attention,
                            split_heads, swap_axes, token_loss, with_optional)
from .modeling_utils import PreTrainedModel


class WhisperConfig(PretrainedConfig):
    model_type = "whisper"
    defaults = {"vocab_size": 51865, "num_mel_bins": 80, "encoder_layers": 4, "encoder_attention_heads": 6,
                "decoder_layers": 4, "decoder_attention_heads": 6, "decoder_ffn_dim": 1536, "encoder_ffn_dim": 1536,
                "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "decoder_start_token_id": 50257,
                "use_cache": True, "is_encoder_decoder": True, "activation_function": "gelu", "d_model": 384,
                "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "init_std": 0.02,
                "scale_embedding": False, "max_source_positions": 1500, "max_target_positions": 448,
                "pad_token_id": 50256, "bos_token_id": 50256, "eos_token_id": 50256, "suppress_tokens": None,
                "begin_suppress_tokens": [220, 50256], "apply_spec_augment": False, "tie_word_embeddings": True}
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "encoder_attention_heads",
                     "num_hidden_layers": "encoder_layers"}
    required_keys = ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(positive=("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers",
                                   "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
                                   "decoder_ffn_dim", "max_source_positions", "max_target_positions"),
                         divisible=(("d_model", "encoder_attention_heads"), ("d_model", "decoder_attention_heads")))
        problems = [f"{key}={getattr(self, key)} must be 0 (layer drop is not supported)"
                    for key in ("encoder_layerdrop", "decoder_layerdrop") if getattr(self, key)]
        if self.d_model % 2:
            problems.append(f"d_model={self.d_model} must be even (sinusoidal encoder positions)")
        if problems:
            raise ConfigError(self.model_type, problems)


def sinusoids(length, channels, max_timescale=10000):
    """Whisper's sinusoidal position table (length, channels): sines then cosines."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length).reshape(-1, 1) * inv_timescales.reshape(1, -1)
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """Decoder inputs from labels: prepend the start token, drop the last, replace -100 with the pad id."""
    start = ops.full((labels.shape[0], 1), decoder_start_token_id, dtype=labels.dtype)
    shifted = ops.cat([start, labels[:, :-1]], axis=1)
    return ops.select(shifted == -100, ops.full_like(shifted, pad_token_id), shifted)


class Conv1d(nn.Cell):
    """1-D convolution with ``torch.nn.Conv1d``'s parameters: ``weight`` (out, in, kernel) and ``bias``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        bound = 1.0 / math.sqrt(in_channels * kernel_size)
        self.weight = uniform_param((out_channels, in_channels, kernel_size), bound, "weight")
        self.bias = uniform_param((out_channels,), bound, "bias")

    def construct(self, x):
        return ops.conv1d(x, self.weight, self.bias, stride=self.stride, pad_mode="pad", padding=self.padding)

    def extend_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class WhisperAttention(nn.Cell):
    """Multi-head attention (``k_proj`` has no bias); cross attention when given ``key_value_states``."""

    def __init__(self, embed_dim, num_heads, dropout):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.k_proj = Linear(embed_dim, embed_dim, bias=False)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)
        self.dropout = Dropout(dropout)

    def construct(self, hidden_states, key_value_states=None, bias=None, layer_past=None, use_cache=False):
        """``layer_past``: cached (key, value); cross attention reuses it as is, self attention appends to it."""
        query = split_heads(self.q_proj(hidden_states), self.num_heads, self.head_dim)
        if key_value_states is not None and layer_past is not None:
            key, value = layer_past
        else:
            source = hidden_states if key_value_states is None else key_value_states
            key = split_heads(self.k_proj(source), self.num_heads, self.head_dim)
            value = split_heads(self.v_proj(source), self.num_heads, self.head_dim)
            if layer_past is not None:
                key = concat((layer_past[0], key), -2)
                value = concat((layer_past[1], value), -2)
        present = (key, value) if use_cache else None
        attn = scaled_dot_product_attention(query, key, value, bias, self.scale, self.dropout)
        return self.out_proj(merge_heads(attn)), present


def _feed_forward(layer, hidden_states):
    """The pre-norm ``fc1`` -> activation -> ``fc2`` branch of an encoder or decoder layer."""
    hidden_states = layer.activation_dropout(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden_states))))
    return layer.dropout(layer.fc2(hidden_states))


class WhisperEncoderLayer(nn.Cell):
    def __init__(self, config):
        super().__init__()
        dim = config.d_model
        self.self_attn = WhisperAttention(dim, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = LayerNorm(dim)
        self.activation_fn = Activation(config.activation_function)
        self.fc1 = Linear(dim, config.encoder_ffn_dim)
        self.fc2 = Linear(config.encoder_ffn_dim, dim)
        self.final_layer_norm = LayerNorm(dim)
        self.dropout = Dropout(config.dropout)
        self.activation_dropout = Dropout(config.activation_dropout)

    def construct(self, hidden_states):
        attn = self.self_attn(self.self_attn_layer_norm(hidden_states))[0]
        hidden_states = hidden_states + self.dropout(attn)
        return hidden_states + _feed_forward(self, hidden_states)


class WhisperDecoderLayer(nn.Cell):
    def __init__(self, config):
        super().__init__()
        dim = config.d_model
        self.self_attn = WhisperAttention(dim, config.decoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = LayerNorm(dim)
        self.encoder_attn = WhisperAttention(dim, config.decoder_attention_heads, config.attention_dropout)
        self.encoder_attn_layer_norm = LayerNorm(dim)
        self.activation_fn = Activation(config.activation_function)
        self.fc1 = Linear(dim, config.decoder_ffn_dim)
        self.fc2 = Linear(config.decoder_ffn_dim, dim)
        self.final_layer_norm = LayerNorm(dim)
        self.dropout = Dropout(config.dropout)
        self.activation_dropout = Dropout(config.activation_dropout)

    def construct(self, hidden_states, bias, encoder_hidden_states, layer_past=None, use_cache=False):
        self_past = None if layer_past is None else (layer_past[0], layer_past[1])
        cross_past = None if layer_past is None else (layer_past[2], layer_past[3])
        attn, self_present = self.self_attn(self.self_attn_layer_norm(hidden_states), None, bias, self_past,
                                            use_cache)
        hidden_states = hidden_states + self.dropout(attn)
        attn, cross_present = self.encoder_attn(self.encoder_attn_layer_norm(hidden_states), encoder_hidden_states,
                                                None, cross_past, use_cache)
        hidden_states = hidden_states + self.dropout(attn)
        hidden_states = hidden_states + _feed_forward(self, hidden_states)
        return hidden_states, (self_present + cross_present) if use_cache else None


@constexpr(check=False)
def _check_input_features(shape, num_mel_bins, expected_length):
    if shape is None:
        raise ValueError("You have to specify input_features (or encoder_outputs)")
    if len(shape) != 3 or shape[1] != num_mel_bins:
        raise ValueError(f"input_features must be (batch_size, num_mel_bins={num_mel_bins}, {expected_length}), got "
                         f"shape {tuple(shape)}")
    if shape[2] != expected_length:
        raise ValueError(f"Whisper expects the mel input features to be of length {expected_length}, but found "
                         f"{shape[2]}. Make sure to pad the input mel features to {expected_length}.")


@constexpr(check=False)
def _reject_spec_augment(training, apply_spec_augment):
    if training and apply_spec_augment:
        raise ValueError("apply_spec_augment=True (SpecAugment masking of the features in training) is not supported "
                         "by mindpeft's Whisper; set config.apply_spec_augment = False")


class WhisperPreTrainedModel(PreTrainedModel, GenerationMixin):
    config_class = WhisperConfig
    base_model_prefix = "model"
    main_input_name = "input_features"
    _tied_keys = ("proj_out.weight",)
    _head_modules = ("proj_out",)


class WhisperEncoder(nn.Cell):
    """Two convolutions (the second halves the frames), fixed sinusoidal positions, transformer layers."""

    def __init__(self, config):
        super().__init__()
        dim = config.d_model
        self.num_mel_bins = config.num_mel_bins
        self.max_source_positions = config.max_source_positions
        self.conv1 = Conv1d(config.num_mel_bins, dim, 3, padding=1)
        self.conv2 = Conv1d(dim, dim, 3, stride=2, padding=1)
        self.conv_activation = Activation("gelu")
        self.embed_positions = Embedding(config.max_source_positions, dim)
        self.embed_positions.weight.set_data(Tensor(sinusoids(config.max_source_positions, dim)))
        self.embed_positions.weight.requires_grad = False  # frozen in transformers too
        self.layers = nn.CellList([WhisperEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layer_norm = LayerNorm(dim)
        self.dropout = Dropout(config.dropout)

    def construct(self, input_features=None):
        """``input_features``: (batch, num_mel_bins, 2 * max_source_positions) log-mel frames (3000 = 30 s)."""
        _check_input_features(None if input_features is None else tuple(input_features.shape), self.num_mel_bins,
                              2 * self.max_source_positions)
        hidden_states = self.conv_activation(self.conv1(input_features.astype(self.conv1.weight.dtype)))
        hidden_states = swap_axes(self.conv_activation(self.conv2(hidden_states)))
        hidden_states = self.dropout(hidden_states + broadcast_like(self.embed_positions.weight, hidden_states))
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return {"last_hidden_state": self.layer_norm(hidden_states)}


class WhisperDecoder(nn.Cell):
    """Token + learned position embeddings, causal self attention and cross attention to the encoder output."""

    def __init__(self, config):
        super().__init__()
        dim = config.d_model
        self.vocab_size = config.vocab_size
        self.max_target_positions = config.max_target_positions
        self.embed_tokens = Embedding(config.vocab_size, dim, config.pad_token_id, config.init_std)
        self.embed_positions = Embedding(config.max_target_positions, dim, std=config.init_std)
        self.layers = nn.CellList([WhisperDecoderLayer(config) for _ in range(config.decoder_layers)])
        self.layer_norm = LayerNorm(dim)
        self.dropout = Dropout(config.dropout)

    def construct(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, past_key_values=None,
                  inputs_embeds=None, position_ids=None, use_cache=False):
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_model_inputs(input_ids, inputs_embeds, attention_mask, past_len, self.vocab_size, position_ids,
                           self.max_target_positions, limit_name="max_target_positions", prefix="decoder_")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        seq_len = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = ops.arange(past_len, past_len + seq_len).view(1, seq_len)
        positions = broadcast_like(self.embed_positions(position_ids), inputs_embeds)
        hidden_states = self.dropout(inputs_embeds + positions)
        bias = attention_bias(attention_mask, seq_len, past_len + seq_len, causal=True)
        presents = ()
        for i, layer in enumerate(self.layers):
            layer_past = None if past_key_values is None else past_key_values[i]
            hidden_states, present = layer(hidden_states, bias, encoder_hidden_states, layer_past, use_cache)
            if use_cache:
                presents = presents + (present,)
        return with_optional({"last_hidden_state": self.layer_norm(hidden_states)},
                             past_key_values=presents if use_cache else None)


class WhisperModel(WhisperPreTrainedModel):
    """Encoder + decoder; ``attention_mask`` is accepted and ignored, as in transformers (Whisper does not mask its
    30 s features)."""

    def __init__(self, config):
        super().__init__(config)
        self.encoder = WhisperEncoder(config)
        self.decoder = WhisperDecoder(config)

    def get_input_embeddings(self):
        return self.decoder.embed_tokens

    def get_encoder(self):
        return self.encoder

    def construct(self, input_features=None, attention_mask=None, decoder_input_ids=None,
                  decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
                  decoder_inputs_embeds=None, decoder_position_ids=None, use_cache=False):
        """``encoder_outputs``: the encoder's last hidden state, or a tuple/output whose first entry it is."""
        _reject_spec_augment(self.training, self.config.apply_spec_augment)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_features)["last_hidden_state"]
        elif not isinstance(encoder_outputs, Tensor):
            encoder_outputs = encoder_outputs[0]
        dec = self.decoder(decoder_input_ids, decoder_attention_mask, encoder_outputs, past_key_values,
                           decoder_inputs_embeds, decoder_position_ids, use_cache)
        return with_optional({"last_hidden_state": dec["last_hidden_state"]},
                             past_key_values=dec.get("past_key_values"), encoder_last_hidden_state=encoder_outputs)


@constexpr(check=False)
def _check_label_length(length, max_target_positions):
    if length > max_target_positions:
        raise ValueError(f"Labels' sequence length {length} cannot exceed the maximum allowed length of "
                         f"{max_target_positions} tokens.")


class WhisperForConditionalGeneration(WhisperPreTrainedModel):
    """Whisper with the LM head ``proj_out``, tied to the decoder's token embeddings (``tie_word_embeddings``).
    ``labels`` give the token cross entropy; decoder inputs default to the labels shifted right."""

    def __init__(self, config):
        super().__init__(config)
        self.model = WhisperModel(config)
        self.tie_word_embeddings = config.tie_word_embeddings
        if not config.tie_word_embeddings:
            self.proj_out = Linear(config.d_model, config.vocab_size, bias=False, std=config.init_std)

    def get_input_embeddings(self):
        return self.model.decoder.embed_tokens

    def get_encoder(self):
        return self.model.encoder

    def construct(self, input_features=None, attention_mask=None, decoder_input_ids=None,
                  decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
                  decoder_inputs_embeds=None, decoder_position_ids=None, labels=None, use_cache=False):
        if labels is not None:
            _check_label_length(labels.shape[1], self.config.max_target_positions)
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                       self.config.decoder_start_token_id)
        out = self.model(input_features, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                         past_key_values, decoder_inputs_embeds, decoder_position_ids, use_cache)
        hidden_states = out["last_hidden_state"]
        if self.tie_word_embeddings:
            logits = linear(hidden_states, self.model.decoder.embed_tokens.weight)
        else:
            logits = self.proj_out(hidden_states)
        loss = token_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss, past_key_values=out.get("past_key_values"),
                             encoder_last_hidden_state=out["encoder_last_hidden_state"])

    def generate(self, input_features=None, decoder_input_ids=None, max_new_tokens=None, do_sample=False,
                 temperature=1.0, top_k=0, top_p=1.0, suppress_tokens=None, begin_suppress_tokens=None,
                 eos_token_id=None, pad_token_id=None, use_cache=True, seed=None, encoder_outputs=None):
        """Short-form transcription (one 30 s window) as transformers' ``WhisperForConditionalGeneration.generate``
        without timestamps, language detection or temperature fallback.

        Decoding starts from ``decoder_input_ids`` (default: ``decoder_start_token_id``; pass
        ``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` ids to fix language and task). ``suppress_tokens``
        are never generated and ``begin_suppress_tokens`` not as the first token (defaults: the config's). Greedy
        unless ``do_sample``. Returns the generated ids (batch, length) without the start ids or the end-of-text
        token, rows padded with ``pad_token_id``, as transformers does.
        """
        if input_features is None and encoder_outputs is None:
            raise ValueError("generate needs input_features (or encoder_outputs)")
        config = self.config
        eos = config.eos_token_id if eos_token_id is None else eos_token_id
        pad = config.pad_token_id if pad_token_id is None else pad_token_id
        pad = eos if pad is None else pad
        was_training = self.training
        self.set_train(False)
        try:
            if encoder_outputs is None:
                encoder_outputs = self.model.encoder(input_features)["last_hidden_state"]
            elif not isinstance(encoder_outputs, Tensor):
                encoder_outputs = encoder_outputs[0]
            batch = encoder_outputs.shape[0]
            start = _as_numpy(decoder_input_ids)
            if start is None:
                start = np.full((batch, 1), config.decoder_start_token_id, np.int64)
            if max_new_tokens is None:
                max_new_tokens = config.max_target_positions - start.shape[1]
            if max_new_tokens < 1 or max_new_tokens + start.shape[1] > config.max_target_positions:
                raise ValueError(f"max_new_tokens={max_new_tokens} with {start.shape[1]} start token(s) must be >= 1 "
                                 f"and fit the max_target_positions={config.max_target_positions} of the decoder")
            never = self._vocab_ids(config.suppress_tokens if suppress_tokens is None else suppress_tokens)
            not_first = self._vocab_ids(config.begin_suppress_tokens if begin_suppress_tokens is None
                                        else begin_suppress_tokens)
            state = {"dec": start.astype(np.int64), "past": None, "steps": 0}

            def step(last):
                if last is not None:
                    state["dec"] = np.concatenate([state["dec"], last[:, None]], 1)
                fed = state["dec"][:, -1:] if (use_cache and last is not None) else state["dec"]
                out = self(encoder_outputs=encoder_outputs, decoder_input_ids=Tensor(fed, ms.int32),
                           past_key_values=state["past"], use_cache=use_cache)
                if use_cache:
                    state["past"] = out["past_key_values"]
                logits = out["logits"][:, -1, :].asnumpy()
                logits[:, never] = -np.inf
                if state["steps"] == 0:
                    logits[:, not_first] = -np.inf
                state["steps"] += 1
                return logits

            options = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                           rng=np.random.default_rng(seed))
            new = self._decode_loop(step, batch, max_new_tokens, eos, pad, options)
        finally:
            self.set_train(was_training)
        return Tensor(_strip_end_of_text(new, eos, pad))

    def _vocab_ids(self, ids):
        """The ids of ``ids`` inside the vocabulary (others cannot be generated anyway)."""
        return [int(i) for i in (ids or ()) if 0 <= int(i) < self.config.vocab_size]


def _strip_end_of_text(tokens, eos, pad):
    """Each row up to its first ``eos`` (excluded), padded with ``pad`` to the longest row."""
    rows = []
    for row in tokens:
        ends = np.nonzero(row == eos)[0] if eos is not None else []
        rows.append(row[: ends[0]] if len(ends) else row)
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), pad, np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
