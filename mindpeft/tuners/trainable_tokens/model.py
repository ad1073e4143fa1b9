"""``TrainableTokensModel`` and LoRA's ``trainable_token_indices``: token layers on embeddings, with the layers tied
to the input embedding (an LM head) following it, as in HF peft."""
from ...models.modeling_utils import sync_parameter_names
from ...utils.other import get_submodule
from ..tuners_utils import BaseTuner, base_weight, named_references, replace_everywhere
from .config import check_token_indices
from .layer import EMBEDDING_TYPES, LINEAR_TYPES, TrainableTokensLayer, TrainableTokensWrapper


def input_embedding(model):
    """``model.get_input_embeddings()``, or ``None`` for a model without one."""
    try:
        return model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        return None


def input_embedding_key(model):
    """The module name of the input embedding (HF's ``_get_input_embeddings_name``), or ``None``."""
    embedding = input_embedding(model)
    return next((key for key, cell in model.cells_and_names() if key and cell is embedding), None)


def _ties_word_embeddings(model):
    """``config.tie_word_embeddings`` of a transformers-style model; ``None`` for a model without a config."""
    config = getattr(model, "config", None)
    return None if config is None else getattr(config, "tie_word_embeddings", False) is True


def tied_cells(model, weight, exclude):
    """``(key, parent, name, cell)`` of the linear/embedding Cells other than ``exclude`` whose weight *is* the
    Parameter ``weight`` (LM heads sharing the input embedding's matrix)."""
    return [(key, parent, name, cell) for key, parent, name, cell in named_references(model)
            if isinstance(cell, EMBEDDING_TYPES + LINEAR_TYPES) and cell is not exclude
            and base_weight(cell) is weight]


def implicit_tied_heads(model, embedding):
    """Module names that HF's twin of ``model`` has tied to the input embedding but ``model`` has not as a Cell
    of its own: mindpeft's LM classes compute logits from ``embedding.weight`` (HF: ``lm_head``) and T5 reuses
    ``shared`` as ``encoder/decoder.embed_tokens``. Their keys go into the adapter file as HF peft writes them."""
    from ...models.auto import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    lm_classes = tuple(AutoModelForCausalLM.mapping.values()) + tuple(AutoModelForSeq2SeqLM.mapping.values())
    if not _ties_word_embeddings(model) or type(model) not in lm_classes:
        return []
    names = ["lm_head"] + [key[: -len(".weight")] for key in getattr(model, "_tied_keys", ())
                           if key.endswith(".weight") and not key.startswith(".")]
    heads = []
    for name in dict.fromkeys(names):
        try:
            cell = get_submodule(model, name)
        except AttributeError:
            cell = None
        if cell is None or cell is embedding:
            heads.append(name)
    return heads


class TrainableTokensModel(BaseTuner):
    """Creates a trainable-tokens model from a base model (see :class:`TrainableTokensConfig`)."""

    prefix = "trainable_tokens_"

    def _prepare_adapter_config(self, config, model_config):
        if config.target_modules is None:
            config.target_modules = input_embedding_key(self.model) or "embed_tokens"
        return config

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if isinstance(target, TrainableTokensLayer):
            target.update_layer(adapter_name, config.token_indices, config.init_weights)
            return
        layer = TrainableTokensLayer(target, adapter_name, config.token_indices, config.init_weights)
        layer.layer_key = current_key
        replace_everywhere(self.model, {id(target): layer})

    def _mark_only_adapters_as_trainable(self, model):
        for name, param in model.parameters_and_names():
            if self.prefix not in name and ".modules_to_save." not in name:
                param.requires_grad = False

    def inject_adapter(self, model, adapter_name):
        super().inject_adapter(model, adapter_name)
        embedding = input_embedding(model)
        if not isinstance(embedding, TrainableTokensLayer) or _ties_word_embeddings(model) is False:
            return
        base = embedding.get_base_layer()
        heads = []
        for key, parent, name, cell in tied_cells(model, base_weight(base), exclude=base):
            if isinstance(parent, TrainableTokensLayer):
                if parent.tied_adapter is embedding:
                    continue  # tied by an earlier adapter: it shares the embedding's adapters
                cell, key = parent, key[: -len(".base_layer")]  # targeted on its own: tie it instead (HF peft)
            tied = TrainableTokensLayer(cell.get_base_layer() if isinstance(cell, TrainableTokensLayer) else cell,
                                        adapter_name, tied_adapter=embedding)
            replace_everywhere(model, {id(cell): tied})
            heads.append(key)
        embedding.tied_head_keys = tuple(dict.fromkeys(
            [*embedding.tied_head_keys, *heads, *implicit_tied_heads(model, embedding)]))
        sync_parameter_names(model)
        self.set_adapter(self.active_adapters)


