"""Adapter state dicts with HF peft's key names (adapter name removed), and their loading."""
import os
import warnings
from contextlib import contextmanager

import numpy as np
from safetensors.numpy import save_file

from ..models.modeling_utils import assign, load_safetensors, to_numpy
from ..models.peft_integration import adapter_checkpoint_keys
from .constants import EMBEDDING_LAYER_NAMES, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .other import ModulesToSaveWrapper, replace_child

PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"


def remove_adapter_name(key, adapter_name):
    """``a.lora_A.default.weight`` -> ``a.lora_A.weight``; ``a.lora_embedding_A.default`` -> ``a.lora_embedding_A``."""
    if key.endswith(f".{adapter_name}"):
        return key[: -len(adapter_name) - 1]
    return key.replace(f".{adapter_name}.", ".", 1) if f".{adapter_name}." in key else key


def _adapter_parameter_keys(model, adapter_name):
    """``{model key: checkpoint key}`` of the parameters that belong to ``adapter_name``: those named by each Cell's
    ``adapter_parameter_names`` (tuner layers, and model-wide adapter state such as VeRA's shared projections) and
    the ``modules_to_save`` copies."""
    params = dict(model.parameters_and_names())
    mapping = {}
    for cell_name, cell in model.cells_and_names():
        if hasattr(cell, "adapter_parameter_names"):
            for relative in cell.adapter_parameter_names(adapter_name):
                prefix = f"{cell_name}.{relative}"
                for key in params:
                    if key == prefix or key.startswith(prefix + "."):
                        mapping[key] = remove_adapter_name(key, adapter_name)
        elif isinstance(cell, ModulesToSaveWrapper) and adapter_name in cell.adapter_names():
            prefix = f"{cell_name}.modules_to_save.{adapter_name}."
            for key in params:
                if key.startswith(prefix):
                    mapping[key] = f"{cell_name}.{key[len(prefix):]}"
    return mapping


def _bias_keys(model, config):
    """Model keys of the biases the adapter's ``bias`` option trains (saved with the adapter)."""
    from ..tuners.tuners_utils import BaseTunerLayer

    bias = getattr(config, "bias", "none")
    if bias == "all":
        return [n for n, _ in model.parameters_and_names() if n.endswith(".bias") and ".modules_to_save." not in n
                and ".original_module." not in n]
    if bias.endswith("_only"):  # lora_only, vera_only, ...: the biases of the adapted layers
        names = dict(model.parameters_and_names())
        return [f"{cell_name}.base_layer.bias" for cell_name, cell in model.cells_and_names()
                if isinstance(cell, BaseTunerLayer) and f"{cell_name}.base_layer.bias" in names]
    return []


def _embedding_base_keys(model, config):
    """Model keys of the base weights of targeted embedding layers (saved with the adapter, as HF peft does)."""
    targets = getattr(config, "target_modules", None)
    if not isinstance(targets, (set, list)) or not any(e in targets for e in EMBEDDING_LAYER_NAMES):
        return []
    return [n for n, _ in model.parameters_and_names() if any(f".{e}.base_layer." in n for e in EMBEDDING_LAYER_NAMES)]


def _tied_head_aliases(model, adapter_name):
    """``{checkpoint key: model key}`` of the rows HF peft saves once more under each module tied to a
    trainable-tokens embedding (``lm_head.trainable_tokens_delta`` next to ``wte.trainable_tokens_delta``)."""
    params = dict(model.parameters_and_names())
    aliases = {}
    for cell_name, cell in model.cells_and_names():
        heads, layer_key = getattr(cell, "tied_head_keys", ()), getattr(cell, "layer_key", None)
        model_key = f"{cell_name}.trainable_tokens_delta.{adapter_name}"
        if heads and model_key in params and cell_name.endswith(layer_key):
            root = cell_name[: len(cell_name) - len(layer_key)]
            aliases.update((f"{root}{head}.trainable_tokens_delta", model_key) for head in heads)
    return aliases


def _tuner(model):
    """The tuner (``BaseTuner``) of a PeftModel of a layer-injecting method; ``None`` for prompt learning and for a
    plain Cell that ``inject_adapter_in_model`` gave adapters."""
    from ..tuners.tuners_utils import BaseTuner

    tuner = getattr(model, "base_model", None)
    return tuner if isinstance(tuner, BaseTuner) else None


