"""Module surgery helpers and the wrapper for fully trained modules (``modules_to_save``)."""
import copy

from mindspore import nn

from .constants import HEAD_MODULE_NAMES


def get_submodule(model, key):
    """The Cell at dotted path ``key`` (list indexes are path parts, as in ``h.0.attn``)."""
    cell = model
    for part in key.split(".") if key else []:
        children = cell.name_cells()
        if part not in children:
            raise AttributeError(f"{type(cell).__name__} has no submodule {part!r} (looking up {key!r})")
        cell = children[part]
    return cell


def get_submodules(model, key):
    """``(parent, target, target_name)`` for the Cell at ``key``."""
    parent_key, _, target_name = key.rpartition(".")
    parent = get_submodule(model, parent_key)
    return parent, get_submodule(parent, target_name), target_name


def replace_child(parent, name, new_child):
    """Put ``new_child`` in ``parent`` under ``name`` (an attribute, or an index of a CellList)."""
    if isinstance(parent, (nn.CellList, nn.SequentialCell)) and name.isdigit():
        parent[int(name)] = new_child
    else:
        setattr(parent, name, new_child)


# Parameters that torch keeps as buffers (batch-norm statistics): copied and saved, never trained.
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked", "moving_mean", "moving_variance")


def _trainable_parameters(module):
    return [p for p in module.get_parameters() if p.name.rsplit(".", 1)[-1] not in BUFFER_NAMES]


def row_mask(rows, index, like):
    """1 for the rows of a mixed adapter batch whose adapter is number ``index``, else 0, shaped to broadcast over
    ``like`` (see :mod:`mindpeft.tuners.lora.mixed_batch`)."""
    return (rows == index).astype(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


class ModulesToSaveWrapper(nn.Cell):
    """Keeps ``original_module`` frozen and trains one copy per adapter in ``modules_to_save``."""

    def __init__(self, module_to_save, adapter_name):
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.CellDict()
        self.active_adapter = adapter_name
        self.disable_adapters = False
        self._use_copy = False
        self._mixed_rows, self._mixed_adapters = None, ()  # set by LoraModel.mixed_adapter_batch
        for param in self.original_module.get_parameters():
            param.requires_grad = False
        self.update(adapter_name)

    def update(self, adapter_name):
        """Add a trainable copy of the original module for ``adapter_name``."""
        if adapter_name not in self.modules_to_save:
            module = copy.deepcopy(self.original_module)
            for param in _trainable_parameters(module):
                param.requires_grad = True
            self.modules_to_save[adapter_name] = module
        self._refresh()

    def _refresh(self):
        self._use_copy = not self.disable_adapters and self.active_adapter in self.modules_to_save

    def set_adapter(self, adapter_name):
        self.active_adapter = adapter_name
        for name, module in self.modules_to_save.items():
            for param in _trainable_parameters(module):
                param.requires_grad = name == adapter_name
        self._refresh()

    def enable_adapters(self, enabled):
        self.disable_adapters = not enabled
        self._refresh()

    def delete_adapter(self, adapter_name):
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        self._refresh()

    def active_module(self):
        return self.modules_to_save[self.active_adapter] if self._use_copy else self.original_module

    def adapter_names(self):
        return list(self.modules_to_save.keys())

    @property
    def weight(self):
        return self.active_module().weight

    def mixed_batch_adapters(self):
        return self.adapter_names()

    def _mixed_batch_forward(self, *args, **kwargs):
        """Each row of a mixed adapter batch through its adapter's copy (the original module for the others)."""
        result = self.original_module(*args, **kwargs)
        rows = self._mixed_rows.rows[: result.shape[0]]
        for index, name in self._mixed_adapters:
            mask = row_mask(rows, index, result)
            result = result * (1 - mask) + self.modules_to_save[name](*args, **kwargs) * mask
        return result

    def construct(self, *args, **kwargs):
        if self._mixed_rows is not None:
            return self._mixed_batch_forward(*args, **kwargs)
        if self._use_copy:
            return self.modules_to_save[self.active_adapter](*args, **kwargs)
        return self.original_module(*args, **kwargs)


def wrap_modules_to_save(model, modules_to_save, adapter_name, active_adapter):
    """Wrap each module named in ``modules_to_save`` in a :class:`ModulesToSaveWrapper` (or add the adapter to an
    existing wrapper). A name that matches nothing is an error, except the task head names (``classifier``,
    ``score``, ``qa_outputs``) that task PeftModels add, as long as some name matches."""
    found = set()
    for key, cell in list(model.cells_and_names()):
        if any(p in ("modules_to_save", "original_module") for p in key.split(".")):
            continue
        names = [m for m in modules_to_save if key == m or key.endswith(f".{m}")]
        if not key or not names:
            continue
        found.update(names)
        if isinstance(cell, ModulesToSaveWrapper):
            cell.update(adapter_name)
            cell.set_adapter(active_adapter)
        else:
            parent, _, name = get_submodules(model, key)
            wrapper = ModulesToSaveWrapper(cell, adapter_name)
            wrapper.set_adapter(active_adapter)
            replace_child(parent, name, wrapper)
    missing = [m for m in modules_to_save if m not in found]
    if any(m not in HEAD_MODULE_NAMES for m in missing) or (missing and not found):
        raise ValueError(f"modules_to_save {missing} not found in the base model")
