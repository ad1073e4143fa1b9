"""The LoKr layer: a Kronecker product of two (possibly low-rank) factors as the weight update."""
import math

import numpy as np

from ..lycoris_utils import LycorisLayer, cp_weight, kaiming_uniform, new_parameter


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
    """``torch.kron`` from broadcasting (differentiable, any backend); the tensor with fewer dimensions gets leading
    ones, as torch does."""
    if a.ndim < b.ndim:
        a = a.reshape((1,) * (b.ndim - a.ndim) + a.shape)
    a_view, b_view, shape = (), (), ()
    for i in range(a.ndim):
        a_view += (a.shape[i], 1)
        b_view += (1, b.shape[i])
        shape += (a.shape[i] * b.shape[i],)
    return (a.reshape(a_view) * b.reshape(b_view)).reshape(shape)


class LoKrLayer(LycorisLayer):
    """LoKr around ``Linear``/``mindspore.nn.Dense``/``Conv1d``/``Conv2d``, HF peft's names and shapes: ``out = a * b``
    and ``in / groups = c * d`` are factorised, the update is ``kron(w1, w2)`` with ``w1`` (a, c) and ``w2`` (b, d,
    *kernel). Each is a full tensor (``lokr_w1``/``lokr_w2``) or, when ``r`` is below half its larger side (for
    ``w1`` only with ``decompose_both``), a rank-``r`` product ``lokr_w*_a @ lokr_w*_b`` (a convolution's kernel
    flattened into ``lokr_w2_b``), or with ``use_effective_conv2d`` the CP rebuild of ``lokr_t2`` (r, r, kh, kw) with
    ``lokr_w2_a`` (r, b) and ``lokr_w2_b`` (r, d)."""

    adapter_layer_names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    other_param_names = LycorisLayer.other_param_names + ("use_w1", "use_w2")
    method = "LoKr"

    def _rank_dropout_scale(self, config):
        return config.rank_dropout_scale

    def create_adapter_parameters(self, adapter_name, r, config):
        out_l, out_k = factorization(self.out_features, config.decompose_factor)
        in_m, in_n = factorization(self.in_features // self.groups, config.decompose_factor)
        use_w1 = not (config.decompose_both and r < max(out_l, in_m) / 2)
        use_w2 = not (r < max(out_k, in_n) / 2)
        self.use_w1[adapter_name] = use_w1
        self.use_w2[adapter_name] = use_w2
        self.effective_conv2d[adapter_name] = self.effective_conv2d[adapter_name] and not use_w2
        w1 = {"lokr_w1": (out_l, in_m)} if use_w1 else {"lokr_w1_a": (out_l, r), "lokr_w1_b": (r, in_m)}
        if use_w2:
            w2 = {"lokr_w2": (out_k, in_n) + self.kernel_size}
        elif self.effective_conv2d[adapter_name]:
            w2 = {"lokr_t2": (r, r) + self.cp_kernel(), "lokr_w2_a": (r, out_k), "lokr_w2_b": (r, in_n)}
        else:
            w2 = {"lokr_w2_a": (out_k, r), "lokr_w2_b": (r, in_n * math.prod(self.kernel_size))}
        # True: w1 (or w1_a) zero, the adapter starts as the identity; "lycoris": w2 (or w2_b) zero; False: random
        zero = {True: ("lokr_w1", "lokr_w1_a"), "lycoris": ("lokr_w2", "lokr_w2_b")}.get(config.init_weights, ())
        for name, shape in {**w1, **w2}.items():
            getattr(self, name)[adapter_name] = new_parameter(np.zeros(shape) if name in zero
                                                              else kaiming_uniform(shape))

    def delta(self, adapter_name):
        if self.use_w1[adapter_name]:
            w1 = getattr(self.lokr_w1, adapter_name)
        else:
            w1 = getattr(self.lokr_w1_a, adapter_name) @ getattr(self.lokr_w1_b, adapter_name)
        if self.use_w2[adapter_name]:
            w2 = getattr(self.lokr_w2, adapter_name)
        elif self.effective_conv2d[adapter_name]:
            w2 = cp_weight(getattr(self.lokr_t2, adapter_name), getattr(self.lokr_w2_a, adapter_name),
                           getattr(self.lokr_w2_b, adapter_name))
        else:
            w2 = getattr(self.lokr_w2_a, adapter_name) @ getattr(self.lokr_w2_b, adapter_name)
        if w2.ndim == 4:  # HF peft widens w1 to (a, c, 1, 1) for 4-D w2 only (a Conv1d's 3-D w2 keeps torch.kron's
            w1 = w1.reshape(w1.shape + (1, 1))  # leading-ones rule)
        return kron(w1, w2)


class Linear(LoKrLayer):
    """LoKr around ``Linear``/``mindspore.nn.Dense``."""


class Conv1d(LoKrLayer):
    """LoKr around ``mindspore.nn.Conv1d``."""


class Conv2d(LoKrLayer):
    """LoKr around ``mindspore.nn.Conv2d``."""