def get_peft_model_state_dict(model, state_dict=None, adapter_name="default"):
    """``{HF peft key: numpy array}`` of the adapter ``adapter_name`` of ``model``: a PeftModel, or a Cell given
    adapters by :func:`mindpeft.inject_adapter_in_model` (its keys then start at the Cell, as in HF peft).

    ``state_dict`` (``{model parameter name: array}``, as ``parameters_and_names`` names them) supplies the values
    instead of the model's own. A string second argument is read as ``adapter_name`` (mindpeft's earlier order).
    """
    if isinstance(state_dict, str):
        state_dict, adapter_name = None, state_dict
    config = model.peft_config[adapter_name]
    params = dict(model.parameters_and_names())
    values = {k: to_numpy(p) for k, p in params.items()} if state_dict is None else {
        k: np.asarray(v.asnumpy() if hasattr(v, "asnumpy") else v) for k, v in state_dict.items()}
    out = {ck: values[mk] for mk, ck in _adapter_parameter_keys(model, adapter_name).items()}
    out.update((ck, values[mk]) for ck, mk in _tied_head_aliases(model, adapter_name).items())
    for key in _bias_keys(model, config) + _embedding_base_keys(model, config):
        out[key] = values[key]
    if config.is_prompt_learning:
        out[PROMPT_EMBEDDINGS_KEY] = model.get_prompt_embedding_to_save(adapter_name)
        out.update((key, to_numpy(param)) for key, param in _prompt_encoder_extras(model, adapter_name).items())
    elif _tuner(model) is not None:
        out = _tuner(model)._postprocess_state_dict(out, adapter_name)
    return out


def _prompt_encoder_extras(model, adapter_name):
    """``{checkpoint key: Parameter}`` a prompt encoder saves besides ``prompt_embeddings`` (multitask prompt
    tuning's ``prefix_task_cols``/``prefix_task_rows``)."""
    encoder = model.prompt_encoder[adapter_name]
    return encoder.extra_checkpoint_parameters() if hasattr(encoder, "extra_checkpoint_parameters") else {}


def _owned_keys(model, config, adapter_name):
    """``(owned, required)``: ``{checkpoint key: Parameter}`` of every tensor the adapter's checkpoint may hold,
    and ``{model key: checkpoint keys}`` of those it must hold."""
    params = dict(model.parameters_and_names())
    owned, required = {}, {}
    if config.is_prompt_learning:
        owned[PROMPT_EMBEDDINGS_KEY] = model.prompt_encoder[adapter_name].embedding.weight
        required[PROMPT_EMBEDDINGS_KEY] = [PROMPT_EMBEDDINGS_KEY]
        for key, param in _prompt_encoder_extras(model, adapter_name).items():
            owned[key], required[key] = param, [key]
    for mk, ck in _adapter_parameter_keys(model, adapter_name).items():
        aliases = [ck]
        if ".modules_to_save." in mk:  # older HF peft wrote "<module>.modules_to_save.<param>"; bias="all" the key
            module, _, rest = mk.partition(f".modules_to_save.{adapter_name}.")
            aliases += [f"{module}.modules_to_save.{rest}", mk]
        required[mk] = aliases
        owned.update((alias, params[mk]) for alias in aliases)
    owned.update((alias, params[mk]) for alias, mk in _tied_head_aliases(model, adapter_name).items())
    for key in _bias_keys(model, config):
        required[key] = [key]
        owned[key] = params[key]
    optional = _embedding_base_keys(model, config)
    if getattr(config, "bias", "none") == "all":  # HF peft also saves the frozen originals' biases
        optional += [n for n in params if n.endswith(".bias") and ".original_module." in n]
    owned.update((key, params[key]) for key in optional)
    return owned, required


def _shorten(keys, limit=10):
    keys = sorted(keys)
    return f"{keys[:limit]}{f' and {len(keys) - limit} more' if len(keys) > limit else ''}"


def non_finite_keys(state_dict):
    """Keys of the floating-point tensors of ``state_dict`` that hold NaN or infinity."""
    return [k for k, v in state_dict.items()
            if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]


