"""The trainable-tokens layer: an embedding (or a linear layer tied to one) whose chosen rows are replaced by
trained values, ``trainable_tokens_delta`` (HF peft's name; it holds the new rows, not a difference)."""
import warnings

import numpy as np
from mindspore import Parameter, Tensor, mint, nn, ops

from ...models.layers import Embedding as EmbeddingLayer, Linear as LinearLayer, linear
from ...models.modeling_utils import numpy_dtype, to_numpy, write_parameter
from ...utils.other import row_mask
from ..tuners_utils import BaseTunerLayer, ParameterDict, base_weight

EMBEDDING_TYPES = (EmbeddingLayer, nn.Embedding, mint.nn.Embedding)
LINEAR_TYPES = (LinearLayer, nn.Dense, mint.nn.Linear)


class TrainableTokensLayer(nn.Cell, BaseTunerLayer):
    """Runs ``base_layer`` with the rows ``token_indices[adapter]`` of its weight replaced by
    ``trainable_tokens_delta[adapter]``, for every active adapter (their indices must not overlap).

    A layer made with ``tied_adapter`` (an LM head sharing the embedding's weight) shares that layer's rows and
    indices and changes nothing on its own. ``weight`` is the weight as the forward pass uses it, so a model that
    reads ``embedding.weight`` for its LM head follows the trained rows too.
    """

    adapter_layer_names = ("trainable_tokens_delta",)
    other_param_names = ("token_indices", "trainable_tokens_original", "_index_tensors")

    def __init__(self, base_layer, adapter_name, token_indices=None, init_weights=True, tied_adapter=None):
        super().__init__()
        if not isinstance(base_layer, EMBEDDING_TYPES + LINEAR_TYPES):
            raise ValueError(f"TrainableTokensLayer wraps an unknown layer type ({type(base_layer).__name__}), maybe "
                             "you are targeting the wrong layer? It supports embedding layers and linear layers tied "
                             "to them.")
        if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
            raise ValueError("Trainable tokens cannot wrap a mindspore.nn.Dense that has an activation")
        self._init_tuner_layer(base_layer)
        self._is_embedding = isinstance(base_layer, EMBEDDING_TYPES)
        rows, columns = base_weight(base_layer).shape
        if self._is_embedding:  # models read these (T5: embed_tokens.num_embeddings)
            self.num_embeddings, self.embedding_dim = rows, columns
        self.in_features, self.out_features = (rows, columns) if self._is_embedding else (columns, rows)
        self._tied_adapter = [tied_adapter] if tied_adapter is not None else []  # a list: not a child Cell
        if tied_adapter is None:
            self.trainable_tokens_delta = ParameterDict()
            self.trainable_tokens_original = {}  # adapter -> the replaced rows (numpy), put back by unmerge
            self.token_indices = {}  # adapter -> list of row indices
            self._index_tensors = {}  # adapter -> (k, 1) int32 Tensor, read by the compiled forward
        else:
            self.trainable_tokens_delta = tied_adapter.trainable_tokens_delta
            self.trainable_tokens_original = tied_adapter.trainable_tokens_original
            self.token_indices = tied_adapter.token_indices
            self._index_tensors = tied_adapter._index_tensors
        # Set by TrainableTokensModel on the input embedding's layer: its module name and the names of the modules
        # tied to it (saved under those names too, as HF peft does).
        self.layer_key, self.tied_head_keys = None, ()
        self.update_layer(adapter_name, token_indices, init_weights)

    @property
    def tied_adapter(self):
        """The embedding's token layer this layer follows, or ``None``."""
        return self._tied_adapter[0] if self._tied_adapter else None

    def update_layer(self, adapter_name, token_indices, init_weights=True):
        """Add ``adapter_name`` training the rows ``token_indices`` (a tied layer follows its embedding instead)."""
        if self.tied_adapter is None:
            weight = base_weight(self.get_base_layer())
            rows = weight.shape[0]
            bad = [i for i in token_indices if i >= rows]
            if bad:
                raise ValueError(f"token_indices {bad} are out of range for a weight with {rows} rows "
                                 f"(shape {tuple(weight.shape)})")
            originals = to_numpy(weight)[token_indices]
            values = originals if init_weights else np.random.standard_normal(originals.shape)
            dtype = numpy_dtype(weight.dtype)
            self.token_indices[adapter_name] = list(token_indices)
            self._index_tensors[adapter_name] = Tensor(np.asarray(token_indices, np.int32).reshape(-1, 1))
            self.trainable_tokens_original[adapter_name] = originals.copy()
            self.trainable_tokens_delta[adapter_name] = Parameter(
                Tensor(np.ascontiguousarray(values, dtype=dtype), dtype=weight.dtype))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def _check_overlapping_tokens(self, adapter_names):
        """HF peft's rule: adapters used together (merged ones included) must train disjoint token indices."""
        seen = set()
        for name in dict.fromkeys(list(self.merged_adapters) + list(adapter_names)):
            indices = set(self.token_indices[name])
            if seen & indices:
                raise ValueError(f"Token indices of adapter {name} are already defined and would result in undefined "
                                 "merging behavior. Only disjunct token indices are currently supported.")
            seen |= indices

    def set_adapter(self, adapter_names):
        names = (adapter_names,) if isinstance(adapter_names, str) else tuple(adapter_names)
        self._check_overlapping_tokens([n for n in names if n in self.token_indices])
        super().set_adapter(names)

    def delete_adapter(self, adapter_name):
        """Remove ``adapter_name`` (a tied layer only forgets it: its embedding owns the rows)."""
        if self.tied_adapter is None:
            super().delete_adapter(adapter_name)
            return
        if adapter_name in self.merged_adapters:
            self.merged_adapters.remove(adapter_name)
        others = [n for n in self.adapter_names() if n != adapter_name]
        self.set_adapter([n for n in self.active_adapters if n != adapter_name] or others[:1])

    def merge(self, safe_merge=False, adapter_names=None):
        """Write the adapters' rows into the base weight (``safe_merge``: refuse non-finite values)."""
        names = self.check_adapters_to_merge(adapter_names)
        if not names:
            return
        self._check_overlapping_tokens(names)
        weight = base_weight(self.get_base_layer())
        merged = to_numpy(weight).copy()
        for name in names:
            merged[self.token_indices[name]] = to_numpy(self.trainable_tokens_delta[name])
            if safe_merge and not np.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
        write_parameter(weight, merged)
        self.merged_adapters.extend(names)

    def unmerge(self):
        """Put the original rows back."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        weight = base_weight(self.get_base_layer())
        restored = to_numpy(weight).copy()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            restored[self.token_indices[name]] = self.trainable_tokens_original[name]
        write_parameter(weight, restored)

    def merged_weight(self, adapter_names):
        """The base weight with the rows of ``adapter_names`` replaced (a Tensor, not a Parameter)."""
        weight = base_weight(self.base_layer)
        for name in adapter_names:
            rows = getattr(self.trainable_tokens_delta, name).astype(weight.dtype)
            weight = ops.tensor_scatter_update(weight, self._index_tensors[name], rows)
        return weight

    @property
    def weight(self):
        if self.disable_adapters or self.merged_adapters or not self._active_in_layer:
            return base_weight(self.base_layer)
        return self.merged_weight(self._active_in_layer)

    _mixed_rows, _mixed_adapters = None, ()  # set by LoraModel.mixed_adapter_batch

    def mixed_batch_adapters(self):
        return list(self.token_indices)

    def _check_mixed_batch(self, adapter_names):
        if self.merged_adapters:
            raise ValueError("Cannot pass `adapter_names` when there are merged adapters, please call "
                             "`unmerge_adapter` first.")

    def _forward_with(self, x, weight):
        return ops.gather(weight, x, 0) if self._is_embedding else linear(x, weight, self.base_layer.bias)

    def _mixed_batch_forward(self, x):
        """Each row of a mixed adapter batch with its adapter's token rows (the base weight's for the others)."""
        result = self.base_layer(x)
        rows = self._mixed_rows.rows[: result.shape[0]]
        for index, name in self._mixed_adapters:
            mask = row_mask(rows, index, result)
            result = result * (1 - mask) + self._forward_with(x, self.merged_weight((name,))) * mask
        return result

    def construct(self, x):
        if self.disable_adapters or self.merged_adapters:
            return self.base_layer(x)
        if self._mixed_rows is not None:
            return self._mixed_batch_forward(x)
        if not self._active_in_layer:
            return self.base_layer(x)
        return self._forward_with(x, self.merged_weight(self._active_in_layer))


class TrainableTokensWrapper(nn.Cell):
    """LoRA's ``trainable_token_indices``: the token layer sits at ``<embedding>.token_adapter``, as in HF peft,
    so its checkpoint key reads ``<embedding>.token_adapter.trainable_tokens_delta``."""

    def __init__(self, token_adapter):
        super().__init__()
        self.token_adapter = token_adapter

    @property
    def weight(self):
        return self.token_adapter.weight

    def active_module(self):
        """The wrapped layer (after ``unload`` replaced the token layer: the original embedding)."""
        return self.token_adapter

    def construct(self, x):
        return self.token_adapter(x)
