"""``get_layer_status`` / ``get_model_status``: HF peft's report of the adapter layers of a model, with its
dataclasses and field values (module types as HF peft's ``repr`` names them, devices as torch's device types)."""
import collections
from dataclasses import dataclass
from typing import Literal, Optional, Union

import mindspore as ms
import numpy as np

from .other import ModulesToSaveWrapper
from .registry import peft_type_key

# HF peft's layer classes print as "<method>.<class>" for these methods; where mindpeft has one class for several
# of HF's (LyCORIS and Poly layers: HF's Linear; LoRA's ConvNd: Conv1d/2d/3d) the status gives HF's name.
_REPR_PREFIX = {m: f"{m}." for m in ("lora", "adalora", "loha", "lokr", "ln_tuning", "oft", "boft", "vera",
                                     "fourierft", "hra", "poly")}
_HF_CLASS_NAMES = {"LoHaLayer": "Linear", "LoKrLayer": "Linear", "PolyLayer": "Linear"}
_DEVICE_TYPES = {"CPU": "cpu", "GPU": "cuda", "Ascend": "npu"}


@dataclass
class TunerLayerStatus:
    name: str
    module_type: str
    enabled: bool
    active_adapters: list
    merged_adapters: list
    requires_grad: dict
    available_adapters: list
    devices: dict
    quantization_backend: Optional[str]


@dataclass
class TunerModelStatus:
    base_model_type: str
    adapter_model_type: str
    peft_types: dict
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: Union[bool, Literal["irregular"]]
    active_adapters: Union[list, Literal["irregular"]]
    merged_adapters: Union[list, Literal["irregular"]]
    requires_grad: dict
    available_adapters: list
    devices: dict
    quantization_backend: Union[Optional[str], Literal["irregular"]]


def _consensus(values):
    """``True``/``False`` when all of ``values`` are, else ``"irregular"``."""
    if all(v is True for v in values):
        return True
    if all(v is False for v in values):
        return False
    return "irregular"


def _module_type(cell):
    method = type(cell).__module__.split(".")
    method = method[method.index("tuners") + 1] if "tuners" in method else ""
    name = type(cell).__name__
    name = f"Conv{cell.dims}d" if name == "ConvNd" else _HF_CLASS_NAMES.get(name, name)
    return _REPR_PREFIX.get(method, "") + name


def _adapter_params(cell):
    """``{adapter: [Parameter, ...]}`` of an adapter layer or a ``modules_to_save`` wrapper."""
    from ..tuners.tuners_utils import _params_of

    if isinstance(cell, ModulesToSaveWrapper):
        return {name: list(module.get_parameters()) for name, module in cell.modules_to_save.items()}
    params = collections.defaultdict(list)
    for layer_name in cell.adapter_layer_names:
        container = getattr(cell, layer_name)
        for key in container.keys():
            params[key].extend(_params_of(container, key))
    return params


def _status_of(name, cell):
    device = _DEVICE_TYPES.get(ms.get_context("device_target"), ms.get_context("device_target").lower())
    params = _adapter_params(cell)
    if isinstance(cell, ModulesToSaveWrapper):
        enabled, active, merged = not cell.disable_adapters, [cell.active_adapter], []
    else:
        enabled, active, merged = not cell.disable_adapters, list(cell.active_adapters), list(cell.merged_adapters)
    return TunerLayerStatus(
        name=name, module_type=_module_type(cell), enabled=enabled, active_adapters=active, merged_adapters=merged,
        requires_grad={k: _consensus([p.requires_grad for p in v]) for k, v in params.items()},
        available_adapters=sorted(params), devices={k: [device] for k in params}, quantization_backend=None)


def _tuner_model(model):
    """The Cell holding the adapter layers: a PeftModel's tuner, else ``model`` itself."""
    from ..peft_model import PeftModel
    from ..tuners.tuners_utils import BaseTuner

    if not isinstance(model, PeftModel):
        return model
    if not isinstance(model.base_model, BaseTuner) or model.peft_config[model.active_adapters[0]].is_adaption_prompt:
        raise TypeError("get_layer_status() got an invalid PeftModel instance; prefix tuning and adaption prompt are "
                        "not supported.")
    return model.base_model


def get_layer_status(model):
    """A :class:`TunerLayerStatus` for each adapter layer and ``modules_to_save`` wrapper of ``model`` (a PeftModel,
    or a Cell given adapters by ``inject_adapter_in_model``), as HF peft's function of that name reports them."""
    from ..tuners.tuners_utils import BaseTunerLayer

    layers = [_status_of(name, cell) for name, cell in _tuner_model(model).cells_and_names()
              if isinstance(cell, (BaseTunerLayer, ModulesToSaveWrapper))]
    if not layers:
        raise ValueError("No adapter layers found in the model, please ensure that it's a PEFT model or that you have "
                         "PEFT adapters injected in the model.")
    return layers


def _parameter_counts(model):
    trainable = total = 0
    for _, param in model.parameters_and_names():
        count = int(np.prod(param.shape))
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def get_model_status(model):
    """The :class:`TunerModelStatus` of ``model``: HF peft's summary of :func:`get_layer_status` (``"irregular"``
    where the layers disagree)."""
    from ..models.modeling_utils import PreTrainedModel
    from ..peft_model import PeftModel

    layers = get_layer_status(model)
    if isinstance(model, PeftModel):
        base_model_type = type(model.get_base_model()).__name__
        adapter_model_type = type(model.base_model).__name__
        peft_types = {name: peft_type_key(config.peft_type) for name, config in model.peft_config.items()}
    else:
        base_model_type = type(model).__name__ if isinstance(model, PreTrainedModel) else "other"
        adapter_model_type, peft_types = "None", {}
    trainable, total = _parameter_counts(model)
    enabled = {status.enabled for status in layers}
    active = {tuple(status.active_adapters) for status in layers}
    merged_any = set().union(*(status.merged_adapters for status in layers))
    irregular_merge = any((set(s.available_adapters) - set(s.merged_adapters)) & merged_any for s in layers)
    requires_grad, devices = collections.defaultdict(list), collections.defaultdict(set)
    for status in layers:
        for key, value in status.requires_grad.items():
            requires_grad[key].append(value)
        for key, value in status.devices.items():
            devices[key].update(value)
    return TunerModelStatus(
        base_model_type=base_model_type, adapter_model_type=adapter_model_type, peft_types=peft_types,
        trainable_params=trainable, total_params=total, num_adapter_layers=len(layers),
        enabled=enabled.pop() if len(enabled) == 1 else "irregular",
        active_adapters=list(active.pop()) if len(active) == 1 else "irregular",
        merged_adapters="irregular" if irregular_merge else sorted(merged_any),
        requires_grad={key: _consensus(values) for key, values in requires_grad.items()},
        available_adapters=sorted(set().union(*(status.available_adapters for status in layers))),
        devices={key: sorted(value) for key, value in devices.items()}, quantization_backend=None)

