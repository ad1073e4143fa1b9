"""Adapter state dicts with HF peft's key names (adapter name removed), and their loading."""
import os
import warnings

import numpy as np
from safetensors.numpy import save_file

from ..models.modeling_utils import assign, load_safetensors, to_numpy
from .constants import EMBEDDING_LAYER_NAMES, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from .other import ModulesToSaveWrapper

PROMPT_EMBEDDINGS_KEY = "prompt_embeddings"


def remove_adapter_name(key, adapter_name):
    """``a.lora_A.default.weight`` -> ``a.lora_A.weight``; ``a.lora_embedding_A.default`` -> ``a.lora_embedding_A``."""
    if key.endswith(f".{adapter_name}"):
        return key[: -len(adapter_name) - 1]
    return key.replace(f".{adapter_name}.", ".", 1) if f".{adapter_name}." in key else key


def _adapter_parameter_keys(model, adapter_name):
    """``{model key: checkpoint key}`` of the parameters that belong to ``adapter_name``."""
    from ..tuners.tuners_utils import BaseTunerLayer

    params = dict(model.parameters_and_names())
    mapping = {}
    for cell_name, cell in model.cells_and_names():
        if isinstance(cell, BaseTunerLayer):
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


def _extra_parameter_keys(model, config):
    """Model keys saved verbatim with the adapter: trained biases and targeted embedding base weights."""
    from ..tuners.tuners_utils import BaseTunerLayer

    keys = []
    bias = getattr(config, "bias", "none")
    names = [n for n, _ in model.parameters_and_names()]
    if bias == "all":
        keys += [n for n in names if n.endswith(".bias") and ".modules_to_save." not in n
                 and ".original_module." not in n]
    elif bias == "lora_only":
        for cell_name, cell in model.cells_and_names():
            if isinstance(cell, BaseTunerLayer) and f"{cell_name}.base_layer.bias" in names:
                keys.append(f"{cell_name}.base_layer.bias")
    targets = getattr(config, "target_modules", None)
    if isinstance(targets, (set, list)) and any(e in targets for e in EMBEDDING_LAYER_NAMES):
        keys += [n for n in names if any(f".{e}.base_layer." in n for e in EMBEDDING_LAYER_NAMES)]
    return keys


def get_peft_model_state_dict(model, adapter_name="default"):
    """``{HF peft key: numpy array}`` of the adapter ``adapter_name`` of a PeftModel."""
    config = model.peft_config[adapter_name]
    params = dict(model.parameters_and_names())
    out = {ck: to_numpy(params[mk]) for mk, ck in _adapter_parameter_keys(model, adapter_name).items()}
    for key in _extra_parameter_keys(model, config):
        out[key] = to_numpy(params[key])
    if config.is_prompt_learning:
        out[PROMPT_EMBEDDINGS_KEY] = model.get_prompt_embedding_to_save(adapter_name)
    else:
        out = model.base_model._postprocess_state_dict(out, adapter_name)
    return out


def set_peft_model_state_dict(model, state_dict, adapter_name="default"):
    """Copy a checkpoint ``{HF peft key: array}`` into ``adapter_name``'s parameters.

    Raises ``ValueError`` for keys that match no parameter of the model and for shape mismatches; returns the
    list of adapter parameters the checkpoint did not contain.
    """
    config = model.peft_config[adapter_name]
    if config.is_prompt_learning:
        state_dict = dict(state_dict)
        if PROMPT_EMBEDDINGS_KEY not in state_dict:
            raise ValueError(f"The prompt-learning adapter checkpoint has no '{PROMPT_EMBEDDINGS_KEY}' tensor")
        assign(model.prompt_encoder[adapter_name].embedding.weight, state_dict.pop(PROMPT_EMBEDDINGS_KEY),
               PROMPT_EMBEDDINGS_KEY)
    else:
        model.base_model._prepare_for_loading(adapter_name)
    params = dict(model.parameters_and_names())
    ckpt_to_model = {ck: mk for mk, ck in _adapter_parameter_keys(model, adapter_name).items()}
    for mk in list(ckpt_to_model.values()):
        if ".modules_to_save." in mk:  # older HF peft wrote "<module>.modules_to_save.<param>"
            module, _, rest = mk.partition(f".modules_to_save.{adapter_name}.")
            ckpt_to_model.setdefault(f"{module}.modules_to_save.{rest}", mk)
    loaded, unexpected = set(), []
    for key, value in state_dict.items():
        target = ckpt_to_model.get(key, key if key in params else None)
        if target is None:
            unexpected.append(key)
            continue
        assign(params[target], value, key)
        loaded.add(target)
    if unexpected:
        raise ValueError(f"The adapter checkpoint has weights that match no parameter of the model (was it trained "
                         f"on another architecture or with other target_modules?): {unexpected[:10]}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
    missing = [mk for mk in set(ckpt_to_model.values()) if mk not in loaded]
    if missing:
        warnings.warn(f"Adapter weights missing from the checkpoint (they keep their initial values): "
                      f"{sorted(missing)[:10]}")
    return missing


def load_peft_weights(model_id):
    """The ``{key: array}`` adapter weights in the local folder ``model_id``."""
    path = os.path.join(model_id, SAFETENSORS_WEIGHTS_NAME)
    if os.path.isfile(path):
        return load_safetensors(path)
    if os.path.isfile(os.path.join(model_id, WEIGHTS_NAME)):
        raise ValueError(f"{model_id!r} holds only a PyTorch pickle ({WEIGHTS_NAME}); mindpeft reads "
                         f"{SAFETENSORS_WEIGHTS_NAME}. Re-save it with safe_serialization=True in HF peft.")
    raise ValueError(f"Can't find weights for {model_id!r}: no {SAFETENSORS_WEIGHTS_NAME} in that folder")


def save_peft_weights(state_dict, directory):
    os.makedirs(directory, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(tensors, os.path.join(directory, SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
