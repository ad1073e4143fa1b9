"""VeRA layers: trained scaling vectors around frozen random projections shared by the whole model."""
import numpy as np
from mindspore import Parameter, Tensor, nn

from ...models.layers import Conv1D, Dropout, linear
from ..tuners_utils import BaseTunerLayer, ParameterDict, layer_features


class VeraProjection(ParameterDict):
    """The model-wide ``vera_A`` or ``vera_B`` of each adapter, held by :class:`VeraModel`; layers read it without
    owning it. ``adapter_parameter_names`` puts it in the adapter's state dict under HF peft's key
    (``base_model.vera_A``), unless the config says ``save_projection=False``.
    """

    def __init__(self):
        super().__init__()
        self.persistent = True

    def adapter_parameter_names(self, adapter_name):
        return [adapter_name] if self.persistent and adapter_name in self else []

    def delete_adapter(self, adapter_name):
        if adapter_name in self:
            del self[adapter_name]


class Linear(nn.Cell, BaseTunerLayer):
    """VeRA around ``Linear``/``mindspore.nn.Dense``/GPT-2 ``Conv1D``:
    ``base(x) + lambda_b * (B[:out] (lambda_d * (A[:, :in] dropout(x))))``; ``vera_lambda_b`` (out,) and
    ``vera_lambda_d`` (r,), HF peft's names and shapes."""

    adapter_layer_names = ("vera_lambda_b", "vera_lambda_d")
    other_param_names = ("vera_dropout", "r")

    def __init__(self, base_layer, vera_A, vera_B, adapter_name, config):
        super().__init__()
        if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
            raise ValueError("VeRA cannot wrap a mindspore.nn.Dense that has an activation; split the activation "
                             "into its own Cell")
        self._init_tuner_layer(base_layer)
        self.vera_lambda_b = ParameterDict()
        self.vera_lambda_d = ParameterDict()
        self.vera_dropout = nn.CellDict()
        self.r = {}
        # The model owns the projections (their parameters are named base_model.vera_A.<adapter>); a plain
        # attribute keeps them out of this layer's parameters.
        object.__setattr__(self, "vera_A", vera_A)
        object.__setattr__(self, "vera_B", vera_B)
        self.in_features, self.out_features = layer_features(base_layer)
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name, config):
        r = config.r
        projection_a, projection_b = self.vera_A[adapter_name], self.vera_B[adapter_name]
        too_small = "{} has a size of {} but {} or greater is required; this probably happened because an additional "
        if projection_a.shape[1] < self.in_features:
            raise ValueError(too_small.format("vera_A", projection_a.shape[1], self.in_features) + "VeRA adapter was "
                             "added after the first one with incompatible shapes.")
        if projection_b.shape[0] < self.out_features:
            raise ValueError(too_small.format("vera_B", projection_b.shape[0], self.out_features) + "VeRA adapter was "
                             "added after the first one with incompatible shapes.")
        if projection_a.shape[0] < r:
            raise ValueError(too_small.format("vera_A", projection_a.shape[0], r) + "VeRA adapter with a lower rank "
                             "was added after the first one; loading the adapters in reverse order may solve this.")
        if projection_a.shape[0] > r:  # HF peft accepts this, then fails in forward on the shape mismatch
            raise ValueError(f"VeRA adapter {adapter_name!r} has r={r} but the shared projections have rank "
                             f"{projection_a.shape[0]} (the first adapter's r): all VeRA adapters of a model need the "
                             "same r")
        self.r[adapter_name] = r
        self.vera_dropout[adapter_name] = Dropout(config.vera_dropout)
        if config.init_weights:
            lambda_b = np.zeros(self.out_features, np.float32)
            lambda_d = np.full(r, config.d_initial, np.float32)
        else:
            lambda_b = np.ones(self.out_features, np.float32)
            lambda_d = np.random.standard_normal(r).astype(np.float32)
        self.vera_lambda_b[adapter_name] = Parameter(Tensor(lambda_b))
        self.vera_lambda_d[adapter_name] = Parameter(Tensor(lambda_d))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def get_delta_weight(self, adapter_name):
        """The adapter's weight update (numpy), shaped like the base weight."""
        lambda_b = self.vera_lambda_b[adapter_name].asnumpy()[:, None]
        lambda_d = self.vera_lambda_d[adapter_name].asnumpy()[:, None]
        projection_a = self.vera_A[adapter_name].asnumpy()[:, : self.in_features]
        projection_b = self.vera_B[adapter_name].asnumpy()[: self.out_features]
        delta = (lambda_b * projection_b) @ (lambda_d * projection_a)
        return delta.T if self.fan_in_fan_out else delta

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        for name in self._active_in_layer:
            projection_a = getattr(self.vera_A, name)[:, : self.in_features]
            projection_b = getattr(self.vera_B, name)[: self.out_features]
            hidden = linear(self.vera_dropout[name](x), projection_a) * getattr(self.vera_lambda_d, name)
            out = linear(hidden, projection_b) * getattr(self.vera_lambda_b, name)
            result = result + out.astype(result.dtype)
        return result
