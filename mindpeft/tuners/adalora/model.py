"""``AdaLoraModel``: SVD-form LoRA with orthogonal regularisation and training-time rank allocation."""
import numpy as np
from mindspore import ops

from ...models.modeling_utils import sync_parameter_names
from ...utils.constants import TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING
from ...utils.other import get_submodules, replace_child
from ..lora.model import LoraModel
from .layer import RankAllocator, SVDLinear, dispatch_adalora_layer


class AdaLoraModel(LoraModel):
    """Creates an AdaLoRA model from a base model (see :class:`AdaLoraConfig`).

    When the wrapped model returns a ``loss``, ``orth_reg_weight`` times the mean Frobenius distance of
    ``A A^T`` and ``B^T B`` from the identity is added to it. Call ``update_and_allocate(step, grads)`` after
    every optimizer step (``grads``: ``{parameter name: gradient}`` or the list matching ``trainable_params()``).
    """

    target_module_mapping = TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING

    def __init__(self, model, peft_config, adapter_name):
        super().__init__(model, peft_config, adapter_name)
        trainable = [name for name, c in self.peft_config.items() if not c.inference_mode]
        self.trainable_adapter_name = trainable[0] if trainable else None
        if self.trainable_adapter_name is not None:
            self.rankallocator = RankAllocator(self.model, self.peft_config[adapter_name], adapter_name)
        self._refresh_orth_params()

    def inject_adapter(self, model, adapter_name):
        if sum(not c.inference_mode for c in self.peft_config.values()) > 1:
            raise ValueError("AdaLoraModel supports only 1 trainable adapter. When using multiple adapters, set "
                             "inference_mode to True for all adapters except the one you want to train.")
        super().inject_adapter(model, adapter_name)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if isinstance(target, SVDLinear):
            target.update_layer(adapter_name, config.init_r, config.lora_alpha, config.lora_dropout,
                                config.init_lora_weights)
        else:
            layer = dispatch_adalora_layer(target, adapter_name, config, config.init_r, config.lora_alpha)
            replace_child(parent, target_name, layer)

    def _refresh_orth_params(self):
        """The (A, B) parameters of the trainable adapter, for the regulariser (kept out of the Cell tree)."""
        name = getattr(self, "trainable_adapter_name", None)
        pairs = []
        for _, layer in self.tuner_layers():
            if name is not None and name in layer.lora_A and layer.r[name] > 0:
                pairs.append((layer.lora_A[name], layer.lora_B[name]))
        object.__setattr__(self, "_orth_params", tuple(pairs))

    def orthogonal_regularization(self):
        """Mean over A and B matrices of ||A A^T - I||_F and ||B^T B - I||_F."""
        total = 0.0
        for a, b in self._orth_params:
            cov_a = ops.matmul(a, a.T)
            cov_b = ops.matmul(b.T, b)
            total = total + ops.norm(cov_a - ops.eye(cov_a.shape[0], cov_a.shape[0], cov_a.dtype))
            total = total + ops.norm(cov_b - ops.eye(cov_b.shape[0], cov_b.shape[0], cov_b.dtype))
        return total / (2 * len(self._orth_params))

    def construct(self, *args, **kwargs):
        outputs = self.model(*args, **kwargs)
        if "loss" in outputs and self._orth_params:
            weight = self.peft_config[self.trainable_adapter_name].orth_reg_weight
            if weight <= 0:
                raise ValueError("orth_reg_weight should be greater than 0. ")
            outputs["loss"] = outputs["loss"] + weight * self.orthogonal_regularization()
        return outputs

    def update_and_allocate(self, global_step, grads):
        """Update importance scores and prune singular values to the step's budget.

        Args:
            global_step: the training step just taken (0-based, as in HF peft).
            grads: ``{parameter name: gradient}`` or a list of gradients in ``trainable_params()`` order.
        """
        config = self.peft_config[self.trainable_adapter_name]
        grads = self._grads_by_model_name(grads)
        if global_step < config.total_step - config.tfinal:
            _, rank_pattern = self.rankallocator.update_and_allocate(self.model, global_step, grads)
            if rank_pattern:
                config.rank_pattern = rank_pattern
        elif global_step == config.total_step - config.tfinal:
            _, rank_pattern = self.rankallocator.update_and_allocate(self.model, global_step, grads, force_mask=True)
            config.rank_pattern = rank_pattern
            self.rankallocator.reset_ipt()
        elif global_step > config.total_step - config.tfinal:
            self.rankallocator.mask_using_rank_pattern(self.model, config.rank_pattern)

    def _grads_by_model_name(self, grads):
        """Gradients keyed by parameter names relative to ``self.model`` (the allocator's naming)."""
        if isinstance(grads, dict):
            items = grads.items()
        else:
            params = self.trainable_params()
            if len(params) != len(grads):
                raise ValueError(f"Got {len(grads)} gradients for {len(params)} trainable parameters")
            items = zip([p.name for p in params], grads)
        out = {}
        for name, grad in items:
            for prefix in ("base_model.model.", "model."):
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            out[name] = grad.asnumpy() if hasattr(grad, "asnumpy") else np.asarray(grad)
        return out

    # ----- saving and loading with a rank pattern (HF peft's format) -----------------------------------
    def _postprocess_state_dict(self, state_dict, adapter_name):
        """Drop pruned ranks from the saved tensors and key the config's rank pattern without adapter name."""
        config = self.peft_config[adapter_name]
        if config.rank_pattern is None:
            return state_dict
        config.rank_pattern = {k.replace(f".{adapter_name}", ""): v for k, v in config.rank_pattern.items()}
        for name, kept in config.rank_pattern.items():
            prefix = "base_model.model." + name.rsplit(".", 1)[0]
            keep = np.array(kept, dtype=bool)
            for part in ("lora_E", "lora_A", "lora_B"):
                key = f"{prefix}.{part}"
                value = state_dict[key]
                rank_axis = 1 if part == "lora_B" else 0
                if value.shape[rank_axis] == keep.size:  # layers loaded from a pruned adapter are already cut
                    state_dict[key] = value[:, keep] if part == "lora_B" else value[keep]
        return state_dict

    def _prepare_for_loading(self, adapter_name):
        """Shrink each layer to the ranks its rank pattern keeps (``ranknum`` stays the initial rank)."""
        config = self.peft_config[adapter_name]
        for name, kept in (config.rank_pattern or {}).items():
            key = name.rsplit(".", 1)[0]
            if key.endswith(f".{adapter_name}"):
                key = key.rsplit(".", 1)[0].rsplit(".", 1)[0]
            _, layer, _ = get_submodules(self.model, key)
            ranknum = float(layer.ranknum[adapter_name].asnumpy()[0])
            layer.update_layer(adapter_name, int(sum(kept)), config.lora_alpha, config.lora_dropout, True, ranknum)
        sync_parameter_names(self.model)
        self._refresh_orth_params()
        self._bump()
