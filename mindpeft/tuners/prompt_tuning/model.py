"""The prompt-tuning encoder: an embedding table of virtual tokens."""
import math
import os

import numpy as np
from mindspore import nn

from ...models.layers import Embedding
from ...models.modeling_utils import write_parameter
from ...utils.hub import resolve_folder
from .config import PromptTuningInit


def load_tokenizer(path):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``, a folder holding one, or a hub id whose files are in the
    local Hugging Face cache."""
    from tokenizers import Tokenizer

    file = path if os.path.isfile(path) else os.path.join(resolve_folder(path), "tokenizer.json")
    if not os.path.isfile(file):
        raise ValueError(f"No tokenizer.json at {path!r} (mindpeft loads tokenizers from local files)")
    return Tokenizer.from_file(file)


class PromptEmbedding(nn.Cell):
    """``embedding`` of shape (num_virtual_tokens * num_transformer_submodules, token_dim); TEXT init copies
    the word embeddings of the (repeated or truncated) init text."""

    def __init__(self, config, word_embeddings, encoded=False):
        super().__init__()
        total = config.num_virtual_tokens * config.num_transformer_submodules
        self.embedding = Embedding(total, config.token_dim, std=1.0)
        if config.prompt_tuning_init == PromptTuningInit.TEXT and not (config.inference_mode or encoded):
            ids = load_tokenizer(config.tokenizer_name_or_path).encode(config.prompt_tuning_init_text).ids
            if not ids:
                raise ValueError("prompt_tuning_init_text encodes to no tokens")
            ids = (ids * math.ceil(total / len(ids)))[:total]
            table = word_embeddings.weight.asnumpy() if hasattr(word_embeddings, "weight") \
                else word_embeddings.embedding_table.asnumpy()
            write_parameter(self.embedding.weight, np.ascontiguousarray(table[ids], dtype=np.float32))

    def construct(self, indices):
        return self.embedding(indices)
