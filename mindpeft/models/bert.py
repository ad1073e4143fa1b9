"""BERT and RoBERTa encoders as MindSpore Cells, with HF module names (``bert.encoder.layer.0.attention.self.query``...)."""
import math

import mindspore as ms
from mindspore import nn, ops

from .configuration_utils import PretrainedConfig
from .layers import Activation, Dropout, Embedding, LayerNorm, Linear, broadcast_like, tanh
from .model_outputs import (attention_bias, check_model_inputs, concat, cross_entropy, in_jit, merge_heads,
                            scaled_dot_product_attention, sequence_classification_loss, split_heads, token_loss,
                            with_optional)
from .modeling_utils import PreTrainedModel


class BertConfig(PretrainedConfig):
    model_type = "bert"
    defaults = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
                "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
                "classifier_dropout": None}
    required_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.check_sizes(positive=("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                   "intermediate_size", "max_position_embeddings", "type_vocab_size"),
                         divisible=(("hidden_size", "num_attention_heads"),))


class RobertaConfig(BertConfig):
    model_type = "roberta"
    defaults = {**BertConfig.defaults, "vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


class BertEmbeddings(nn.Cell):
    """Word + position + token-type embeddings. RoBERTa numbers positions from ``pad_token_id + 1``."""

    def __init__(self, config, roberta=False):
        super().__init__()
        std = config.initializer_range
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, config.pad_token_id, std)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size, std=std)
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size, std=std)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.roberta = roberta
        self.padding_idx = config.pad_token_id
        self.max_positions = config.max_position_embeddings

    def construct(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                  past_length=0):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, seq_len = inputs_embeds.shape[0], inputs_embeds.shape[1]
        if position_ids is None:
            if self.roberta and input_ids is not None:
                not_pad = (input_ids != self.padding_idx).astype(ms.int32)
                position_ids = (ops.cumsum(not_pad, 1) + past_length) * not_pad + self.padding_idx
                if not in_jit():
                    self._check_roberta_positions(position_ids, past_length)
            elif self.roberta:
                start = self.padding_idx + 1 + past_length
                position_ids = ops.arange(start, start + seq_len).view(1, seq_len)
            else:
                position_ids = ops.arange(past_length, past_length + seq_len).view(1, seq_len)
        if token_type_ids is None:
            token_type_ids = ops.zeros((batch, seq_len), ms.int32)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + broadcast_like(self.position_embeddings(position_ids), embeddings)
        return self.dropout(self.LayerNorm(embeddings))

    def _check_roberta_positions(self, position_ids, past_length):
        """PyNative: RoBERTa numbers the non-padding tokens from ``pad_token_id + 1``, so the length limit depends
        on the padding."""
        top = int(position_ids.asnumpy().max())
        if top >= self.max_positions:
            longest = self.max_positions - self.padding_idx - 1
            past = f" after {past_length} past/prefix positions" if past_length else ""
            raise ValueError(f"input_ids has {top - self.padding_idx - past_length} non-padding tokens{past} but the "
                             f"model has max_position_embeddings={self.max_positions}, numbered from pad_token_id + 1 "
                             f"= {self.padding_idx + 1}: at most {longest - past_length} tokens fit; truncate the "
                             "input")


class BertSelfAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        std = config.initializer_range
        self.query = Linear(config.hidden_size, config.hidden_size, std=std)
        self.key = Linear(config.hidden_size, config.hidden_size, std=std)
        self.value = Linear(config.hidden_size, config.hidden_size, std=std)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def construct(self, hidden_states, bias=None, layer_past=None):
        query = split_heads(self.query(hidden_states), self.num_heads, self.head_dim)
        key = split_heads(self.key(hidden_states), self.num_heads, self.head_dim)
        value = split_heads(self.value(hidden_states), self.num_heads, self.head_dim)
        if layer_past is not None:
            key = concat((layer_past[0], key), -2)
            value = concat((layer_past[1], value), -2)
        return merge_heads(scaled_dot_product_attention(query, key, value, bias, self.scale, self.dropout))


class BertSelfOutput(nn.Cell):
    def __init__(self, config, in_size):
        super().__init__()
        self.dense = Linear(in_size, config.hidden_size, std=config.initializer_range)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def construct(self, hidden_states, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class BertAttention(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config.hidden_size)

    def construct(self, hidden_states, bias=None, layer_past=None):
        return self.output(self.self(hidden_states, bias, layer_past), hidden_states)


class BertIntermediate(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size, std=config.initializer_range)
        self.intermediate_act_fn = Activation(config.hidden_act)

    def construct(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertLayer(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config.intermediate_size)

    def construct(self, hidden_states, bias=None, layer_past=None):
        attention_output = self.attention(hidden_states, bias, layer_past)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.CellList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def construct(self, hidden_states, bias=None, past_key_values=None):
        for i, layer in enumerate(self.layer):
            layer_past = None if past_key_values is None else past_key_values[i]
            hidden_states = layer(hidden_states, bias, layer_past)
        return hidden_states


class BertPooler(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size, std=config.initializer_range)

    def construct(self, hidden_states):
        return tanh(self.dense(hidden_states[:, 0]))


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    _tied_keys = ("position_ids", "cls.predictions.bias", "cls.predictions.decoder.weight")


class BertModel(BertPreTrainedModel):
    """The bare encoder; ``past_key_values`` (per layer ``(key, value)``) prepend keys, as prefix tuning needs."""

    def __init__(self, config, add_pooling_layer=True, roberta=False):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config, roberta)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.vocab_size = config.vocab_size
        self.type_vocab_size = config.type_vocab_size
        self.max_positions = config.max_position_embeddings
        self.roberta = roberta
        self.position_offset = config.pad_token_id + 1 if roberta else 0

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def construct(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                  inputs_embeds=None, past_key_values=None):
        past_length = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        # RoBERTa's positions from input_ids skip the padding: their limit is checked on the values (PyNative)
        check_model_inputs(input_ids, inputs_embeds, attention_mask, past_length, self.vocab_size, position_ids,
                           self.max_positions, self.position_offset, token_type_ids=token_type_ids,
                           type_vocab_size=self.type_vocab_size,
                           length_limit=not (self.roberta and input_ids is not None))
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length)
        kv_len = hidden_states.shape[1] + past_length
        bias = attention_bias(attention_mask, hidden_states.shape[1], kv_len, causal=False)
        hidden_states = self.encoder(hidden_states, bias, past_key_values)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        return with_optional({"last_hidden_state": hidden_states}, pooler_output=pooled)


