"""The P-tuning prompt encoder: virtual token embeddings through an MLP or a bidirectional LSTM."""
import math

from mindspore import nn, ops

from ...models.layers import Dropout, Embedding, Linear, linear, uniform_param
from .config import PromptEncoderReparameterizationType


class LSTM(nn.Cell):
    """Batch-first (bidirectional) LSTM with PyTorch's parameter names and gate order (i, f, g, o)."""

    def __init__(self, input_size, hidden_size, num_layers=1, dropout=0.0, bidirectional=True):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.directions = ("", "_reverse") if bidirectional else ("",)
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * len(self.directions)
            for suffix in self.directions:
                setattr(self, f"weight_ih_l{layer}{suffix}", uniform_param((4 * hidden_size, in_size), bound))
                setattr(self, f"weight_hh_l{layer}{suffix}", uniform_param((4 * hidden_size, hidden_size), bound))
                setattr(self, f"bias_ih_l{layer}{suffix}", uniform_param((4 * hidden_size,), bound))
                setattr(self, f"bias_hh_l{layer}{suffix}", uniform_param((4 * hidden_size,), bound))
        self.dropout = Dropout(dropout)

    def _direction(self, x, layer, suffix):
        w_ih = getattr(self, f"weight_ih_l{layer}{suffix}")
        w_hh = getattr(self, f"weight_hh_l{layer}{suffix}")
        bias = getattr(self, f"bias_ih_l{layer}{suffix}") + getattr(self, f"bias_hh_l{layer}{suffix}")
        batch, seq_len = x.shape[0], x.shape[1]
        inputs = linear(x, w_ih, bias)
        h = ops.zeros((batch, self.hidden_size), x.dtype)
        c = ops.zeros((batch, self.hidden_size), x.dtype)
        steps = range(seq_len - 1, -1, -1) if suffix else range(seq_len)
        outputs = [None] * seq_len
        for t in steps:
            gates = inputs[:, t] + linear(h, w_hh)
            i, f, g, o = ops.split(gates, self.hidden_size, axis=-1)
            c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
            h = ops.sigmoid(o) * ops.tanh(c)
            outputs[t] = h
        return ops.stack(outputs, axis=1)

    def construct(self, x):
        for layer in range(self.num_layers):
            if layer > 0:
                x = self.dropout(x)
            x = ops.cat([self._direction(x, layer, suffix) for suffix in self.directions], axis=-1)
        return x


class PromptEncoder(nn.Cell):
    """``embedding`` of the virtual tokens followed by ``mlp_head`` (MLP) or ``lstm_head`` + ``mlp_head`` (LSTM),
    named as in HF peft. ``encoded`` (loaded adapters, inference mode) keeps only ``embedding``, holding the
    already encoded prompts that adapters store."""

    def __init__(self, config, encoded=False):
        super().__init__()
        dim, hidden = config.token_dim, config.encoder_hidden_size
        self.embedding = Embedding(config.num_virtual_tokens * config.num_transformer_submodules, dim, std=1.0)
        self.use_lstm = config.encoder_reparameterization_type == PromptEncoderReparameterizationType.LSTM
        self.encoded = encoded or config.inference_mode
        if self.encoded:
            return
        if self.use_lstm:
            self.lstm_head = LSTM(dim, hidden, config.encoder_num_layers, config.encoder_dropout)
            self.mlp_head = nn.SequentialCell([Linear(2 * hidden, 2 * hidden), nn.ReLU(), Linear(2 * hidden, dim)])
        else:
            self.mlp_head = nn.SequentialCell([Linear(dim, hidden), nn.ReLU(), Linear(hidden, hidden), nn.ReLU(),
                                               Linear(hidden, dim)])

    def construct(self, indices):
        embeds = self.embedding(indices)
        if self.encoded:
            return embeds
        if self.use_lstm:
            return self.mlp_head(self.lstm_head(embeds))
        return self.mlp_head(embeds)
