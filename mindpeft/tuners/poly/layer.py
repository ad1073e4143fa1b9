"""The Poly layer: ``base(x) + x @ A_mix @ B_mix / r``, with A and B mixed from a skill inventory per sample."""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ..tuners_utils import BaseTunerLayer, ParameterDict, layer_features
from .router import PolyRouter


def _kaiming_uniform_stack(n_splits, n_skills, fan_in, fan_out):
    """(n_splits, n_skills, fan_in, fan_out) of transposed torch ``kaiming_uniform_(a=sqrt(5))`` (fan_out, fan_in)
    matrices: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), HF peft's initialisation."""
    bound = 1.0 / math.sqrt(fan_in)
    return np.random.uniform(-bound, bound, (n_splits, n_skills, fan_in, fan_out)).astype(np.float32)


class PolyLayer(nn.Cell, BaseTunerLayer):
    """Poly around a ``Linear``/``mindspore.nn.Dense`` layer.

    ``poly_lora_A`` (n_splits, n_skills, in / n_splits, r) and ``poly_lora_B`` (n_splits, n_skills, r,
    out / n_splits) hold the skills; ``poly_router`` mixes them per sample. The task ids of the current batch are
    read from ``task_ids``, a Parameter the :class:`PolyModel` writes before each forward (graph mode has no
    forward hooks to pass them in). Poly has no merge: its update differs from task to task.
    """

    adapter_layer_names = ("poly_lora_A", "poly_lora_B", "poly_router")
    other_param_names = ("r", "n_tasks", "n_skills", "n_splits", "poly_type")

    def __init__(self, base_layer, adapter_name, config, task_ids):
        super().__init__()
        if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
            raise ValueError("Poly cannot wrap a mindspore.nn.Dense that has an activation; split the activation "
                             "into its own Cell")
        self._init_tuner_layer(base_layer)
        self.poly_lora_A = ParameterDict()
        self.poly_lora_B = ParameterDict()
        self.poly_router = nn.CellDict()
        for name in self.other_param_names:
            setattr(self, name, {})
        self._task_ids = [task_ids]  # in a list: shared, not registered as this layer's own parameter
        self.in_features, self.out_features = layer_features(base_layer)
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name, config):
        for features, side in ((self.in_features, "in_features"), (self.out_features, "out_features")):
            if features % config.n_splits:
                raise ValueError(f"n_splits ({config.n_splits}) must divide the layer's {side} ({features})")
        self.r[adapter_name] = config.r
        self.n_tasks[adapter_name] = config.n_tasks
        self.n_skills[adapter_name] = config.n_skills
        self.n_splits[adapter_name] = config.n_splits
        self.poly_type[adapter_name] = config.poly_type
        splits, skills, r = config.n_splits, config.n_skills, config.r
        a = _kaiming_uniform_stack(splits, skills, self.in_features // splits, r)
        b = _kaiming_uniform_stack(splits, skills, r, self.out_features // splits)
        if config.init_weights:
            b = np.zeros_like(b)
        self.poly_lora_A[adapter_name] = Parameter(Tensor(a))
        self.poly_lora_B[adapter_name] = Parameter(Tensor(b))
        self.poly_router[adapter_name] = PolyRouter(config)
        self.set_adapter(self.active_adapters or (adapter_name,))

    def merge(self, safe_merge=False, adapter_names=None):
        raise ValueError("Poly adapters cannot be merged: their weight update depends on the task_ids of each "
                         "sample (HF peft has no merge for Poly either)")

    def unmerge(self):
        """Nothing to undo: Poly never merges."""

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters:
            return result
        batch = x.shape[0]
        task_ids = self._task_ids[0][:batch]
        flat = x.reshape(batch, -1, self.in_features)
        for name in self._active_in_layer:
            r = self.r[name]
            weights = self.poly_router[name](task_ids).transpose(1, 0, 2)  # (n_splits, batch, n_skills)
            lora_a = getattr(self.poly_lora_A, name)
            lora_b = getattr(self.poly_lora_B, name)
            splits, skills = lora_a.shape[0], lora_a.shape[1]
            # Mixed per sample: A (batch, in, r) and B (batch, r, out), HF peft's layout of the splits.
            mixed_a = ops.matmul(weights, lora_a.view(splits, skills, -1)).view(splits, batch, -1, r)
            mixed_a = mixed_a.transpose(1, 0, 2, 3).reshape(batch, self.in_features, r)
            mixed_b = ops.matmul(weights, lora_b.view(splits, skills, -1)).view(splits, batch, r, -1)
            mixed_b = mixed_b.transpose(1, 2, 0, 3).reshape(batch, r, self.out_features)
            out = ops.matmul(ops.matmul(flat.astype(mixed_a.dtype), mixed_a), mixed_b) / r
            result = result + out.reshape(result.shape).astype(result.dtype)
        return result


Linear = PolyLayer
