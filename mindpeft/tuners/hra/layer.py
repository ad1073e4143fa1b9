"""HRA layers: the base weight times a chain of trained Householder reflections."""
import math
import warnings

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ...models.layers import linear
from ..tuners_utils import BaseTunerLayer, ParameterDict


def _unit(vector):
    return vector / ops.sqrt((vector * vector).sum())


class HRALayer(nn.Cell, BaseTunerLayer):
    """HRA around a layer whose weight, flattened to (out, ``rows``), multiplies ``H_1 ... H_r`` (``rows`` x
    ``rows``); ``hra_u`` (rows, r), HF peft's name and shape. Subclasses give ``rows`` and implement
    ``apply_weight(x, weight)``."""

    adapter_layer_names = ("hra_u",)
    other_param_names = ("hra_r", "hra_apply_GS")

    def __init__(self, base_layer, adapter_name, r, config, rows):
        super().__init__()
        self._init_tuner_layer(base_layer)
        self.rows = rows
        self.hra_u = ParameterDict()
        self.hra_r = {}
        self.hra_apply_GS = {}
        self.has_bias = getattr(base_layer, "bias", None) is not None
        self.update_layer(adapter_name, r, config)

    def update_layer(self, adapter_name, r, config):
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.hra_r[adapter_name] = r
        self.hra_apply_GS[adapter_name] = config.apply_GS
        if config.init_weights and r % 2 == 0:
            # Equal neighbouring vectors: each pair of reflections cancels, so the adapter starts as the identity.
            half = np.random.uniform(-1 / math.sqrt(r // 2), 1 / math.sqrt(r // 2), (self.rows, r // 2))
            u = np.repeat(half, 2, axis=1)
        else:
            if config.init_weights:
                warnings.warn("The symmetric initialization can NOT be performed when r is odd!")
            u = np.random.uniform(-1 / math.sqrt(r), 1 / math.sqrt(r), (self.rows, r))
        self.hra_u[adapter_name] = Parameter(Tensor(u.astype(np.float32)))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def reflect(self, weight, adapter_name, reverse=False):
        """``weight`` (out, rows) times the adapter's reflections (their inverse if ``reverse``), as MindSpore ops."""
        u = getattr(self.hra_u, adapter_name)
        r = self.hra_r[adapter_name]
        if self.hra_apply_GS[adapter_name]:
            # Orthonormal vectors: the reflections commute into one symmetric, self-inverse I - 2 Q Q^T.
            basis = []
            for i in range(r):
                column = u[:, i:i + 1]
                for previous in basis:
                    column = column - (previous * column).sum() * previous
                basis.append(_unit(column))
            q = ops.concat(basis, 1)
            return weight - 2 * ops.matmul(ops.matmul(weight, q), q.T)
        u = u / ops.sqrt((u * u).sum(0, keepdims=True))
        for i in (range(r - 1, -1, -1) if reverse else range(r)):
            column = u[:, i:i + 1]
            weight = weight - 2 * ops.matmul(ops.matmul(weight, column), column.T)
        return weight

    def _flat_weight(self):
        weight = self.base_layer.weight
        return weight.view(weight.shape[0], -1)

    def _merge_into(self, value, adapter_name):
        """The base weight multiplied by the adapter's reflections."""
        return self._reflected(value, adapter_name, False)

    def _unmerge_from(self, value, adapter_name):
        """The base weight multiplied by the adapter's inverse reflections."""
        return self._reflected(value, adapter_name, True)

    def _reflected(self, value, adapter_name, reverse):
        flat = Tensor(value.reshape(value.shape[0], -1))
        return self.reflect(flat, adapter_name, reverse=reverse).asnumpy().reshape(value.shape)

    def construct(self, x):
        if self.disable_adapters or self.merged_adapters or not self._active_in_layer:
            return self.base_layer(x)
        weight = self._flat_weight()
        for name in self._active_in_layer:
            weight = self.reflect(weight, name)
        return self.apply_weight(x, weight.astype(x.dtype))

    def apply_weight(self, x, weight):
        raise NotImplementedError


class HRALinear(HRALayer):
    """HRA around ``Linear``/``mindspore.nn.Dense``: ``hra_u`` (in_features, r)."""

    def __init__(self, base_layer, adapter_name, r, config):
        if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
            raise ValueError("HRA cannot wrap a mindspore.nn.Dense that has an activation; split the activation "
                             "into its own Cell")
        super().__init__(base_layer, adapter_name, r, config, rows=base_layer.weight.shape[1])

    def apply_weight(self, x, weight):
        return linear(x, weight, self.base_layer.bias if self.has_bias else None)


class HRAConv2d(HRALayer):
    """HRA around ``mindspore.nn.Conv2d`` (NCHW, square kernel, one group): ``hra_u`` (in_channels * k * k, r),
    the weight flattened as HF peft flattens torch's (out, in, k, k)."""

    def __init__(self, base_layer, adapter_name, r, config):
        if base_layer.group > 1:
            raise NotImplementedError(f"HRA does not support {type(base_layer).__name__} layers with groups > 1 "
                                      f"(got groups={base_layer.group}).")
        if base_layer.kernel_size[0] != base_layer.kernel_size[1] or base_layer.data_format != "NCHW":
            raise ValueError(f"HRA supports Conv2d layers with a square kernel in NCHW format, got kernel_size="
                             f"{base_layer.kernel_size} and data_format={base_layer.data_format!r}")
        rows = base_layer.in_channels * base_layer.kernel_size[0] ** 2
        super().__init__(base_layer, adapter_name, r, config, rows)

    def apply_weight(self, x, weight):
        base = self.base_layer
        out = base.conv2d(x, weight.view(base.weight.shape))
        return base.bias_add(out, base.bias) if self.has_bias else out
