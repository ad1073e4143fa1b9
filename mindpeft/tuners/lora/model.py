"""``LoraModel``: injects LoRA layers into a Cell model and combines, merges and removes adapters."""
import dataclasses
import math

import numpy as np

from ...models.modeling_utils import write_parameter
from ...utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from ...utils.other import ModulesToSaveWrapper, replace_child
from ..tuners_utils import BaseTuner, get_pattern_key
from .layer import LoraLayer, MultiheadAttention, dispatch_lora_layer


class LoraModel(BaseTuner):
    """Creates a LoRA model from a base model (see :class:`LoraConfig`)."""

    prefix = "lora_"
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        rank_key = get_pattern_key((config.rank_pattern or {}).keys(), current_key)
        alpha_key = get_pattern_key((config.alpha_pattern or {}).keys(), current_key)
        r = config.rank_pattern[rank_key] if rank_key else config.r
        alpha = config.alpha_pattern[alpha_key] if alpha_key else config.lora_alpha
        if isinstance(target, LoraLayer):
            target.update_layer(adapter_name, r, lora_alpha=alpha, config=config)
        else:
            replace_child(parent, target_name, dispatch_lora_layer(target, adapter_name, config, r, alpha))

    def _mark_only_adapters_as_trainable(self, model):
        for name, param in model.parameters_and_names():
            if self.prefix not in name and ".modules_to_save." not in name:
                param.requires_grad = False
        for adapter in self.active_adapters:
            bias = self.peft_config[adapter].bias
            if bias == "all":
                for name, param in model.parameters_and_names():
                    if "bias" in name and ".original_module." not in name:
                        param.requires_grad = True
            elif bias == "lora_only":
                for _, layer in self.tuner_layers():
                    base = layer.get_base_layer()
                    if getattr(base, "bias", None) is not None:
                        base.bias.requires_grad = True

    def _unload_and_optionally_merge(self, merge, safe_merge=False, adapter_names=None):
        # A MultiheadAttention layer holds its out_proj's LoRA layer inside its base layer: that one goes first.
        for _, layer in self.tuner_layers():
            if isinstance(layer, MultiheadAttention):
                layer.release_out_proj(merge, safe_merge, adapter_names)
        return super()._unload_and_optionally_merge(merge, safe_merge, adapter_names)

    def _check_add_weighted_adapter(self, adapters, combination_type, svd_rank):
        for adapter in adapters:
            if adapter not in self.peft_config:
                raise ValueError(f"Adapter {adapter} does not exist")
            if self.peft_config[adapter].use_dora or self.peft_config[adapter].lora_bias:
                raise ValueError(f"add_weighted_adapter combines plain LoRA adapters only; adapter {adapter!r} uses "
                                 "use_dora=True or lora_bias=True")
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

