"""transformers' PEFT integration (``PeftAdapterMixin``) on every mindpeft.models model.

``model.add_adapter(config)``, ``model.load_adapter(folder)``, ``set_adapter``, ``enable_adapters`` /
``disable_adapters``, ``active_adapters()``, ``get_adapter_state_dict()`` and ``delete_adapter`` work as in
transformers 5: the adapter layers go into the model itself (:func:`mindpeft.inject_adapter_in_model`), the model
stays the same object, and ``save_pretrained`` of a model holding adapters writes only the active adapter, in HF
peft's format. ``AutoModelFor*.from_pretrained(adapter_folder)`` loads the base model the adapter names, then the
adapter (:func:`adapter_base_model_path`).

Models whose module names differ from their checkpoint keys (``checkpoint_renames``: ViT, SegFormer) also take
adapters written with the checkpoint's (transformers 4) names, as transformers 5 does: their keys are renamed on
load (:func:`adapter_checkpoint_keys`), and ``target_modules`` that name no module except by its old name (ViT's
``["query", "value"]``) are rewritten to the module names (:func:`convert_legacy_target_modules`).
"""
import os
import re

from ..utils.graph_state import bump_graph_version
from ..utils.io import atomic_directory, read_json_object, write_text

ADAPTER_CONFIG_NAME = "adapter_config.json"
MODEL_CONFIG_NAME = "config.json"
PEFT_KEY_PREFIX = "base_model.model."


def adapter_base_model_path(folder):
    """The base model folder named by ``folder``'s ``adapter_config.json`` when ``folder`` holds an adapter and no
    ``config.json`` (transformers' rule), else ``None``. A hub id is looked up in the local Hugging Face cache."""
    from ..utils.hub import resolve_folder

    config_file = os.path.join(folder, ADAPTER_CONFIG_NAME)
    if not os.path.isfile(config_file) or os.path.isfile(os.path.join(folder, MODEL_CONFIG_NAME)):
        return None
    base = read_json_object(config_file).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_file} has no base_model_name_or_path: load the base model and call "
                         f"model.load_adapter({folder!r})")
    return resolve_folder(base)


def _strip_peft_prefix(key):
    return key[len(PEFT_KEY_PREFIX):] if key.startswith(PEFT_KEY_PREFIX) else key


def adapter_checkpoint_keys(model, state_dict):
    """``state_dict`` (an adapter checkpoint, HF peft's keys) keyed as ``model`` holds the adapter: without the
    ``base_model.model.`` prefix for a model that is no PeftModel (as HF peft strips it), and with keys written in
    a checkpoint's old names (transformers 4's ``vit.encoder.layer.0.attention.attention.query.lora_A.weight``)
    renamed to the module names (``vit.layers.0.attention.q_proj.lora_A.weight``), as transformers 5 renames them.
    """
    if not any(name.startswith(PEFT_KEY_PREFIX) for name, _ in model.parameters_and_names()):
        state_dict = {_strip_peft_prefix(key): value for key, value in state_dict.items()}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    renames = getattr(base, "checkpoint_renames", None)
    if renames is None:
        return state_dict
    return {renames.model_key(key): value for key, value in state_dict.items()}


def _ends_with(name, target):
    return name == target or name.endswith("." + target)


def _shortest_suffix(name, allowed, names):
    """The shortest dotted suffix of ``name`` that names no module outside ``allowed``."""
    parts = name.split(".")
    for start in range(len(parts) - 1, -1, -1):
        suffix = ".".join(parts[start:])
        if all(other in allowed for other in names if _ends_with(other, suffix)):
            return suffix
    return name


def convert_legacy_target_modules(config, model):
    """Rewrite, in place, the ``target_modules`` of ``config`` that name modules of ``model`` only by their
    checkpoint (transformers 4) names into the module names: ``["query", "value"]`` on a ViT becomes
    ``["q_proj", "v_proj"]``. Entries naming a module as it is stay unchanged (so the result targets what HF peft
    targets on transformers 5, where the old names match nothing), and the saved config loads in HF peft."""
    renames = getattr(model, "checkpoint_renames", None)
    targets = getattr(config, "target_modules", None)
    if renames is None or targets is None or targets == "all-linear":
        return config
    names = [name for name, _ in model.cells_and_names() if name]
    old_names = {name: renames.checkpoint_key(name) for name in names}
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in names):
            matched = sorted(name for name in names if re.fullmatch(targets, old_names[name]))
            if matched:
                config.target_modules = set(matched)
        return config
    converted = []
    for target in targets:
        if any(_ends_with(name, target) for name in names):
            converted.append(target)
            continue
        matched = {name for name in names if _ends_with(old_names[name], target)}
        if not matched:
            converted.append(target)
            continue
        for name in sorted(matched):
            suffix = _shortest_suffix(name, matched, names)
            if suffix not in converted:
                converted.append(suffix)
    if converted != list(targets):
        config.target_modules = set(converted) if isinstance(targets, set) else converted
    return config


