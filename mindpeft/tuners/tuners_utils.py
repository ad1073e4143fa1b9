"""Shared machinery of the adapter-injecting tuners (LoRA, IA3, ...): finding, wrapping and managing layers.

Graph-mode note: adapter state (active adapters, disabled, merged) is read in ``construct`` as Python constants,
so a function compiled with ``mindspore.jit`` keeps the state it was compiled with. Every change bumps
``BaseTuner.state_version``; :class:`mindpeft.training.TrainStep` recompiles when it changes, and hand-written
jitted functions should be re-created after such a change.
"""
import re
import warnings
from contextlib import contextmanager

import mindspore as ms
import numpy as np
from mindspore import mint, nn

from ..models.layers import Conv1D, Linear
from ..models.modeling_utils import sync_parameter_names, write_parameter
from ..utils.graph_state import bump_graph_version
from ..utils.other import ModulesToSaveWrapper, get_submodules, replace_child, wrap_modules_to_save


class ParameterDict(nn.Cell):
    """Parameters keyed by adapter name, stored as attributes so state-dict keys read ``<name>.<adapter>``.

    In ``construct`` read them with ``getattr(self.params, name)``: graph mode drops gradients through a
    custom ``__getitem__``.
    """

    def __getitem__(self, key):
        return self._params[key]

    def __setitem__(self, key, param):
        setattr(self, key, param)

    def __delitem__(self, key):
        del self._params[key]

    def __contains__(self, key):
        return key in self._params

    def keys(self):
        return list(self._params.keys())

    def __len__(self):
        return len(self._params)


