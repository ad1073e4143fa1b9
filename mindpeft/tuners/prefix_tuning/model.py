"""The prefix encoder: past key/values for every layer, optionally through a two-layer MLP."""
from mindspore import nn

from ...models.layers import Embedding, Linear


class PrefixEncoder(nn.Cell):
    """Maps virtual token ids (batch, num_virtual_tokens) to (batch, num_virtual_tokens, num_layers * 2 * token_dim).

    With ``prefix_projection`` (training) the table has ``token_dim`` columns and ``transform`` is
    Linear-Tanh-Linear, as in HF peft; saved adapters hold the projected table, which ``encoded`` encoders load.
    """

    def __init__(self, config, encoded=False):
        super().__init__()
        self.prefix_projection = config.prefix_projection and not (config.inference_mode or encoded)
        out_dim = config.num_layers * 2 * config.token_dim
        if self.prefix_projection:
            self.embedding = Embedding(config.num_virtual_tokens, config.token_dim, std=1.0)
            self.transform = nn.SequentialCell([Linear(config.token_dim, config.encoder_hidden_size), nn.Tanh(),
                                                Linear(config.encoder_hidden_size, out_dim)])
        else:
            self.embedding = Embedding(config.num_virtual_tokens, out_dim, std=1.0)

    def construct(self, prefix):
        if self.prefix_projection:
            return self.transform(self.embedding(prefix))
        return self.embedding(prefix)
