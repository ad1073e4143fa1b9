"""``PeftMixedModel``: a base model with adapters of different methods (LoRA, LoHa, LoKr, OFT), as HF peft's."""
import os
from contextlib import contextmanager

from mindspore import nn

from .config import PeftConfig
from .models.model_outputs import ModelOutputMixin
from .models.modeling_utils import sync_parameter_names
from .peft_model import PeftModel
from .tuners.mixed.model import MixedModel, check_config_compatible, layer_chains
from .utils.constants import CONFIG_NAME
from .utils.hub import resolve_folder
from .utils.io import atomic_directory, write_text
from .utils.save_and_load import (get_peft_model_state_dict, load_peft_weights, remove_adapter_name,
                                  save_peft_weights, set_peft_model_state_dict, unchanged_on_error)


class PeftMixedModel(ModelOutputMixin, nn.Cell):
    """A base model with adapters of several methods (:data:`mindpeft.tuners.mixed.COMPATIBLE_TUNER_TYPES`) that
    can be active together; build it with ``get_peft_model(model, config, mixed=True)`` or
    :meth:`from_pretrained`, add adapters with :meth:`add_adapter` / :meth:`load_adapter`, activate several with
    ``set_adapter([...])``.

    The adapters run in the order they were added, whatever the order ``set_adapter`` names them in (HF peft's
    rule). Each adapter is saved as its own single-method adapter folder (:meth:`save_pretrained`), which HF peft's
    ``PeftModel`` and ``PeftMixedModel`` load; HF peft 0.21's ``PeftMixedModel`` cannot save.
    """

    _is_prompt_learning = False  # read by the shared loading helpers

    def __init__(self, model, peft_config, adapter_name="default"):
        super().__init__()
        check_config_compatible(peft_config)
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        self.base_model = MixedModel(model, {adapter_name: peft_config}, adapter_name)
        sync_parameter_names(self)  # stacking a layer renames the Parameters below it
        if peft_config.inference_mode:
            self.set_train(False)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "_cells", "_params"):
                raise
            tuner = self.base_model
            return getattr(tuner, name) if hasattr(tuner, name) else getattr(tuner.model, name)

    def construct(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    @property
    def peft_config(self):
        return self.base_model.peft_config

    @property
    def active_adapter(self):
        return self.base_model.active_adapter

    @property
    def active_adapters(self):
        return self.base_model.active_adapters

    @property
    def state_version(self):
        """Changes whenever adapter state read by compiled graphs changes (see :mod:`mindpeft.training`)."""
        return self.base_model.state_version

    def get_base_model(self):
        return self.base_model.model

    def get_nb_trainable_parameters(self):
        """``(trainable, total)`` parameter counts."""
        return PeftModel.get_nb_trainable_parameters(self)

    def print_trainable_parameters(self):
        PeftModel.print_trainable_parameters(self)

    def get_layer_status(self):
        raise TypeError(f"get_layer_status is not supported for {type(self).__name__}.")

    def get_model_status(self):
        raise TypeError(f"get_model_status is not supported for {type(self).__name__}.")

    # ----- adapters ----------------------------------------------------------------------------------
    def add_adapter(self, adapter_name, peft_config):
        """Add an adapter of any compatible method (not activated; use :meth:`set_adapter`)."""
        if adapter_name in self.peft_config:
            raise ValueError(f"Adapter with name '{adapter_name}' already exists.")
        check_config_compatible(peft_config)
        if peft_config.base_model_name_or_path is None and self.peft_config:
            peft_config.base_model_name_or_path = next(iter(self.peft_config.values())).base_model_name_or_path
        with unchanged_on_error(self, new_adapter=adapter_name):  # a refused config leaves no half-added adapter
            self.peft_config[adapter_name] = peft_config
            self.base_model.inject_adapter(self.base_model.model, adapter_name)
        sync_parameter_names(self)

    def set_adapter(self, adapter_name, inference_mode=False):
        """Activate one adapter or a list of them (their parameters become trainable unless ``inference_mode``)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        missing = set(names) - set(self.peft_config)
        if missing:
            raise ValueError(f"Adapter(s) {sorted(missing)} not found, available adapters: "
                             f"{sorted(self.peft_config)}")
        self.base_model.set_adapter(names)
        if inference_mode:
            for name in names:
                self.base_model._freeze_adapter(name)

    def delete_adapter(self, adapter_name):
        """Remove one adapter or a list of them."""
        self.base_model.delete_adapter(adapter_name)

    @contextmanager
    def disable_adapter(self):
        """Context manager running the plain base model (adapters off, merged weights unmerged)."""
        with self.base_model._adapters_disabled():
            yield

    def merge_adapter(self, adapter_names=None, safe_merge=False):
        self.base_model.merge_adapter(adapter_names, safe_merge)

    def unmerge_adapter(self):
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, safe_merge=False, adapter_names=None):
        """Merge the active (or given) adapters into the base weights and return the base model without adapter
        layers."""
        return self.base_model.merge_and_unload(safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self):
        """Return the base model with adapter layers removed and weights untouched."""
        return self.base_model.unload()

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    # ----- saving and loading ------------------------------------------------------------------------
    def _stacked_paths(self):
        """``[(path of a stacked layer, path of its chain's outermost layer)]``, deepest first."""
        pairs = [(path + ".base_layer" * depth, path) for path, chain in layer_chains(self)
                 for depth in range(1, len(chain))]
        return sorted(pairs, key=lambda pair: -len(pair[0]))

    @staticmethod
    def _single_method_key(key, stacked):
        """``key`` as a model with only this adapter's method names it: the ``.base_layer`` hops through the other
        methods' layers stacked on top removed."""
        for inner, outer in stacked:
            if key.startswith(inner + "."):
                return outer + key[len(inner):]
        return key

    def save_pretrained(self, save_directory, selected_adapters=None, **kwargs):
        """Write each adapter as a single-method adapter folder (``adapter_config.json`` +
        ``adapter_model.safetensors``, HF peft's key names), laid out as :meth:`PeftModel.save_pretrained` does:
        ``default`` in ``save_directory``, the others in sub-folders named after them. The folder is replaced as a
        whole."""
        if os.path.isfile(save_directory):
            raise ValueError(f"Provided path ({save_directory}) should be a directory, not a file")
        if selected_adapters is None:
            names = list(self.peft_config)
        else:
            names = [selected_adapters] if isinstance(selected_adapters, str) else list(selected_adapters)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown or not names:
            raise ValueError(f"You passed an invalid `selected_adapters` arguments, current supported adapter "
                             f"names are {list(self.peft_config)} - got {unknown or names}.")
        stacked = self._stacked_paths()
        files = {}
        for name in names:
            if name != "default" and (os.path.basename(name) != name or name in ("", ".", "..")):
                raise ValueError(f"Adapter {name!r} cannot be saved: its name is not a valid folder name")
            weights = {self._single_method_key(k, stacked): v
                       for k, v in get_peft_model_state_dict(self, adapter_name=name).items()}
            overrides = {"inference_mode": True}
            if self.peft_config[name].task_type is None:
                overrides["auto_mapping"] = PeftModel._auto_mapping(self)
            files["" if name == "default" else name] = (weights, self.peft_config[name].to_json_string(
                **{**kwargs, **overrides}))
        with atomic_directory(save_directory) as staging:
            for folder, (weights, text) in files.items():
                save_peft_weights(weights, os.path.join(staging, folder))
                write_text(os.path.join(staging, folder, CONFIG_NAME), text)

    def _load_weights(self, weights, adapter_name, is_trainable, strict=True):
        stacked = self._stacked_paths()
        model_keys = {}
        for key, _ in self.parameters_and_names():
            key = remove_adapter_name(key, adapter_name)
            model_keys.setdefault(self._single_method_key(key, stacked), key)
        set_peft_model_state_dict(self, {model_keys.get(k, k): v for k, v in weights.items()}, adapter_name,
                                  strict=strict)
        if not is_trainable:
            self.base_model._freeze_adapter(adapter_name)
            self.set_train(False)

    @classmethod
    def from_pretrained(cls, model, model_id, adapter_name="default", is_trainable=False, config=None, strict=True,
                        **kwargs):
        """Wrap ``model`` with the adapter in ``model_id`` (a folder or cached hub id, saved by HF peft or
        mindpeft); add more with :meth:`load_adapter`. A refused load leaves ``model`` as it was."""
        folder = resolve_folder(model_id, kwargs.pop("revision", None), kwargs.pop("subfolder", None))
        if config is None:
            config = PeftConfig.from_pretrained(folder, **kwargs)
        check_config_compatible(config)
        weights = load_peft_weights(folder)
        config.inference_mode = not is_trainable
        with unchanged_on_error(model):
            mixed = cls(model, config, adapter_name)
            mixed._load_weights(weights, adapter_name, is_trainable, strict)
        return mixed

    def load_adapter(self, model_id, adapter_name, is_trainable=False, strict=True, **kwargs):
        """Load the adapter in ``model_id`` as the new adapter ``adapter_name`` of any compatible method (not
        activated). A refused load leaves the model as it was."""
        if adapter_name in self.peft_config:
            raise ValueError(f"Adapter with name '{adapter_name}' already exists.")
        folder = resolve_folder(model_id, kwargs.pop("revision", None), kwargs.pop("subfolder", None))
        config = PeftConfig.from_pretrained(folder, **kwargs)
        check_config_compatible(config)
        config.inference_mode = not is_trainable
        weights = load_peft_weights(folder)
        with unchanged_on_error(self, new_adapter=adapter_name):
            self.add_adapter(adapter_name, config)
            self._load_weights(weights, adapter_name, is_trainable, strict)
