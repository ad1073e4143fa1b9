"""The LoKr layer: a Kronecker product of two (possibly low-rank) factors as the weight update."""
import numpy as np

from ..lycoris_utils import LycorisLayer, kaiming_uniform, new_parameter


def factorization(dimension, factor=-1):
    """``(m, n)`` with ``m * n == dimension`` and ``m <= n``: ``m = factor`` when it divides ``dimension``, else the
    divisors closest to each other (to the square root for ``factor=-1``) with ``m <= factor`` (LyCORIS's rule).

    >>> factorization(256), factorization(128), factorization(127), factorization(128, 4)
    ((16, 16), (8, 16), (1, 127), (4, 32))
    """
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def kron(a, b):
    """``torch.kron`` of two matrices from broadcasting (differentiable, any backend)."""
    rows = a.shape[0] * b.shape[0]
    cols = a.shape[1] * b.shape[1]
    return (a.view(a.shape[0], 1, a.shape[1], 1) * b.view(1, b.shape[0], 1, b.shape[1])).view(rows, cols)


class LoKrLayer(LycorisLayer):
    """LoKr around ``Linear``/``mindspore.nn.Dense``: ``out = a * b`` and ``in = c * d`` are factorised, ``w1``
    is (a, c) and ``w2`` (b, d); each is a full matrix (``lokr_w1``/``lokr_w2``) or, when ``r`` is below half its
    larger side (for ``w1`` only with ``decompose_both``), a product ``lokr_w*_a @ lokr_w*_b`` of rank ``r``."""

    adapter_layer_names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    other_param_names = LycorisLayer.other_param_names + ("use_w1", "use_w2")
    method = "LoKr"

    def _rank_dropout_scale(self, config):
        return config.rank_dropout_scale

    def create_adapter_parameters(self, adapter_name, r, config):
        out_l, out_k = factorization(self.out_features, config.decompose_factor)
        in_m, in_n = factorization(self.in_features, config.decompose_factor)
        use_w1 = not (config.decompose_both and r < max(out_l, in_m) / 2)
        use_w2 = not (r < max(out_k, in_n) / 2)
        self.use_w1[adapter_name] = use_w1
        self.use_w2[adapter_name] = use_w2
        w1_shapes = [(out_l, in_m)] if use_w1 else [(out_l, r), (r, in_m)]
        w2_shapes = [(out_k, in_n)] if use_w2 else [(out_k, r), (r, in_n)]
        w1 = [kaiming_uniform(s) for s in w1_shapes]
        w2 = [kaiming_uniform(s) for s in w2_shapes]
        if config.init_weights == "lycoris":  # w2 (or w2_b) zero
            w2[-1] = np.zeros_like(w2[-1])
        elif config.init_weights:  # w1 (or w1_a) zero
            w1[0] = np.zeros_like(w1[0])
        names1 = ("lokr_w1",) if use_w1 else ("lokr_w1_a", "lokr_w1_b")
        names2 = ("lokr_w2",) if use_w2 else ("lokr_w2_a", "lokr_w2_b")
        for name, value in zip(names1 + names2, w1 + w2):
            getattr(self, name)[adapter_name] = new_parameter(value)

    def delta(self, adapter_name):
        if self.use_w1[adapter_name]:
            w1 = getattr(self.lokr_w1, adapter_name)
        else:
            w1 = getattr(self.lokr_w1_a, adapter_name) @ getattr(self.lokr_w1_b, adapter_name)
        if self.use_w2[adapter_name]:
            w2 = getattr(self.lokr_w2, adapter_name)
        else:
            w2 = getattr(self.lokr_w2_a, adapter_name) @ getattr(self.lokr_w2_b, adapter_name)
        return kron(w1, w2)


Linear = LoKrLayer
