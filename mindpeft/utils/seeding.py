"""One call that makes runs repeatable: Python, numpy, MindSpore and the dataset pipeline seeded together."""
import random

import numpy as np
import mindspore as ms
import mindspore.dataset as ds


def set_seed(seed):
    """Seed Python's ``random``, numpy's global RNG, MindSpore (initialisers, dropout, random ops) and
    ``mindspore.dataset`` (shuffles, random splits), as transformers' ``set_seed`` does for torch."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    ms.set_seed(seed)
    ds.config.set_seed(seed % 2**32)
