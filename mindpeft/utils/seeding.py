"""One call that makes runs repeatable: Python, numpy, MindSpore and the dataset pipeline seeded together."""
import random

import numpy as np
import mindspore as ms
import mindspore.dataset as ds
from mindspore import nn


def set_seed(seed):
    """Seed Python's ``random``, numpy's global RNG, MindSpore (initialisers, dropout, random ops) and
    ``mindspore.dataset`` (shuffles, random splits), as transformers' ``set_seed`` does for torch."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    ms.set_seed(seed)
    ds.config.set_seed(seed % 2**32)


class _SeededDropoutKernel(nn.Cell):
    """Stands in for the ``ops.Dropout`` inside a ``mindspore.nn.Dropout``: the mask comes from a seeded uniform
    generator (MindSpore 2.10's CPU Dropout kernel gives other masks on every run once the machine is busy)."""

    def __init__(self, keep_prob, seed0, seed1):
        super().__init__()
        from ..models.layers import _uniform_real

        self.keep_prob = keep_prob
        self.uniform = _uniform_real(seed0, seed1)

    def construct(self, x):
        mask = (self.uniform(x.shape) < self.keep_prob).astype(x.dtype)
        return x * mask * (1.0 / self.keep_prob), mask


def reseed_dropout(model, seed, step=0):
    """Give every dropout in ``model`` (mindpeft's and ``mindspore.nn.Dropout``) a new generator seeded from
    ``(seed, step)``; returns how many were reseeded.

    Dropout generators live inside compiled kernels, where they cannot be saved, so a run that must resume exactly
    reseeds at every checkpoint position, and a resumed run at the one it resumes from: both then draw the same
    masks. Compiled steps holding ``model`` must be rebuilt afterwards.
    """
    from ..models.layers import Dropout

    cells = [cell for _, cell in model.cells_and_names()
             if isinstance(cell, (Dropout, nn.Dropout)) and getattr(cell, "p", 0)]
    seeds = np.random.default_rng([seed, step, 7]).integers(1, 2 ** 31 - 1, size=(len(cells), 2))
    for cell, (seed0, seed1) in zip(cells, seeds):
        if isinstance(cell, Dropout):
            cell.reseed(int(seed0), int(seed1))
        else:
            cell.dropout = _SeededDropoutKernel(1.0 - float(cell.p), int(seed0), int(seed1))
    return len(cells)