class PeftAdapterMixin:
    """transformers' ``PeftAdapterMixin`` for :class:`~mindpeft.models.PreTrainedModel`: adapters (LoRA, IA3, LoHa,
    ... any method :func:`mindpeft.inject_adapter_in_model` takes, so no prompt learning) added to, loaded into and
    managed on the model itself. ``model.peft_config`` maps adapter names to configs once one is loaded."""

    _hf_peft_config_loaded = False
    _hotswap_enabled = False
    _prepare_peft_hotswap_kwargs = None
    _peft_state_version = 0

    @property
    def state_version(self):
        """Changes whenever the adapters' state changes (see :class:`mindpeft.training.TrainStep`)."""
        return self._peft_state_version

    def _adapter_state_changed(self):
        self._peft_state_version += 1
        bump_graph_version()

    def _check_adapters_loaded(self):
        if not self._hf_peft_config_loaded:
            raise ValueError("No adapter loaded. Please load an adapter first.")

    def _adapter_cells(self, with_modules_to_save=True):
        from ..tuners.tuners_utils import BaseTunerLayer
        from ..utils.other import ModulesToSaveWrapper

        kinds = (BaseTunerLayer, ModulesToSaveWrapper) if with_modules_to_save else (BaseTunerLayer,)
        return [cell for _, cell in self.cells_and_names() if isinstance(cell, kinds)]

    def _inject_adapter(self, adapter_config, adapter_name, weights=None, strict=True):
        """Put ``adapter_config``'s layers into the model, record the config (the flag set as transformers sets it)
        and load ``weights`` (``{model key: array}``) into them if given; a failure leaves the model as it was."""
        from ..config import PeftConfig
        from ..mapping import inject_adapter_in_model
        from ..utils.save_and_load import set_peft_model_state_dict, unchanged_on_error

        if not isinstance(adapter_config, PeftConfig):
            raise TypeError(f"adapter_config should be an instance of PeftConfig. Got {type(adapter_config)} "
                            "instead.")
        configs = dict(self.peft_config) if self._hf_peft_config_loaded else {}
        convert_legacy_target_modules(adapter_config, self)
        with unchanged_on_error(self):
            try:
                inject_adapter_in_model(adapter_config, self, adapter_name)
                self.peft_config = {**configs, adapter_name: adapter_config}
                self._hf_peft_config_loaded = True
                if weights is not None:
                    set_peft_model_state_dict(self, weights, adapter_name, strict=strict)
            except BaseException:
                self._remove_adapter_entries(adapter_name)
                self._restore_configs(configs)
                raise
        self._adapter_state_changed()

    def _restore_configs(self, configs):
        if configs:
            self.peft_config = configs
        else:
            self.__dict__.pop("peft_config", None)
            self._hf_peft_config_loaded = False

    def _remove_adapter_entries(self, adapter_name):
        for cell in self._adapter_cells():
            if adapter_name in cell.adapter_names():
                cell.delete_adapter(adapter_name)

    def add_adapter(self, adapter_config, adapter_name=None):
        """Add a new adapter (``adapter_name`` defaults to ``"default"``) for training and make it the active one,
        as transformers does. Its ``base_model_name_or_path`` becomes this model's path."""
        adapter_name = adapter_name or "default"
        if self._hf_peft_config_loaded and adapter_name in self.peft_config:
            raise ValueError(f"Adapter with name {adapter_name} already exists. Please use a different name.")
        if hasattr(adapter_config, "base_model_name_or_path"):
            adapter_config.base_model_name_or_path = self.name_or_path or None
        self._inject_adapter(adapter_config, adapter_name)
        self.set_adapter(adapter_name)

    def load_adapter(self, peft_model_id=None, adapter_name=None, peft_config=None, adapter_state_dict=None,
                     is_trainable=False, hotswap="auto", adapter_kwargs=None, strict=True, local_files_only=False,
                     low_cpu_mem_usage=False, **kwargs):
        """Load an adapter saved by HF peft, transformers or mindpeft from ``peft_model_id`` (a local folder, or a
        hub id in the local Hugging Face cache; ``revision``/``subfolder`` as keywords), or from ``peft_config`` and
        ``adapter_state_dict`` (``{key: array}``, HF peft's keys). Keys and ``target_modules`` in the checkpoint's
        old names are renamed (see the module doc).

        ``is_trainable=False`` freezes the adapter layers and puts the model in eval mode, as transformers does.
        ``hotswap=True`` (or ``"auto"`` after :meth:`enable_peft_hotswap`) writes the new LoRA weights into the
        existing adapter ``adapter_name`` in place (:func:`mindpeft.utils.hotswap.hotswap_adapter_from_state_dict`),
        keeping graphs compiled earlier valid. ``strict`` as in :func:`mindpeft.set_peft_model_state_dict`; a
        refused load leaves the model as it was. ``local_files_only`` and ``low_cpu_mem_usage`` are accepted for
        transformers' signature (mindpeft reads local files only, one tensor at a time).
        """
        from ..config import PeftConfig
        from ..utils.hub import resolve_folder
        from ..utils.peft_types import PeftType
        from ..utils.save_and_load import load_peft_weights
        from .modeling_utils import to_numpy

        kwargs = {**(adapter_kwargs or {}), **kwargs}
        revision, subfolder = kwargs.pop("revision", None), kwargs.pop("subfolder", None)
        if kwargs:
            raise TypeError(f"load_adapter() got unexpected keyword arguments: {sorted(kwargs)}")
        adapter_name = adapter_name if adapter_name is not None else "default"
        loaded = self._hf_peft_config_loaded
        if hotswap == "auto":
            hotswap = self._hotswap_enabled and loaded and adapter_name in self.peft_config
        if hotswap:
            if not loaded or adapter_name not in self.peft_config:
                raise ValueError("To hotswap an adapter, there must already be an existing adapter with the same "
                                 "adapter name.")
            if any(config.peft_type != PeftType.LORA for config in self.peft_config.values()):
                raise ValueError("Hotswapping is currently only supported for LoRA, please set `hotswap=False`.")
        elif loaded and adapter_name in self.peft_config:
            raise ValueError(f"Adapter with name {adapter_name} already exists. Please use a different name.")
        if peft_model_id is None and (peft_config is None or adapter_state_dict is None):
            raise ValueError("You should either pass a `peft_model_id` or a `peft_config` and `adapter_state_dict` "
                             "to load an adapter.")
        folder = resolve_folder(peft_model_id, revision, subfolder) if peft_model_id is not None else None
        if peft_config is None:
            peft_config = PeftConfig.from_pretrained(folder)
        if adapter_state_dict is None:
            adapter_state_dict = load_peft_weights(folder)
        weights = {key: to_numpy(value) for key, value in adapter_state_dict.items()}
        if hasattr(peft_config, "inference_mode"):
            peft_config.inference_mode = not is_trainable
        if hotswap:
            self._hotswap(weights, adapter_name, peft_config)
            return
        self._inject_adapter(peft_config, adapter_name, weights, strict)
        if peft_config.inference_mode:
            self.set_train(False)
            for cell in self._adapter_cells(with_modules_to_save=False):
                for param in cell.get_parameters():
                    param.requires_grad = False

    def _hotswap(self, weights, adapter_name, peft_config):
        from ..utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict

        check_hotswap_configs_compatible(self.peft_config[adapter_name], peft_config)
        hotswap_adapter_from_state_dict(self, adapter_checkpoint_keys(self, weights), adapter_name, peft_config)

    def enable_peft_hotswap(self, target_rank=128, check_compiled="error"):
        """Let later :meth:`load_adapter` calls with an existing adapter's name hot-swap it (transformers' method;
        call it before loading the first adapter). To swap in adapters of a higher rank than the first, pad it with
        :func:`mindpeft.utils.hotswap.prepare_model_for_compiled_hotswap` after loading it."""
        if getattr(self, "peft_config", None):
            if check_compiled == "error":
                raise RuntimeError("Call `enable_peft_hotswap` before loading the first adapter.")
            if check_compiled not in ("warn", "ignore"):
                raise ValueError(f"check_compiles should be one of 'error', 'warn', or 'ignore', got "
                                 f"'{check_compiled}' instead.")
        self._hotswap_enabled = True
        self._prepare_peft_hotswap_kwargs = {"target_rank": target_rank, "check_compiled": check_compiled}

    def set_adapter(self, adapter_name):
        """Make ``adapter_name`` (a name or a list of names) the active adapter(s), the others off; merged layers
        are unmerged first."""
        from ..utils.other import ModulesToSaveWrapper

        self._check_adapters_loaded()
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        missing = [name for name in names if name not in self.peft_config]
        if isinstance(adapter_name, list) and missing:
            raise ValueError(f"Following adapter(s) could not be found: {', '.join(missing)}. Make sure you are "
                             f"passing the correct adapter name(s). current loaded adapters are: "
                             f"{list(self.peft_config.keys())}")
        if missing:
            raise ValueError(f"Adapter with name {adapter_name} not found. Please pass the correct adapter name "
                             f"among {list(self.peft_config.keys())}")
        cells = self._adapter_cells()
        if len(names) > 1 and any(isinstance(cell, ModulesToSaveWrapper) for cell in cells):
            raise ValueError(f"Attempted to set multiple ({names}) adapters at once for modules_to_save.")
        if not cells:
            raise ValueError("Did not succeeded in setting the adapter. Please make sure you are using a model that "
                             "supports adapters.")
        for cell in cells:
            if isinstance(cell, ModulesToSaveWrapper):
                cell.set_adapter(names[0])
            else:
                if cell.merged:
                    cell.unmerge()
                cell.set_adapter(names)
        self._adapter_state_changed()

    def _enable(self, enabled):
        self._check_adapters_loaded()
        for cell in self._adapter_cells():
            cell.enable_adapters(enabled)
        self._adapter_state_changed()

    def disable_adapters(self):
        """Run the base model alone (every adapter off, ``modules_to_save`` originals used)."""
        self._enable(False)

    def enable_adapters(self):
        """Turn the adapters back on (transformers 5.23 leaves ``modules_to_save`` copies off here; mindpeft turns
        them on as well, as ``PeftModel`` does)."""
        self._enable(True)

    def active_adapters(self):
        """The names of the active adapters."""
        self._check_adapters_loaded()
        layers = self._adapter_cells(with_modules_to_save=False)
        if not layers:
            return []
        active = layers[0].active_adapter
        return [active] if isinstance(active, str) else list(active)

    def get_adapter_state_dict(self, adapter_name=None, state_dict=None):
        """``{key: numpy array}`` of ``adapter_name`` (default: the first active adapter), keys as in
        transformers (no ``base_model.model.`` prefix). ``state_dict`` (``{parameter name: array}``) supplies
        the values instead of the model's own."""
        from ..utils.save_and_load import get_peft_model_state_dict

        self._check_adapters_loaded()
        if adapter_name is None:
            adapter_name = self.active_adapters()[0]
        return get_peft_model_state_dict(self, state_dict=state_dict, adapter_name=adapter_name)

    def delete_adapter(self, adapter_names):
        """Delete the adapter(s) ``adapter_names`` (a name or a list); the last one deleted removes
        ``peft_config``. The adapter layers stay, holding no adapter (as in transformers)."""
        from .modeling_utils import sync_parameter_names

        self._check_adapters_loaded()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        missing = [name for name in names if name not in self.peft_config]
        if missing:
            raise ValueError(f"The following adapter(s) are not present and cannot be deleted: {', '.join(missing)}")
        for name in names:
            self._remove_adapter_entries(name)
            self.peft_config.pop(name)
        if not self.peft_config:
            self._restore_configs({})
        sync_parameter_names(self)
        self._adapter_state_changed()

    def _save_adapters(self, save_directory, save_peft_format=True):
        """transformers' ``save_pretrained`` of a model holding adapters: ``adapter_config.json`` and
        ``adapter_model.safetensors`` of the active adapter, keys prefixed ``base_model.model.`` unless
        ``save_peft_format=False``; the folder is replaced as a whole (:func:`mindpeft.utils.io.atomic_directory`)."""
        from ..utils.save_and_load import save_peft_weights

        active = self.active_adapters()
        if len(active) > 1:
            raise ValueError("Multiple active adapters detected, saving multiple active adapters is not supported "
                             "yet. You can save adapters separately one by one by iteratively calling "
                             "`model.set_adapter(adapter_name)` then `model.save_pretrained(...)`")
        weights = self.get_adapter_state_dict(active[0])
        if save_peft_format:
            weights = {PEFT_KEY_PREFIX + key: value for key, value in weights.items()}
        text = self.peft_config[active[0]].to_json_string()
        with atomic_directory(save_directory) as staging:
            save_peft_weights(weights, staging)
            write_text(os.path.join(staging, ADAPTER_CONFIG_NAME), text)
