"""``LoraModel``: injects LoRA layers into a Cell model (modules, and bare Parameters with ``target_parameters``),
runs mixed adapter batches, and combines, merges, converts and removes adapters."""
import dataclasses
import math
import os
import warnings
from contextlib import contextmanager

import numpy as np

from ...models.modeling_utils import write_parameter
from ...utils.constants import CONFIG_NAME, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from ...utils.io import write_text
from ...utils.other import ModulesToSaveWrapper, get_submodules, replace_child
from ..tuners_utils import BaseTuner, BaseTunerLayer, get_pattern_key
from .initialization import converted_config_values, lora_from_mutated_adapter, mutates_base_weight
from .layer import LoraLayer, MultiheadAttention, dispatch_lora_layer
from .mixed_batch import BASE, AdapterRows, check_adapter_names
from .param_wrapper import ParamWrapper, release_module


class LoraModel(BaseTuner):
    """Creates a LoRA model from a base model (see :class:`LoraConfig`)."""

    prefix = "lora_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    @staticmethod
    def _rank_and_alpha(config, key):
        rank_key = get_pattern_key((config.rank_pattern or {}).keys(), key)
        alpha_key = get_pattern_key((config.alpha_pattern or {}).keys(), key)
        r = config.rank_pattern[rank_key] if rank_key else config.r
        return r, config.alpha_pattern[alpha_key] if alpha_key else config.lora_alpha

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        r, alpha = self._rank_and_alpha(config, current_key)
        if isinstance(target, LoraLayer):
            target.update_layer(adapter_name, r, lora_alpha=alpha, config=config)
        else:
            replace_child(parent, target_name, dispatch_lora_layer(target, adapter_name, config, r, alpha))

    def inject_adapter(self, model, adapter_name):
        # target_parameters alone: no module targets (HF peft leaves target_modules None unless the model type has
        # default targets)
        config = self.peft_config[adapter_name]
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        only_parameters = (config.target_modules is None and bool(config.target_parameters)
                           and model_type not in self.target_module_mapping)
        if only_parameters:
            config.target_modules = set()
        try:
            super().inject_adapter(model, adapter_name)
        finally:
            if only_parameters:
                config.target_modules = None

    def _inject_parameters(self, config, model, adapter_name, modules_matched):
        """Wrap each Parameter named by ``config.target_parameters`` (``<module>.<parameter>``, exact or suffix
        match) in a :class:`ParamWrapper`; a second Parameter of the same Cell nests a second wrapper, in the
        Cell's Parameter order, as HF peft does."""
        targets = config.target_parameters
        if not targets:
            return False
        for other_name, other in self.peft_config.items():
            if other is not config and other.target_parameters and set(other.target_parameters) != set(targets):
                raise ValueError("When using multiple adapters with `target_parameters`, all adapters must target the "
                                 f"same set of parameters, but got {sorted(targets)} for the new adapter and "
                                 f"{sorted(other.target_parameters)} for adapter '{other_name}'.")
        found = []
        for key, cell in model.cells_and_names():
            if isinstance(cell, ParamWrapper):
                continue
            module_key = key.replace(".base_layer", "")
            for param_name in cell._params:
                full = f"{module_key}.{param_name}" if module_key else param_name
                if full in targets or any(full.endswith(f".{t}") for t in targets):
                    found.append((module_key, param_name, full))
        for module_key, param_name, full in found:
            self._wrap_parameter(config, adapter_name, model, module_key, param_name, full)
        if not found and not modules_matched and not config.target_modules:
            raise ValueError("No `target_modules` passed but also no `target_parameters` found. Please check the "
                             "values for these arguments.")
        if not found and modules_matched:
            warnings.warn(f"target_parameters={config.target_parameters} were set but no parameter was matched.",
                          RuntimeWarning)
        return bool(found)

    def _wrap_parameter(self, config, adapter_name, model, module_key, param_name, full_key):
        if not module_key:
            raise ValueError(f"Targeting an nn.Parameter on the top-level module is not supported (parameter "
                             f"'{param_name}'). ")
        parent, target, target_name = get_submodules(model, module_key)
        if isinstance(target, BaseTunerLayer) and not isinstance(target, ParamWrapper):
            raise ValueError(f"Trying to wrap an `nn.Parameter` of layer '{module_key}' of type "
                             f"{type(target).__name__}, which is not a valid target. Make sure that this layer is not "
                             "also targeted with `target_modules`. For some models, PEFT will do this automatically, "
                             "try setting `target_modules=[]` to prevent it.")
        r, alpha = self._rank_and_alpha(config, full_key)
        wrapper = target
        while isinstance(wrapper, ParamWrapper) and wrapper.parameter_name != param_name:
            wrapper = wrapper.base_layer
        if isinstance(wrapper, ParamWrapper):  # a further adapter on an already wrapped Parameter
            wrapper.update_layer(adapter_name, r, lora_alpha=alpha, config=config)
        else:
            replace_child(parent, target_name, ParamWrapper(target, adapter_name, param_name, config, r, alpha))

    def _unload_and_optionally_merge(self, merge, safe_merge=False, adapter_names=None):
        # A MultiheadAttention layer holds its out_proj's LoRA layer inside its base layer: that one goes first.
        for _, layer in self.tuner_layers():
            if isinstance(layer, MultiheadAttention):
                layer.release_out_proj(merge, safe_merge, adapter_names)
        wrapped = [layer.get_base_layer() for _, layer in self.tuner_layers() if isinstance(layer, ParamWrapper)]
        model = super()._unload_and_optionally_merge(merge, safe_merge, adapter_names)
        for module in wrapped:
            release_module(module)
        return model

    @contextmanager
    def mixed_adapter_batch(self, adapter_names, batch_size=None):
        """Inside the block, row ``i`` of the model's inputs runs with adapter ``adapter_names[i]`` only
        (``"__base__"``: the base model), as HF peft's ``adapter_names`` at inference; ``PeftModel(...,
        adapter_names=...)`` and ``PeftModel.generate(..., adapter_names=...)`` use it. A function compiled with
        ``mindspore.jit`` inside the block keeps running mixed batches, reading the rows of the block it is called
        in (for the batch size it was compiled for). HF peft's refusals: training mode, unknown adapters, a length
        other than ``batch_size``, merged adapters, DoRA, MultiheadAttention and ParamWrapper layers."""
        if not self.adapters_enabled:  # HF peft: adapters off, names ignored
            yield
            return
        from ..trainable_tokens.layer import TrainableTokensLayer
        from ..trainable_tokens.model import implicit_tied_heads

        layers = [layer for _, layer in self.tuner_layers()]
        known = set()
        for layer in layers:
            known.update(getattr(layer, "lora_A", {}).keys(), getattr(layer, "lora_embedding_A", {}).keys())
        check_adapter_names(adapter_names, known, self.training, batch_size)
        for layer in layers:
            if not isinstance(layer, (LoraLayer, TrainableTokensLayer)):
                raise TypeError(f"{type(layer).__name__} layers do not support mixed adapter batches.")
            layer._check_mixed_batch(adapter_names)
            if isinstance(layer, TrainableTokensLayer) and "lm_head" in implicit_tied_heads(self.model, layer):
                raise ValueError(f"{type(self.model).__name__} computes its logits from the input embedding's "
                                 "weight, which holds one adapter's trainable tokens for the whole batch: mixed "
                                 "adapter batches with trainable_token_indices on it are not supported; run one "
                                 "batch per adapter")
        # modules_to_save copies and trainable tokens take part too: each row gets its adapter's copy / rows
        cells = layers + [cell for _, cell in self.model.cells_and_names() if isinstance(cell, ModulesToSaveWrapper)]
        order = list(self.peft_config)
        rows = self.__dict__.get("_adapter_rows")
        if rows is None:
            rows = self._adapter_rows = AdapterRows()
        rows.write([0 if name == BASE else order.index(name) + 1 for name in adapter_names])
        for cell in cells:
            cell._mixed_rows = rows
            cell._mixed_adapters = tuple((order.index(name) + 1, name) for name in cell.mixed_batch_adapters()
                                         if name in order)
        try:
            yield
        finally:
            for cell in cells:
                cell._mixed_rows, cell._mixed_adapters = None, ()

    def convert_mutated_adapter(self, peft_model, adapter_name, state_dict, path_initial_model):
        """``(state dict, config values)`` of ``adapter_name`` (a trained PiSSA/OLoRA adapter, ``state_dict`` its
        saved tensors) as a plain LoRA adapter of rank 2r for the original base weights, HF peft's
        ``save_pretrained(path_initial_model_for_weight_conversion=...)``: the adapter as first initialised is
        read from ``path_initial_model`` (its config rewritten with ``init_lora_weights=True`` there, as HF peft
        does, so loading it leaves the base weights alone) and subtracted (see
        :func:`.initialization.lora_from_mutated_adapter`)."""
        from ...utils.save_and_load import get_peft_model_state_dict

        config = self.peft_config[adapter_name]
        if config.use_rslora and (config.rank_pattern or config.alpha_pattern):
            raise ValueError("Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not "
                             "supported when using `rank_pattern` or `alpha_pattern` at the same time as "
                             "`use_rslora=True`.")
        if not (mutates_base_weight(config.init_lora_weights) or config.init_lora_weights is True):
            warnings.warn("`path_initial_model_for_weight_conversion` only works for converting a "
                          "PiSSA/CorDA/OLoRA/LoRA-GA adapter to a LoRA adapter")
        write_text(os.path.join(path_initial_model, CONFIG_NAME),
                   config.to_json_string(init_lora_weights=True))
        initial_name = os.path.basename(os.path.normpath(path_initial_model))
        was_training = peft_model.training
        peft_model.load_adapter(path_initial_model, adapter_name=initial_name)
        try:
            initial = get_peft_model_state_dict(peft_model, adapter_name=initial_name)
        finally:
            peft_model.delete_adapter(initial_name)
            peft_model.set_train(was_training)
        return lora_from_mutated_adapter(state_dict, initial), converted_config_values(config)

    def _check_add_weighted_adapter(self, adapters, combination_type, svd_rank):
        for adapter in adapters:
            if adapter not in self.peft_config:
                raise ValueError(f"Adapter {adapter} does not exist")
            config = self.peft_config[adapter]
            if config.use_dora or config.lora_bias or config.target_parameters:
                raise ValueError(f"add_weighted_adapter combines plain LoRA adapters only; adapter {adapter!r} uses "
                                 "use_dora=True, lora_bias=True or target_parameters")
        wrappers = [c for _, c in self.model.cells_and_names() if isinstance(c, ModulesToSaveWrapper)]
        if any(sum(a in w.adapter_names() for a in adapters) > 1 for w in wrappers):
            raise ValueError("Cannot add weighted adapters if they target the same module with modules_to_save")
        combination_type = "linear" if len(adapters) == 1 else combination_type
        ranks = [max([c.r, *(c.rank_pattern or {}).values()]) for c in (self.peft_config[a] for a in adapters)]
        if combination_type == "linear":
            if len(set(ranks)) != 1:
                raise ValueError("All adapters must have the same r value when using combination_type linear")
            new_rank = ranks[0]
        elif combination_type == "cat":
            new_rank = sum(ranks)
        elif combination_type == "svd":
            new_rank = svd_rank or max(ranks)
        else:
            raise ValueError(f"Invalid combination_type {combination_type!r}; mindpeft supports 'linear', 'cat' "
                             "and 'svd'")
        target_types = {type(self.peft_config[a].target_modules) for a in adapters}
        if len(target_types) > 1:
            raise ValueError("all adapter configs should follow the same target modules type. Combining adapters "
                             "with `target_modules` type being a mix of list/set and string is not supported.")
        if target_types == {str}:
            new_targets = "|".join(f"({self.peft_config[a].target_modules})" for a in adapters)
        else:
            new_targets = set().union(*(self.peft_config[a].target_modules for a in adapters))
        return combination_type, new_rank, new_targets

    def add_weighted_adapter(self, adapters, weights, adapter_name, combination_type="svd", svd_rank=None,
                             svd_clamp=None, svd_full_matrices=True):
        """Add ``adapter_name``, a weighted combination of ``adapters`` (same semantics as HF peft).

        ``linear`` mixes the A and B matrices (equal ranks needed), ``cat`` stacks them (exact sum of deltas),
        ``svd`` takes a rank-``svd_rank`` SVD of the weighted sum of delta weights.
        """
        if adapter_name in self.peft_config:
            return
        if len(adapters) != len(weights):
            raise ValueError(f"Got {len(adapters)} adapters but {len(weights)} weights")
        combination_type, new_rank, new_targets = self._check_add_weighted_adapter(adapters, combination_type,
                                                                                   svd_rank)
        self.peft_config[adapter_name] = dataclasses.replace(
            self.peft_config[adapters[0]], r=new_rank, lora_alpha=new_rank, target_modules=new_targets,
            alpha_pattern={}, rank_pattern={})
        self.inject_adapter(self.model, adapter_name)
        self._freeze_adapter(adapter_name)
        for _, layer in self.tuner_layers():
            if adapter_name in layer.lora_A:
                a_param, b_param = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            elif adapter_name in layer.lora_embedding_A:
                a_param, b_param = layer.lora_embedding_A[adapter_name], layer.lora_embedding_B[adapter_name]
            else:
                continue
            present = [(a, w) for a, w in zip(adapters, weights) if a in layer.adapter_names()]
            if not present:
                continue
            if combination_type == "svd":
                new_a, new_b = self._svd_combination(layer, present, new_rank, svd_clamp, svd_full_matrices,
                                                     a_param.shape, b_param.shape)
            else:
                new_a, new_b = self._factor_combination(layer, present, combination_type, a_param.shape,
                                                        b_param.shape)
            write_parameter(a_param, np.ascontiguousarray(new_a, np.float32))
            write_parameter(b_param, np.ascontiguousarray(new_b, np.float32))
        self._bump()

    @staticmethod
    def _factors(layer, adapter):
        if adapter in layer.lora_A:
            return layer.lora_A[adapter].weight.asnumpy(), layer.lora_B[adapter].weight.asnumpy()
        return layer.lora_embedding_A[adapter].asnumpy(), layer.lora_embedding_B[adapter].asnumpy()

    def _factor_combination(self, layer, present, combination_type, a_shape, b_shape):
        if combination_type == "cat":
            new_a, new_b = np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32)
            a_list, b_list = [], []
            for adapter, weight in present:
                a, b = self._factors(layer, adapter)
                a_list.append(a * weight * layer.scaling[adapter])
                b_list.append(b)
            a_cat, b_cat = np.concatenate(a_list, 0), np.concatenate(b_list, 1)
            new_a[: a_cat.shape[0]] = a_cat
            new_b[:, : b_cat.shape[1]] = b_cat
            return new_a, new_b
        new_a, new_b = 0.0, 0.0
        for adapter, weight in present:
            a, b = self._factors(layer, adapter)
            scaled = weight * layer.scaling[adapter]
            new_a = new_a + math.copysign(math.sqrt(abs(scaled)), scaled) * a
            new_b = new_b + math.sqrt(abs(scaled)) * b
        return new_a, new_b

    @staticmethod
    def _svd_combination(layer, present, new_rank, clamp, full_matrices, a_shape, b_shape):
        delta = sum(w * layer.delta_weight(a).astype(np.float64) for a, w in present)
        if getattr(layer, "fan_in_fan_out", False) or present[0][0] in layer.lora_embedding_A:
            delta = delta.T
        delta = delta.reshape(delta.shape[0], -1)  # convolutions: (out, in * kernel)
        u, s, vh = np.linalg.svd(delta, full_matrices=full_matrices)
        u = u[:, :new_rank] @ np.diag(s[:new_rank])
        vh = vh[:new_rank, :]
        if clamp is not None:
            high = np.quantile(np.concatenate([u.ravel(), vh.ravel()]), clamp)
            u, vh = np.clip(u, -high, high), np.clip(vh, -high, high)
        return vh.reshape(a_shape), u.reshape(b_shape)
