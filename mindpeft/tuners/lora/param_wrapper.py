"""LoRA on a bare Parameter (``LoraConfig.target_parameters``), HF peft 0.21's ``ParamWrapper``: for layers that hold
their weights as Parameters rather than linear layers, such as stacked expert weights of mixture-of-experts blocks.

HF peft adds the update through ``torch.nn.utils.parametrize``, which gives the module a subclass whose attribute
is a property. MindSpore has no parametrizations, so the same is done here by hand: the module holding the Parameter
gets a subclass where ``<parameter name>`` is a property returning ``W + delta`` (the unregistered original
Parameter plus the active adapters' updates). Graph mode compiles such a property like any ``construct`` code, so
gradients reach the LoRA factors under ``mindspore.jit`` too. The property reads the wrapper's state (active,
disabled, merged) as Python constants, as every LoRA layer does.
"""
import itertools

from mindspore import nn, ops

from ...models.layers import Linear as LinearLayer
from .initialization import mutates_base_weight
from .layer import LoraLayer

_CLASS_IDS = itertools.count()


def _raw_key(parameter_name):
    return f"_lora_raw_{parameter_name}"


def _install_property(module, parameter_name, wrapper):
    """Give ``module`` a class whose ``parameter_name`` reads ``wrapper.adapted(original Parameter)``. All properties
    of one module live on one direct subclass of its own class (graph mode folds an inherited property into a
    constant, losing its gradients); each build gets a new class name, so MindSpore's cache of parsed Cells (keyed
    by class name and id) never serves an earlier build."""
    state = module.__dict__
    original = state.get("_lora_original_class", type(module))
    properties = dict(state.get("_lora_properties", {}))
    raw = _raw_key(parameter_name)
    object.__setattr__(module, raw, module._params[parameter_name])

    def read(cell):
        return wrapper.adapted(getattr(cell, raw))

    properties[parameter_name] = property(read)
    object.__setattr__(module, "_lora_original_class", original)
    object.__setattr__(module, "_lora_properties", properties)
    module.__class__ = type(f"{original.__name__}WithLoraParameters{next(_CLASS_IDS)}", (original,), properties)


def release_module(module):
    """Give a module whose Parameters were wrapped its own class back."""
    state = module.__dict__
    if "_lora_original_class" not in state:
        return
    module.__class__ = state.pop("_lora_original_class")
    for name in state.pop("_lora_properties"):
        state.pop(_raw_key(name), None)


class ParamWrapper(nn.Cell, LoraLayer):
    """LoRA on the Parameter ``parameter_name`` of ``base_layer`` (a Cell; another ``ParamWrapper`` when a second
    Parameter of the same Cell is targeted, as in HF peft). ``base_layer`` runs as usual and sees the updated
    Parameter.

    A 3-D Parameter holds ``num_experts`` matrices, (experts, in, out), or (experts, out, in) when the Cell has
    ``is_transposed = True``; ``lora_A`` (r * experts, ...) and ``lora_B`` (..., r * experts) hold one rank-r pair
    per expert, in HF's layout. A 2-D Parameter (out, in) gets one pair, as a linear layer.
    """

    def __init__(self, base_layer, adapter_name, parameter_name, config, r=8, lora_alpha=8, **kwargs):
        name = type(self).__name__
        for option, value in (("lora_dropout != 0", config.lora_dropout), ("fan_in_fan_out", config.fan_in_fan_out),
                              ("lora_bias=True", config.lora_bias), ("use_dora=True", config.use_dora)):
            if value:
                raise ValueError(f"lora.{name} does not work with {option}.")
        super().__init__()
        self._init_lora(base_layer)
        self.parameter_name = parameter_name
        module = self.get_base_layer()
        shape = tuple(module._params[parameter_name].shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"lora.{name} was initialized with {len(shape)} dimensional Parameter, but only 2d and "
                             "3d are supported.")
        if len(shape) == 3:
            self.num_experts, self.in_features, self.out_features = shape
        else:
            self.num_experts, self.in_features, self.out_features = 1, shape[1], shape[0]
        # HF's naming: for (experts, in, out) the factors map out -> in, i.e. they build each expert's (in, out)
        self._swapped = len(shape) == 3 and not getattr(module, "is_transposed", False)
        if self._swapped:
            self.in_features, self.out_features = self.out_features, self.in_features
        _install_property(module, parameter_name, self)
        self.update_layer(adapter_name, r, lora_alpha, config)

    def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
        if config.use_dora:
            raise ValueError(f"lora.{type(self).__name__} does not work with LoRA variants like DoRA.")
        init = config.init_lora_weights
        if mutates_base_weight(init) or init == "orthogonal":
            raise ValueError(f"init_lora_weights={init!r} is not supported for lora.{type(self).__name__}; use True, "
                             "False or 'gaussian'")
        self._add_adapter_settings(adapter_name, r, lora_alpha, config)
        self.lora_A[adapter_name] = LinearLayer(self.in_features, r * self.num_experts, bias=False)
        self.lora_B[adapter_name] = LinearLayer(r * self.num_experts, self.out_features, bias=False)
        self.reset_lora_parameters(adapter_name, init)
        self._finish_adapter(adapter_name)

    def _check_mixed_batch(self, adapter_names):
        raise ValueError(f"lora.{type(self).__name__} does not support mixed adapter batches yet.")

    def _merge_target(self):
        return getattr(self.get_base_layer(), _raw_key(self.parameter_name))

    def _delta(self, name):
        """``scaling * B A`` per expert, shaped like the Parameter."""
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if self.num_experts == 1:
            return ops.matmul(b, a) * self.scaling[name]
        a = a.reshape(self.num_experts, -1, a.shape[-1])  # (experts, r, in)
        b = b.reshape(b.shape[0], -1, self.num_experts).transpose(2, 0, 1)  # (experts, out, r)
        delta = ops.bmm(b, a)
        if not self._swapped:
            delta = delta.transpose(0, 2, 1)
        return delta * self.scaling[name]

    def delta_weight(self, adapter_name):
        return self._delta(adapter_name).asnumpy()

    def adapted(self, weight):
        """``weight`` (the original Parameter) plus the active adapters' updates; called by the wrapped Cell's
        property, also inside compiled graphs."""
        if self.disable_adapters or self.merged_adapters:
            return weight
        for name in self._active_in_layer:
            weight = weight + self._delta(name).astype(weight.dtype)
        return weight

    def construct(self, *args, **kwargs):
        return self.base_layer(*args, **kwargs)