def add_trainable_tokens(model, config, adapter_name, active_adapters):
    """LoRA's ``trainable_token_indices`` (HF peft's semantics): wrap the input embedding (a list of indices) or
    each named module (``{name: indices}``) in a :class:`TrainableTokensWrapper`. When the model ties its word
    embeddings, linear heads sharing the input embedding's weight follow its token layer (and are not saved
    again), unless they are listed with other indices."""
    indices = config.trainable_token_indices
    targets = dict(indices) if isinstance(indices, dict) else {input_embedding_key(model) or "embed_tokens": indices}
    for name, token_indices in targets.items():
        check_token_indices(f"trainable_token_indices[{name!r}]" if isinstance(indices, dict)
                            else "trainable_token_indices", token_indices)
        if name in (getattr(config, "modules_to_save", None) or []):
            raise ValueError("The embedding layer is already marked to be trained fully, either specify "
                             f'`modules_to_save=[..., "{name}", ...]` or `trainable_tokens={{\'{name}\': x}}` '
                             "but not both.")
    embedding = input_embedding(model)
    if isinstance(embedding, TrainableTokensWrapper):
        embedding = embedding.token_adapter.get_base_layer()
    heads = [] if embedding is None or _ties_word_embeddings(model) is False else [
        cell for _, parent, _, cell in tied_cells(model, base_weight(embedding), exclude=embedding)
        if not isinstance(parent, TrainableTokensLayer)]
    embedding_key = input_embedding_key(model)
    embedding_indices = next((v for k, v in targets.items() if embedding_key and _names(embedding_key, k)), None)
    tie = embedding_indices is not None
    for name, token_indices in targets.items():
        matches = list({id(cell): cell for key, _, _, cell in named_references(model) if _names(key, name)}.values())
        if not matches:
            raise ValueError(f"Target modules {[name]} not found in the base model. Please check the target modules "
                             "and try again.")
        for cell in matches:
            is_head = any(cell is head for head in heads)
            if is_head and tie and list(token_indices) == list(embedding_indices):
                continue  # tied to the embedding below
            if is_head:
                tie = False  # other indices than the embedding's: HF peft then ties nothing
            if isinstance(cell, TrainableTokensWrapper):
                cell.token_adapter.update_layer(adapter_name, token_indices)
            elif not isinstance(cell, TrainableTokensLayer):
                wrapper = TrainableTokensWrapper(TrainableTokensLayer(cell, adapter_name, token_indices))
                replace_everywhere(model, {id(cell): wrapper})
    embedding_wrapper = input_embedding(model)
    if tie and isinstance(embedding_wrapper, TrainableTokensWrapper):
        for cell in heads:
            tied = TrainableTokensLayer(cell, adapter_name, tied_adapter=embedding_wrapper.token_adapter)
            replace_everywhere(model, {id(cell): TrainableTokensWrapper(tied)})
    for _, cell in model.cells_and_names():
        if isinstance(cell, TrainableTokensLayer):
            cell.set_adapter(active_adapters)
    sync_parameter_names(model)


def _names(key, name):
    """Whether the module at ``key`` is the one ``name`` refers to (the name itself or a suffix after a dot)."""
    return key == name or key.endswith(f".{name}")
