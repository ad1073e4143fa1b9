"""FourierFT layers: the weight update is the real part of the inverse 2-D DFT of a sparse trained spectrum."""
import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ...models.layers import Conv1D, linear
from ...utils.torch_random import TorchCPUGenerator
from ..tuners_utils import BaseTunerLayer, ParameterDict, layer_features


class FourierFTLinear(nn.Cell, BaseTunerLayer):
    """FourierFT around ``Linear``/``mindspore.nn.Dense``/GPT-2 ``Conv1D``: ``base(x) + x delta^T`` with
    ``delta = scaling * Re(ifft2(S))`` (out, in); ``fourierft_spectrum`` (n_frequency,), HF peft's name and shape.

    The spectrum's locations are HF peft's: the first ``n_frequency`` entries of
    ``torch.randperm(out * in, generator=torch.Generator().manual_seed(random_loc_seed))`` (reproduced exactly).
    """

    adapter_layer_names = ("fourierft_spectrum",)
    other_param_names = ("fourierft_n_frequency", "fourierft_scaling", "fourierft_random_loc_seed", "indices")

    def __init__(self, base_layer, adapter_name, n_frequency, config):
        super().__init__()
        if isinstance(base_layer, nn.Dense) and base_layer.activation_flag:
            raise ValueError("FourierFT cannot wrap a mindspore.nn.Dense that has an activation; split the "
                             "activation into its own Cell")
        self._init_tuner_layer(base_layer)
        self.fourierft_spectrum = ParameterDict()
        self.fourierft_n_frequency = {}
        self.fourierft_scaling = {}
        self.fourierft_random_loc_seed = {}
        self.indices = {}  # adapter -> (n_frequency, 2) int32 (row, column) of the spectrum's entries
        self.in_features, self.out_features = layer_features(base_layer)
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.update_layer(adapter_name, n_frequency, config)

    def update_layer(self, adapter_name, n_frequency, config):
        size = self.in_features * self.out_features
        if n_frequency <= 0:
            raise ValueError(f"`n_frequency` should be a positive integer value but the value passed is {n_frequency}")
        if n_frequency > size:
            raise ValueError(f"`n_frequency` should be less than or equal to the product of the input and output "
                             f"dimensions but the value passed is {n_frequency} and the product is {size}")
        flat = TorchCPUGenerator(config.random_loc_seed).randperm_head(size, n_frequency)
        rows_and_columns = np.stack([flat // self.in_features, flat % self.in_features], 1)
        self.indices[adapter_name] = Tensor(rows_and_columns.astype(np.int32))
        self.fourierft_n_frequency[adapter_name] = n_frequency
        self.fourierft_scaling[adapter_name] = config.scaling
        self.fourierft_random_loc_seed[adapter_name] = config.random_loc_seed
        spectrum = np.zeros(n_frequency) if config.init_weights else np.random.standard_normal(n_frequency)
        self.fourierft_spectrum[adapter_name] = Parameter(Tensor(spectrum.astype(np.float32)))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def delta(self, adapter_name):
        """The weight update (out, in) as MindSpore ops."""
        spectrum = getattr(self.fourierft_spectrum, adapter_name).astype(ms.float32)
        dense = ops.scatter_nd(self.indices[adapter_name], spectrum, (self.out_features, self.in_features))
        return ops.real(ops.ifft2(dense)) * self.fourierft_scaling[adapter_name]

    def get_delta_weight(self, adapter_name):
        """The adapter's weight update (numpy), shaped like the base weight."""
        delta = self.delta(adapter_name).asnumpy()
        return delta.T if self.fan_in_fan_out else delta

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        for name in self._active_in_layer:
            delta = self.delta(name)
            result = result + linear(x.astype(delta.dtype), delta).astype(result.dtype)
        return result
