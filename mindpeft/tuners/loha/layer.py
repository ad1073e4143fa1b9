"""The LoHa layer: a Hadamard product of two rank-r products as the weight update."""
import numpy as np

from ..lycoris_utils import LycorisLayer, cp_weight, kaiming_uniform, new_parameter


class LoHaLayer(LycorisLayer):
    """LoHa around ``Linear``/``mindspore.nn.Dense``/``Conv1d``/``Conv2d``, HF peft's names and shapes:
    ``hada_w1_a``/``hada_w2_a`` (out, r) and ``hada_w1_b``/``hada_w2_b`` (r, in), a convolution's kernel flattened
    into ``in``; with ``use_effective_conv2d`` (kernels larger than 1) each product is a CP rebuild of a core
    ``hada_t1``/``hada_t2`` (r, r, kh, kw) with ``hada_w*_a`` (r, out) and ``hada_w*_b`` (r, in / groups)."""

    adapter_layer_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    method = "LoHa"

    def create_adapter_parameters(self, adapter_name, r, config):
        out_features, in_features = self.flat_shape()
        if self.effective_conv2d[adapter_name]:
            in_features = self.in_features // self.groups
            shapes = {"hada_t1": (r, r) + self.cp_kernel(), "hada_w1_a": (r, out_features),
                      "hada_w1_b": (r, in_features), "hada_t2": (r, r) + self.cp_kernel(),
                      "hada_w2_a": (r, out_features), "hada_w2_b": (r, in_features)}
        else:
            shapes = {"hada_w1_a": (out_features, r), "hada_w1_b": (r, in_features),
                      "hada_w2_a": (out_features, r), "hada_w2_b": (r, in_features)}
        # FedPara's He initialisation; with init_weights hada_w2_b is zero, so the adapter starts as the identity.
        for name, shape in shapes.items():
            zero = config.init_weights and name == "hada_w2_b"
            getattr(self, name)[adapter_name] = new_parameter(np.zeros(shape) if zero else kaiming_uniform(shape))

    def _product(self, adapter_name, cores, lefts, rights):
        """``hada_w*_a @ hada_w*_b``, or the CP rebuild with the core ``hada_t*``."""
        left, right = getattr(lefts, adapter_name), getattr(rights, adapter_name)
        if self.effective_conv2d[adapter_name]:
            return cp_weight(getattr(cores, adapter_name), left, right)
        return left @ right

    def delta(self, adapter_name):
        first = self._product(adapter_name, self.hada_t1, self.hada_w1_a, self.hada_w1_b)
        second = self._product(adapter_name, self.hada_t2, self.hada_w2_a, self.hada_w2_b)
        return first * second


class Linear(LoHaLayer):
    """LoHa around ``Linear``/``mindspore.nn.Dense``."""


class Conv1d(LoHaLayer):
    """LoHa around ``mindspore.nn.Conv1d``."""


class Conv2d(LoHaLayer):
    """LoHa around ``mindspore.nn.Conv2d``."""
