"""The LN tuning layer: the base layer plus one trainable copy of it per adapter."""
import copy
import warnings

import numpy as np
from mindspore import nn

from ...models.modeling_utils import write_parameter
from ..tuners_utils import BaseTunerLayer


class LNTuningLayer(nn.Cell, BaseTunerLayer):
    """Runs the active adapter's copy (``ln_tuning_layers[adapter]``) of ``base_layer``, any Cell; one adapter at
    a time."""

    adapter_layer_names = ("ln_tuning_layers",)

    def __init__(self, base_layer, adapter_name):
        super().__init__()
        self._init_tuner_layer(base_layer)
        self.ln_tuning_layers = nn.CellDict()
        self.update_layer(adapter_name)

    def update_layer(self, adapter_name):
        """Add a trainable copy of the (unmerged) base layer for ``adapter_name``."""
        if self.merged:
            self.unmerge()
        self.ln_tuning_layers[adapter_name] = copy.deepcopy(self.get_base_layer())
        self.set_adapter(self.active_adapters or (adapter_name,))

    def _swap(self, adapter_name):
        """Exchange the weights of the base layer and ``adapter_name``'s copy (HF peft swaps the two modules)."""
        tuned = self.ln_tuning_layers[adapter_name].get_parameters()
        for base, param in zip(self.get_base_layer().get_parameters(), tuned):
            base_value, tuned_value = np.array(base.asnumpy()), np.array(param.asnumpy())
            write_parameter(base, tuned_value)
            write_parameter(param, base_value)

    def merge(self, safe_merge=False, adapter_names=None):
        """Put the adapter's weights into the base layer (``safe_merge`` has nothing to check: no arithmetic)."""
        names = self.check_adapters_to_merge(adapter_names)
        if not names:
            return
        if len(names) > 1:
            raise ValueError(f"Trying to merge {len(names)} adapters, but LN tuning does not allow merging more than "
                             "one adapter at a time")
        if self.merged:
            warnings.warn(f"Already merged with {self.merged_adapters}. Unmerging first.")
            self.unmerge()
        self._swap(names[0])
        self.merged_adapters.append(names[0])

    def unmerge(self):
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        self._swap(self.merged_adapters.pop())

    def construct(self, x, *args, **kwargs):
        if self.disable_adapters or self.merged_adapters or not self._active_in_layer:
            return self.base_layer(x, *args, **kwargs)
        return self.ln_tuning_layers[self._active_in_layer[0]](x, *args, **kwargs)
