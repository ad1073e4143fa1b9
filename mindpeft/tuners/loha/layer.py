"""The LoHa layer: a Hadamard product of two rank-r products as the weight update."""
import numpy as np

from ..lycoris_utils import LycorisLayer, kaiming_uniform, new_parameter


class LoHaLayer(LycorisLayer):
    """LoHa around ``Linear``/``mindspore.nn.Dense``: ``hada_w1_a``/``hada_w2_a`` (out, r) and
    ``hada_w1_b``/``hada_w2_b`` (r, in), HF peft's names and shapes."""

    adapter_layer_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    method = "LoHa"

    def create_adapter_parameters(self, adapter_name, r, config):
        out_features, in_features = self.out_features, self.in_features
        # FedPara's He initialisation; with init_weights one factor is zero, so the adapter starts as the identity.
        self.hada_w1_a[adapter_name] = new_parameter(kaiming_uniform((out_features, r)))
        self.hada_w1_b[adapter_name] = new_parameter(kaiming_uniform((r, in_features)))
        self.hada_w2_a[adapter_name] = new_parameter(kaiming_uniform((out_features, r)))
        w2_b = np.zeros((r, in_features), np.float32) if config.init_weights else kaiming_uniform((r, in_features))
        self.hada_w2_b[adapter_name] = new_parameter(w2_b)

    def delta(self, adapter_name):
        w1 = getattr(self.hada_w1_a, adapter_name) @ getattr(self.hada_w1_b, adapter_name)
        w2 = getattr(self.hada_w2_a, adapter_name) @ getattr(self.hada_w2_b, adapter_name)
        return w1 * w2


Linear = LoHaLayer
