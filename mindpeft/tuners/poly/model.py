"""``PolyModel``: injects Poly layers into a Cell model and hands them each batch's ``task_ids``."""
import itertools

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ...models.layers import Conv1D, Linear as LinearLayer
from ...utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from ...utils.other import replace_child
from ..tuners_utils import BaseTuner, BaseTunerLayer
from .layer import PolyLayer

# The most samples one call may route. The task ids live in a Parameter of this many rows (256 KiB), written at the
# start of each forward: graph mode reads no Python attribute set at run time, and a Parameter cannot change shape.
MAX_BATCH_SIZE = 65536
_BUFFER_IDS = itertools.count()


def _after(value, written):
    """``value``, ordered after ``written`` when it is a Tensor (so layers read the task ids just stored)."""
    return ops.depend(value, written) if isinstance(value, Tensor) else value


class PolyModel(BaseTuner):
    """Creates a Poly model from a base model (see :class:`PolyConfig`).

    Call it (or the PeftModel) with ``task_ids``, one integer per sample: ``model(input_ids, task_ids=ids)``;
    ``generate`` takes them too. Without ``task_ids`` the Poly layers cannot route, so a ``ValueError`` is raised
    (unless the adapters are disabled), as in HF peft.
    """

    prefix = "poly_"
    # HF peft's Poly defaults are LoRA's.
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _task_ids_buffer(self):
        if not hasattr(self, "_task_ids"):
            buffer = Parameter(Tensor(np.zeros(MAX_BATCH_SIZE, np.int32)), requires_grad=False,
                               name=f"poly_task_ids_{next(_BUFFER_IDS)}")
            self._task_ids = [buffer]  # in a list: not a model parameter (not counted, saved or trained)
        return self._task_ids[0]

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if isinstance(target, PolyLayer):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        # HF peft's Poly wraps torch Linear layers only; GPT-2's Conv1D is refused there too.
        if isinstance(base, Conv1D) or not isinstance(base, (LinearLayer, nn.Dense)):
            raise TypeError(f"Target module {current_key!r} of type {type(base).__name__} is not supported. "
                            "Currently, only Linear/mindspore.nn.Dense layers are supported by Poly.")
        replace_child(parent, target_name, PolyLayer(target, adapter_name, config, self._task_ids_buffer()))

    def _mark_only_adapters_as_trainable(self, model):
        for name, param in model.parameters_and_names():
            if self.prefix not in name and ".modules_to_save." not in name:
                param.requires_grad = False

    def _bump(self):
        """Also keep ``_n_tasks`` (a constant in compiled graphs): the smallest ``n_tasks`` of the active adapters,
        0 when no Poly layer routes (adapters disabled)."""
        super()._bump()
        active = [self.peft_config[n].n_tasks for n in self.active_adapters if n in self.peft_config]
        self._n_tasks = min(active) if active and self.adapters_enabled else 0

    def _store_task_ids(self, task_ids, n_tasks):
        """Check ``task_ids`` (HF peft's messages) and write them to the buffer the Poly layers read."""
        if task_ids is None:
            raise ValueError("task_ids should not be None.")
        if task_ids.ndim != 1 or task_ids.shape[0] > MAX_BATCH_SIZE:
            raise ValueError(f"task_ids must hold one task id per sample (at most {MAX_BATCH_SIZE}), got shape "
                             f"{task_ids.shape}")
        if (task_ids >= n_tasks).any():
            raise ValueError(f"Only {n_tasks} tasks available. Found task id = {task_ids.max()}")
        if (task_ids < 0).any():
            raise ValueError(f"Task ids must be non-negative. Found task id = {task_ids.min()}")
        task_ids = task_ids.astype(ms.int32)
        rows = ops.arange(task_ids.shape[0]).astype(ms.int32)
        return ops.scatter_update(self._task_ids[0], rows, task_ids)

    def construct(self, *args, task_ids=None, **kwargs):
        if self._n_tasks == 0:
            return self.model(*args, **kwargs)
        written = self._store_task_ids(task_ids, self._n_tasks)
        args = tuple(_after(value, written) for value in args)
        kwargs = {key: _after(value, written) for key, value in kwargs.items()}
        return self.model(*args, **kwargs)

    def generate(self, *args, task_ids=None, **kwargs):
        """The base model's ``generate`` with every step routed by ``task_ids``."""
        if self._n_tasks:
            self._store_task_ids(task_ids, self._n_tasks)
        return self.model.generate(*args, **kwargs)