class _EncoderWithHead(BertPreTrainedModel):
    """Shared construction of the task heads: the backbone under ``base_model_prefix``."""

    roberta_positions = False

    def __init__(self, config, add_pooling_layer):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, BertModel(config, add_pooling_layer, roberta=self.roberta_positions))

    def get_input_embeddings(self):
        return getattr(self, self.base_model_prefix).embeddings.word_embeddings

    def _classifier_dropout(self):
        p = self.config.classifier_dropout
        return Dropout(self.config.hidden_dropout_prob if p is None else p)

    def encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, past_key_values):
        """The backbone's outputs (``bert`` or ``roberta``)."""
        return getattr(self, self.base_model_prefix)(input_ids, attention_mask, token_type_ids, position_ids,
                                                     inputs_embeds, past_key_values)


class BertForSequenceClassification(_EncoderWithHead):
    def __init__(self, config):
        super().__init__(config, add_pooling_layer=True)
        self.dropout = self._classifier_dropout()
        self.classifier = Linear(config.hidden_size, config.num_labels, std=config.initializer_range)

    def construct(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                  inputs_embeds=None, labels=None, past_key_values=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, past_key_values)
        logits = self.classifier(self.dropout(out["pooler_output"]))
        loss = sequence_classification_loss(logits, labels, self.num_labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss)


class BertForTokenClassification(_EncoderWithHead):
    def __init__(self, config):
        super().__init__(config, add_pooling_layer=False)
        self.dropout = self._classifier_dropout()
        self.classifier = Linear(config.hidden_size, config.num_labels, std=config.initializer_range)

    def construct(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                  inputs_embeds=None, labels=None, past_key_values=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, past_key_values)
        logits = self.classifier(self.dropout(out["last_hidden_state"]))
        loss = token_loss(logits, labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss)


class BertForQuestionAnswering(_EncoderWithHead):
    def __init__(self, config):
        super().__init__(config, add_pooling_layer=False)
        self.qa_outputs = Linear(config.hidden_size, config.num_labels, std=config.initializer_range)

    def construct(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                  inputs_embeds=None, start_positions=None, end_positions=None, past_key_values=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, past_key_values)
        logits = self.qa_outputs(out["last_hidden_state"])
        start_logits = logits[:, :, 0]
        end_logits = logits[:, :, 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            seq_len = start_logits.shape[1]
            start = ops.clamp(start_positions.astype(ms.int32), 0, seq_len)
            end = ops.clamp(end_positions.astype(ms.int32), 0, seq_len)
            loss = (cross_entropy(start_logits, start, ignore_index=seq_len)
                    + cross_entropy(end_logits, end, ignore_index=seq_len)) / 2
        return with_optional({"start_logits": start_logits, "end_logits": end_logits}, loss=loss)


class RobertaPreTrainedModel(BertPreTrainedModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    _tied_keys = ("position_ids", "lm_head.")


class RobertaModel(BertModel, RobertaPreTrainedModel):
    """RoBERTa's bare encoder: a :class:`BertModel` with RoBERTa position numbering."""

    def __init__(self, config, add_pooling_layer=True):
        BertModel.__init__(self, config, add_pooling_layer, roberta=True)


class RobertaClassificationHead(nn.Cell):
    def __init__(self, config):
        super().__init__()
        p = config.classifier_dropout
        self.dense = Linear(config.hidden_size, config.hidden_size, std=config.initializer_range)
        self.dropout = Dropout(config.hidden_dropout_prob if p is None else p)
        self.out_proj = Linear(config.hidden_size, config.num_labels, std=config.initializer_range)

    def construct(self, features):
        x = self.dropout(features[:, 0, :])
        x = self.dropout(tanh(self.dense(x)))
        return self.out_proj(x)


class RobertaForSequenceClassification(_EncoderWithHead, RobertaPreTrainedModel):
    roberta_positions = True

    def __init__(self, config):
        super().__init__(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)

    def construct(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                  inputs_embeds=None, labels=None, past_key_values=None):
        out = self.roberta(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, past_key_values)
        logits = self.classifier(out["last_hidden_state"])
        loss = sequence_classification_loss(logits, labels, self.num_labels) if labels is not None else None
        return with_optional({"logits": logits}, loss=loss)


class RobertaForTokenClassification(BertForTokenClassification, RobertaPreTrainedModel):
    roberta_positions = True
    base_model_prefix = "roberta"


class RobertaForQuestionAnswering(BertForQuestionAnswering, RobertaPreTrainedModel):
    roberta_positions = True
    base_model_prefix = "roberta"