def set_peft_model_state_dict(model, state_dict, adapter_name="default", ignore_mismatched_sizes=False, strict=True):
    """Copy a checkpoint ``{HF peft key: array}`` into ``adapter_name``'s parameters (of a PeftModel, or of a Cell
    given adapters by :func:`mindpeft.inject_adapter_in_model`); returns the model keys of adapter parameters the
    checkpoint lacks (empty unless ``strict=False``).

    Everything is checked before anything is assigned, and a ``ValueError`` names the keys at fault: NaN or
    infinite values and shape mismatches always raise; so do, unless ``strict=False`` (then they are skipped, or
    keep their initial values, with a warning), tensors the adapter's config promises but the checkpoint lacks,
    keys matching no parameter, and base model weights the adapter does not own (not its own parameters,
    ``modules_to_save`` copies, ``bias`` biases or targeted embeddings), which are never overwritten.
    ``ignore_mismatched_sizes=True`` (HF peft's option) skips tensors of another shape with a warning instead.
    Keys are first fitted to the model (:func:`mindpeft.models.peft_integration.adapter_checkpoint_keys`):
    ``base_model.model.`` dropped for a model that is no PeftModel, as HF peft does, and the old module names of
    ViT and SegFormer adapters written on transformers 4 renamed.
    """
    config = model.peft_config[adapter_name]
    state_dict = adapter_checkpoint_keys(model, state_dict)
    bad_values = non_finite_keys(state_dict)
    if bad_values:
        raise ValueError(f"The adapter checkpoint holds NaN or infinite values in {_shorten(bad_values)}")
    if _tuner(model) is not None:
        _tuner(model)._prepare_for_loading(adapter_name)
    owned, required = _owned_keys(model, config, adapter_name)
    model_keys = {k.replace(".base_layer.", ".").replace(".original_module.", ".")
                  for k, _ in model.parameters_and_names()}
    plan, foreign, unknown, mismatched = [], [], [], []
    for key, value in state_dict.items():
        param = owned.get(key)
        if param is None:
            (foreign if key in model_keys else unknown).append(key)
        elif tuple(np.shape(value)) != tuple(param.shape):
            mismatched.append(f"Shape mismatch for {key!r}: checkpoint has {tuple(np.shape(value))}, model "
                              f"expects {tuple(param.shape)}")
        else:
            plan.append((param, value, key))
    if mismatched and not ignore_mismatched_sizes:
        raise ValueError("; ".join(mismatched))
    if mismatched:
        warnings.warn("Skipped (ignore_mismatched_sizes=True): " + "; ".join(mismatched))
    missing = [mk for mk, aliases in required.items() if not any(a in state_dict for a in aliases)]
    problems = []
    if unknown:
        problems.append(f"The adapter checkpoint has weights that match no parameter of the model (was it trained "
                        f"on another architecture or with other target_modules?): {_shorten(unknown)}.")
    if foreign:
        problems.append(f"The adapter checkpoint holds base model weights that adapter {adapter_name!r} does not "
                        f"own (loading them would overwrite the base model): {_shorten(foreign)}.")
    if missing:
        problems.append(f"The adapter checkpoint lacks weights its config promises: {_shorten(missing)}.")
    if problems and strict:
        raise ValueError(" ".join(problems) + " Pass strict=False to load it anyway (extra weights are skipped, "
                         "missing ones keep their initial values).")
    if problems:
        warnings.warn(" ".join(problems) + " Loading anyway (strict=False): extra weights are skipped, missing "
                      "ones keep their initial values.")
    for param, value, key in plan:
        assign(param, value, key)
    return missing


def load_peft_weights(model_id):
    """The ``{key: array}`` adapter weights in the local folder ``model_id``; a damaged file, or NaN or infinite
    values, raise ``ValueError`` naming the file."""
    path = os.path.join(model_id, SAFETENSORS_WEIGHTS_NAME)
    if os.path.isfile(path):
        weights = load_safetensors(path)
        bad_values = non_finite_keys(weights)
        if bad_values:
            raise ValueError(f"{path} holds NaN or infinite values in {_shorten(bad_values)}")
        return weights
    if os.path.isfile(os.path.join(model_id, WEIGHTS_NAME)):
        raise ValueError(f"{model_id!r} holds only a PyTorch pickle ({WEIGHTS_NAME}); mindpeft reads "
                         f"{SAFETENSORS_WEIGHTS_NAME}. Re-save it with safe_serialization=True in HF peft.")
    raise ValueError(f"Can't find weights for {model_id!r}: no {SAFETENSORS_WEIGHTS_NAME} in that folder")


def save_peft_weights(state_dict, directory):
    """Write ``adapter_model.safetensors`` into ``directory`` (a folder being built by ``atomic_directory``)."""
    os.makedirs(directory, exist_ok=True)
    tensors = {k: np.require(v, requirements="C") for k, v in state_dict.items()}  # keeps 0-d shapes
    save_file(tensors, os.path.join(directory, SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})


class _TreeState:
    """Child Cells, train/eval modes, Parameter names and trainable flags of a Cell tree, to put back later."""

    def __init__(self, root):
        self.cells = [(cell, dict(cell.name_cells()), cell.training) for _, cell in root.cells_and_names()]
        self.params = [(param, param.name, param.requires_grad) for _, param in root.parameters_and_names()]

    def restore(self):
        for cell, children, _ in self.cells:
            current = cell.name_cells()
            for name, child in children.items():
                if current.get(name) is not child:
                    replace_child(cell, name, child)
        for cell, _, training in self.cells:  # parents first: each call resets the subtree below
            cell.set_train(training)
        for param, name, requires_grad in self.params:
            param.name = name
            param.requires_grad = requires_grad


def _discard_adapter(peft_model, adapter_name):
    """Remove what a failed load added of ``adapter_name`` to ``peft_model`` (also a half-injected adapter)."""
    from ..tuners.tuners_utils import BaseTunerLayer

    peft_model.peft_config.pop(adapter_name, None)
    if peft_model._is_prompt_learning and adapter_name in peft_model.prompt_encoder:
        del peft_model.prompt_encoder[adapter_name]
    for _, cell in list(peft_model.cells_and_names()):
        if isinstance(cell, BaseTunerLayer) and adapter_name in cell.adapter_names():
            cell.delete_adapter(adapter_name)
        elif isinstance(cell, ModulesToSaveWrapper):
            cell.delete_adapter(adapter_name)


@contextmanager
def unchanged_on_error(root, new_adapter=None):
    """When the block raises, put the Cell tree ``root`` back as it was (its structure, modes, Parameter names and
    trainable flags), first removing ``new_adapter`` from the PeftModel ``root`` if given."""
    state = _TreeState(root)
    try:
        yield
    except BaseException:
        if new_adapter is not None:
            _discard_adapter(root, new_adapter)
        state.restore()
        raise
