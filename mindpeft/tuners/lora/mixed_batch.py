"""Mixed adapter batches (HF peft's ``adapter_names`` at inference): row ``i`` of a batch runs with adapter
``adapter_names[i]`` only, ``"__base__"`` with none.

HF peft hands the names to every LoRA layer through forward hooks and runs each adapter on its sub-batch. Here the
names become one number per row (0: the base model, ``k``: the model's ``k``-th adapter) in an int32 Parameter the
LoRA layers read, and each layer adds every adapter's output masked to that adapter's rows: shapes never depend on
which rows use which adapter, so a graph compiled for a mixed batch (``generate``'s decode step, a jitted forward)
reads the per-row numbers as an input and serves other ``adapter_names`` of the batch size without compiling again.
The cost is that every adapter of a layer runs on every row.
"""
import itertools

import numpy as np
from mindspore import Parameter, Tensor

from ...models.modeling_utils import write_parameter

BASE = "__base__"
_NAMES = itertools.count()


class AdapterRows:
    """The per-row adapter numbers of the running mixed batch, in an int32 Parameter the LoRA layers share (they
    read its first ``batch`` entries).

    A larger batch gets a larger Parameter; the earlier ones are kept and written too (their first entries), since
    a graph compiled for a smaller batch keeps reading the Parameter it was compiled with.
    """

    def __init__(self):
        self.rows = None
        self._earlier = []

    def write(self, numbers):
        """Store ``numbers`` (one per row)."""
        if self.rows is None or self.rows.shape[0] < len(numbers):
            if self.rows is not None:
                self._earlier.append(self.rows)
            capacity = max(8, 1 << (len(numbers) - 1).bit_length())
            self.rows = Parameter(Tensor(np.zeros(capacity, np.int32)), name=f"lora_mixed_batch_rows_{next(_NAMES)}",
                                  requires_grad=False)
        for param in (*self._earlier, self.rows):
            padded = np.zeros(param.shape[0], np.int32)
            count = min(len(numbers), param.shape[0])
            padded[:count] = numbers[:count]
            write_parameter(param, padded)


def check_adapter_names(adapter_names, known, training, batch_size):
    """HF peft's checks of ``adapter_names`` (a list of names, one per row) before a mixed batch runs."""
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)) or not all(
            isinstance(n, str) for n in adapter_names):
        raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
    if training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
    unexpected = {n for n in adapter_names if n != BASE} - set(known)
    if unexpected:
        raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unexpected))}")
    if batch_size is not None and len(adapter_names) != batch_size:
        raise ValueError("Length of `adapter_names` should be the same as the number of inputs, but got "
                         f"{len(adapter_names)} and {batch_size} respectively.")


def batch_size_of(args, kwargs):
    """The batch size of a model call: the first dimension of its first tensor input (``None`` if it has none)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
    return None