def _layer_index_matches(config, key):
    indexes = config.layers_to_transform
    patterns = config.layers_pattern
    if not patterns:
        match = re.match(r".*\.[^.]*\.(\d+)\.", key)
    else:
        patterns = [patterns] if isinstance(patterns, str) else patterns
        match = None
        for pattern in patterns:
            match = re.match(rf".*\.{pattern}\.(\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group(1))
    return index == indexes if isinstance(indexes, int) else index in indexes


def _matches(targets, key):
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    return key in targets or any(key.endswith(f".{t}") for t in targets)


def check_target_module_exists(config, key):
    """Whether the module at ``key`` is targeted by ``config`` (HF peft's matching rules)."""
    if getattr(config, "exclude_modules", None) and _matches(config.exclude_modules, key):
        return False
    if isinstance(config.target_modules, str):
        return _matches(config.target_modules, key)
    if not _matches(config.target_modules, key):
        return False
    indexes = getattr(config, "layers_to_transform", None)
    if indexes is None or (isinstance(indexes, list) and not indexes):
        return True
    return _layer_index_matches(config, key)


def named_references(model):
    """``(key, parent, name, cell)`` for every place a Cell sits in ``model``; unlike ``cells_and_names`` a Cell
    shared by several parents (T5's ``shared`` embedding, also ``encoder.embed_tokens``) is listed at each."""
    found, visited = [], set()

    def walk(cell, prefix):
        if id(cell) in visited:
            return
        visited.add(id(cell))
        for name, child in cell.name_cells().items():
            if child is not None:
                found.append((prefix + name, cell, name, child))
                walk(child, f"{prefix}{name}.")

    walk(model, "")
    return found


def replace_everywhere(model, replacements):
    """Put ``replacements[id(cell)]`` wherever ``cell`` sits in ``model`` (shared Cells at every place)."""
    for _, parent, name, cell in named_references(model):
        if id(cell) in replacements:
            replace_child(parent, name, replacements[id(cell)])


def get_pattern_key(pattern_keys, key):
    """The first of ``pattern_keys`` (``rank_pattern``/``alpha_pattern`` keys) whose regex ends ``key``."""
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return None


def base_weight(layer):
    """The weight Parameter of a supported base layer (``embedding_table`` for ``mindspore.nn.Embedding``)."""
    return layer.weight if hasattr(layer, "weight") else layer.embedding_table


def layer_features(layer):
    """``(in_features, out_features)`` of a linear-like base layer, or ``None`` for an unsupported one."""
    if isinstance(layer, Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        return layer.nx, layer.nf
    if isinstance(layer, nn.Dense):
        return layer.in_channels, layer.out_channels
    return None


class BaseTunerLayer:
    """Mixin of adapter layers: the wrapped ``base_layer`` plus per-adapter Cells in ``adapter_layer_names``."""

    adapter_layer_names = ()
    other_param_names = ()

    def _init_tuner_layer(self, base_layer):
        self.base_layer = base_layer
        self.active_adapters = ()
        self.merged_adapters = []
        self.disable_adapters = False
        self._active_in_layer = ()

    @property
    def merged(self):
        return bool(self.merged_adapters)

    @property
    def active_adapter(self):
        return self.active_adapters[0] if len(self.active_adapters) == 1 else list(self.active_adapters)

    def get_base_layer(self):
        base = self.base_layer
        while isinstance(base, BaseTunerLayer):
            base = base.base_layer
        return base

    @property
    def weight(self):
        base = self.get_base_layer()
        return base.weight if hasattr(base, "weight") else base.embedding_table

    def adapter_names(self):
        """Names of the adapters this layer holds."""
        names = []
        for layer_name in self.adapter_layer_names:
            for name in getattr(self, layer_name).keys():
                if name not in names:
                    names.append(name)
        return names

    def adapter_parameter_names(self, adapter_name):
        """Paths (relative to this layer) of the parameters that belong to ``adapter_name``."""
        return [f"{layer_name}.{adapter_name}" for layer_name in self.adapter_layer_names]

    def _refresh_active(self):
        held = self.adapter_names()
        self._active_in_layer = tuple(n for n in self.active_adapters if n in held)

    def set_adapter(self, adapter_names):
        """Make ``adapter_names`` (a name or a list) the active adapters and their parameters trainable."""
        names = (adapter_names,) if isinstance(adapter_names, str) else tuple(adapter_names)
        for layer_name in self.adapter_layer_names:
            container = getattr(self, layer_name)
            for key in container.keys():
                for param in _params_of(container, key):
                    param.requires_grad = key in names
        self.active_adapters = names
        self._refresh_active()

    def enable_adapters(self, enabled):
        """Turn adapters on or off; turning them off unmerges merged weights first."""
        if not enabled and self.merged:
            self.unmerge()
        self.disable_adapters = not enabled

    def delete_adapter(self, adapter_name):
        """Remove ``adapter_name``; a merged one is first subtracted from the base weight (the other merged
        adapters stay merged)."""
        still_merged = None
        if adapter_name in self.merged_adapters:
            still_merged = [n for n in self.merged_adapters if n != adapter_name]
            self.unmerge()
        for layer_name in self.adapter_layer_names + self.other_param_names:
            container = getattr(self, layer_name)
            if adapter_name in container:
                del container[adapter_name]
        if adapter_name in self.active_adapters:
            remaining = [n for n in self.active_adapters if n != adapter_name] or self.adapter_names()[:1]
            self.set_adapter(remaining)
        self._refresh_active()
        if still_merged:
            self.merge(adapter_names=still_merged)

    def check_adapters_to_merge(self, adapter_names=None):
        names = list(self.active_adapters) if adapter_names is None else list(adapter_names)
        if self.merged:
            already = [n for n in names if n in self.merged_adapters]
            if already:
                warnings.warn(f"Already merged with {already}. Skipping those.")
            names = [n for n in names if n not in self.merged_adapters]
        return [n for n in names if n in self.adapter_names()]

    def _merge_into(self, value, adapter_name):
        """The base weight ``value`` (numpy) with the adapter merged in: ``value + get_delta_weight`` here; layers
        whose update is not additive (rotations, reflections) override this and :meth:`_unmerge_from`."""
        return value + self.get_delta_weight(adapter_name)

    def _unmerge_from(self, value, adapter_name):
        """The inverse of :meth:`_merge_into`."""
        return value - self.get_delta_weight(adapter_name)

    def merge(self, safe_merge=False, adapter_names=None):
        """Merge each adapter into the base weight in turn (:meth:`_merge_into`), checked for non-finite values if
        ``safe_merge``."""
        weight = base_weight(self.get_base_layer())
        for name in self.check_adapters_to_merge(adapter_names):
            merged = self._merge_into(weight.asnumpy(), name)
            if safe_merge and not np.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
            write_parameter(weight, merged)
            self.merged_adapters.append(name)

    def unmerge(self):
        """Undo every merged adapter (:meth:`_unmerge_from`), last merged first."""
        weight = base_weight(self.get_base_layer())
        while self.merged_adapters:
            write_parameter(weight, self._unmerge_from(weight.asnumpy(), self.merged_adapters.pop()))


def _params_of(container, key):
    item = container[key]
    return [item] if not isinstance(item, nn.Cell) else list(item.get_parameters())


_FLOAT_DTYPES = (ms.float16, ms.bfloat16, ms.float32, ms.float64)


class BaseTuner(nn.Cell):
    """Wraps ``model`` and replaces its targeted layers with adapter layers.

    Subclasses set ``prefix`` (e.g. ``"lora_"``) and ``target_module_mapping``, implement ``_create_and_replace``
    and, where the default below does not fit, ``_mark_only_adapters_as_trainable``.
    """

    prefix = ""
    target_module_mapping = {}

    @staticmethod
    def _is_bias_name(name):
        """Which parameters ``bias="all"`` trains (HF peft: names ending in ``.bias``)."""
        return name.endswith(".bias")

    def cast_adapter_dtype(self, adapter_name, autocast_adapter_dtype=True):
        """HF peft's adapter dtypes. ``autocast_adapter_dtype=True``: the adapter's float16 and bfloat16 weights become
        float32 (mindpeft creates adapters in float32, so they stay so on a float16 base). ``False``: the adapter takes
        its base layer's floating-point dtype, as HF peft creates it."""
        for _, layer in self.model.cells_and_names():
            if not isinstance(layer, BaseTunerLayer):
                continue
            base_dtype = getattr(getattr(layer.get_base_layer(), "weight", None), "dtype", None)
            for layer_name in layer.adapter_layer_names:
                container = getattr(layer, layer_name)
                if adapter_name not in container:
                    continue
                for param in _params_of(container, adapter_name):
                    if autocast_adapter_dtype:
                        target = ms.float32 if param.dtype in (ms.float16, ms.bfloat16) else param.dtype
                    elif param.dtype in _FLOAT_DTYPES and base_dtype in _FLOAT_DTYPES:
                        target = base_dtype
                    else:
                        target = param.dtype
                    if target != param.dtype:
                        param.set_dtype(target)

    def _mark_only_adapters_as_trainable(self, model):
        """Freeze all but the adapter parameters (names holding ``prefix``) and the ``modules_to_save`` copies, then
        unfreeze the biases each active adapter's ``bias`` option names: ``"all"`` (every bias outside the frozen
        originals) or ``"<method>_only"`` (the adapted layers' own)."""
        for name, param in model.parameters_and_names():
            if self.prefix not in name and ".modules_to_save." not in name:
                param.requires_grad = False
        for adapter in self.active_adapters:
            bias = getattr(self.peft_config[adapter], "bias", "none")
            if bias == "all":
                for name, param in model.parameters_and_names():
                    if self._is_bias_name(name) and ".original_module." not in name:
                        param.requires_grad = True
            elif bias.endswith("_only"):
                for _, layer in self.tuner_layers():
                    base = layer.get_base_layer()
                    if getattr(base, "bias", None) is not None:
                        base.bias.requires_grad = True

    def __init__(self, model, peft_config, adapter_name):
        super().__init__(auto_prefix=True)
        self.model = model
        self.peft_config = peft_config if isinstance(peft_config, dict) else {adapter_name: peft_config}
        self.active_adapter = adapter_name
        self.state_version = 0
        self.adapters_enabled = True
        self.inject_adapter(self.model, adapter_name)

    def construct(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @property
    def active_adapters(self):
        return [self.active_adapter] if isinstance(self.active_adapter, str) else list(self.active_adapter)

    def _bump(self):
        self.state_version += 1
        bump_graph_version()

    def tuner_layers(self):
        """``(name, layer)`` of every adapter layer in the model."""
        return [(n, c) for n, c in self.model.cells_and_names() if isinstance(c, BaseTunerLayer)]

    def _prepare_adapter_config(self, config, model_config):
        if config.target_modules is None:
            model_type = getattr(model_config, "model_type", None)
            if model_type not in self.target_module_mapping:
                raise ValueError(f"Please specify `target_modules` in `peft_config`: no default for model_type "
                                 f"{model_type!r}")
            config.target_modules = set(self.target_module_mapping[model_type])
        return config

    def _expand_all_linear(self, config, model):
        """Replace ``target_modules='all-linear'`` with every linear layer's name except the output head."""
        names = set()
        for key, cell in model.cells_and_names():
            if isinstance(cell, (Linear, Conv1D, nn.Dense, mint.nn.Linear)) or getattr(cell, "bits", None) in (4, 8):
                names.add(key.split(".")[-1])
        names -= {"lm_head", "score", "classifier", "qa_outputs", "out_proj"}
        config.target_modules = names

    def inject_adapter(self, model, adapter_name):
        """Wrap every module ``peft_config[adapter_name]`` targets; clear error when none matches."""
        config = self._prepare_adapter_config(self.peft_config[adapter_name], getattr(model, "config", None))
        if config.target_modules == "all-linear":
            self._expand_all_linear(config, model)
        tuner_names = [n for n, c in model.cells_and_names() if isinstance(c, BaseTunerLayer)]
        matched = False
        for key, _ in list(model.cells_and_names()):
            if not key or any(key.startswith(t + ".") for t in tuner_names):
                continue
            if any(part == "modules_to_save" or part == "original_module" for part in key.split(".")):
                continue
            if not check_target_module_exists(config, key):
                continue
            matched = True
            parent, target, target_name = get_submodules(model, key)
            self._create_and_replace(config, adapter_name, target, target_name, parent, current_key=key)
        matched = self._inject_parameters(config, model, adapter_name, matched) or matched
        if not matched:
            raise ValueError(f"Target modules {config.target_modules} not found in the base model. Please check "
                             "the target modules and try again.")
        self.set_adapter(self.active_adapters)
        self._mark_only_adapters_as_trainable(model)
        if getattr(config, "modules_to_save", None):
            wrap_modules_to_save(model, config.modules_to_save, adapter_name, self.active_adapters[0])
        if getattr(config, "trainable_token_indices", None) is not None:
            from .trainable_tokens.model import add_trainable_tokens
            add_trainable_tokens(model, config, adapter_name, self.active_adapters)
        if config.inference_mode:
            self._freeze_adapter(adapter_name)
        sync_parameter_names(model)
        self._bump()

    def _inject_parameters(self, config, model, adapter_name, modules_matched):
        """Hook: adapt the bare Parameters ``config`` targets (LoRA's ``target_parameters``); whether any matched."""
        return False

    def _freeze_adapter(self, adapter_name):
        for name, param in self.model.parameters_and_names():
            if f".{adapter_name}." in name or name.endswith(f".{adapter_name}"):
                param.requires_grad = False

    def set_adapter(self, adapter_name):
        """Activate ``adapter_name`` (a name or list of names) in every adapter layer."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"Adapter {name!r} not found; available adapters: {list(self.peft_config)}")
        for _, layer in self.tuner_layers():
            if layer.merged:
                warnings.warn("Adapter cannot be set when the model is merged. Unmerging the model first.")
                layer.unmerge()
            layer.set_adapter(names)
        for _, cell in self.model.cells_and_names():
            if isinstance(cell, ModulesToSaveWrapper):
                cell.set_adapter(names[0])
        self.active_adapter = names[0] if len(names) == 1 else names
        self._bump()

    def _set_adapter_layers(self, enabled):
        self.adapters_enabled = enabled
        for _, layer in self.tuner_layers():
            layer.enable_adapters(enabled)
        for _, cell in self.model.cells_and_names():
            if isinstance(cell, ModulesToSaveWrapper):
                cell.enable_adapters(enabled)
        self._bump()

    def enable_adapter_layers(self):
        self._set_adapter_layers(True)

    def disable_adapter_layers(self):
        self._set_adapter_layers(False)

    @contextmanager
    def _adapters_disabled(self):
        """Adapters off inside the block, then back to how they were (so nested blocks keep them off)."""
        was_enabled = self.adapters_enabled
        if was_enabled:
            self.disable_adapter_layers()
        try:
            yield
        finally:
            if was_enabled:
                self.enable_adapter_layers()

    def merge_adapter(self, adapter_names=None, safe_merge=False):
        """Add the active (or given) adapters' weights into the base weights; forward then skips them."""
        for _, layer in self.tuner_layers():
            layer.merge(adapter_names=adapter_names, safe_merge=safe_merge)
        self._bump()

    def unmerge_adapter(self):
        """Subtract merged adapter weights from the base weights again."""
        for _, layer in self.tuner_layers():
            layer.unmerge()
        self._bump()

    def _unload_and_optionally_merge(self, merge, safe_merge=False, adapter_names=None):
        from .trainable_tokens.layer import TrainableTokensWrapper

        for _, layer in self.tuner_layers():
            if merge:
                layer.merge(adapter_names=adapter_names, safe_merge=safe_merge)
        replace_everywhere(self.model, {id(layer): layer.get_base_layer() for _, layer in self.tuner_layers()})
        replace_everywhere(self.model, {id(cell): cell.active_module() for _, cell in self.model.cells_and_names()
                                        if isinstance(cell, (ModulesToSaveWrapper, TrainableTokensWrapper))})
        sync_parameter_names(self.model)
        self._bump()
        return self.model

    def merge_and_unload(self, safe_merge=False, adapter_names=None):
        """Merge the adapters into the base weights and return the plain base model."""
        return self._unload_and_optionally_merge(True, safe_merge, adapter_names)

    def unload(self):
        """Remove every adapter layer without merging and return the original base model."""
        return self._unload_and_optionally_merge(False)

    def delete_adapter(self, adapter_name):
        """Remove ``adapter_name`` from every layer and from ``peft_config``."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name!r} does not exist; available: {list(self.peft_config)}")
        del self.peft_config[adapter_name]
        for _, layer in self.tuner_layers():
            layer.delete_adapter(adapter_name)
        for _, cell in self.model.cells_and_names():
            if isinstance(cell, ModulesToSaveWrapper):
                cell.delete_adapter(adapter_name)
        if adapter_name in self.active_adapters:
            remaining = list(self.peft_config)
            self.active_adapter = remaining[0] if remaining else None
            if remaining:
                self.set_adapter(self.active_adapter)
        sync_parameter_names(self.model)
        self._bump()

    def get_base_model(self):
        return self.model

    def _postprocess_state_dict(self, state_dict, adapter_name):
        """Hook: adjust the adapter's state dict before saving (AdaLoRA drops pruned ranks)."""
        return state_dict

    def _prepare_for_loading(self, adapter_name):
        """Hook: reshape adapter layers before a checkpoint is loaded into them (AdaLoRA's rank pattern)."""
