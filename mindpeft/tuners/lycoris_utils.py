"""Shared machinery of the LyCORIS-style adapters (LoHa, LoKr), after HF peft's ``lycoris_utils``.

A LyCORIS layer builds a full-size weight update ``get_delta_weight`` from its factors and adds the base layer's
operation with that update as weight (``x @ delta^T`` for linear layers, the base convolution's geometry for
``mindspore.nn.Conv1d``/``Conv2d``) to the base layer's output; merging adds the same update into the base weight.
Rank and alpha may differ per module (``rank_pattern``/``alpha_pattern``), ``rank_dropout`` drops output rows of the
update and ``module_dropout`` skips the whole adapter for a step (both in training mode only).
"""
import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.seed import _get_graph_seed

from ..config import PeftConfig, check_bool, check_mapping, check_number, check_targets, describe, is_integer, is_number
from ..models.layers import _uniform_real, linear
from ..utils.other import replace_child
from .tuners_utils import BaseTuner, BaseTunerLayer, ParameterDict, base_weight, get_pattern_key, layer_features


@dataclass
class LycorisConfig(PeftConfig):
    """Fields shared by :class:`LoHaConfig` and :class:`LoKrConfig` (HF peft's names and defaults)."""

    rank_pattern: Optional[dict] = field(default_factory=dict, metadata={"help": "Per-module rank overrides (regex)"})
    alpha_pattern: Optional[dict] = field(default_factory=dict, metadata={"help": "Per-module alpha overrides"})
    r: int = field(default=8, metadata={"help": "Rank of the factors"})
    alpha: int = field(default=8, metadata={"help": "Alpha (scaling = alpha / r)"})
    rank_dropout: float = field(default=0.0, metadata={"help": "Dropout probability of the update's rows"})
    module_dropout: float = field(default=0.0, metadata={"help": "Probability of skipping the adapter in a step"})
    use_effective_conv2d: bool = field(default=False, metadata={"help": "Convolutions with kernels larger than 1: "
                                                                         "factor the kernel by CP decomposition "
                                                                         "(hada_t1/hada_t2, lokr_t2) instead of "
                                                                         "flattening it into the input dimension"})
    target_modules: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Module names (exact or suffix match), a regex (full match), or "
                                        "'all-linear'. Defaults to the architecture's usual attention projections."})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted"})
    init_weights: Union[bool, str] = field(default=True, metadata={"help": "True: the adapter starts as the "
                                                                            "identity; False: random factors"})
    layers_to_transform: Optional[Union[list, int]] = field(
        default=None, metadata={"help": "Layer indexes to adapt (all by default)"})
    layers_pattern: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'h' or 'layers', used with layers_to_transform"})
    modules_to_save: Optional[list] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)"})

    init_weights_choices = (True, False)

    def __post_init__(self):
        super().__post_init__()
        if not is_integer(self.r) or self.r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {self.r!r}")
        check_number(self, "alpha")
        for name in ("rank_dropout", "module_dropout"):
            check_number(self, name)
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        check_bool(self, "use_effective_conv2d")
        check_targets(self)
        init = self.init_weights
        if not isinstance(init, (bool, str)) or init not in self.init_weights_choices:
            raise ValueError(f"init_weights must be one of {self.init_weights_choices}, got {describe(init)}")
        if self.rank_pattern is None:
            self.rank_pattern = {}
        if self.alpha_pattern is None:
            self.alpha_pattern = {}
        check_mapping(self, "rank_pattern", lambda rank: is_integer(rank) and rank > 0, "positive integers")
        check_mapping(self, "alpha_pattern", is_number, "finite ints or floats")


def kaiming_uniform(shape):
    """torch's ``kaiming_uniform_(a=sqrt(5))``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), ``fan_in`` the product of the
    sizes after the first."""
    bound = 1.0 / math.sqrt(math.prod(shape[1:]))
    return np.random.uniform(-bound, bound, shape).astype(np.float32)


def new_parameter(values):
    return Parameter(Tensor(np.ascontiguousarray(values, dtype=np.float32)))


def cp_weight(core, left, right):
    """The CP (Tucker-2) rebuild of a kernel, ``einsum("i j k l, i p, j r -> p r k l", core, left, right)``:
    ``core`` (r, r, kh, kw), ``left`` (r, out), ``right`` (r, in) -> (out, in, kh, kw), as 2-D matrix products."""
    rank_out, rank_in, height, width = core.shape
    out_features, in_features = left.shape[1], right.shape[1]
    rows = ops.matmul(left.T, core.reshape(rank_out, rank_in * height * width))  # (out, r_in * kh * kw)
    rows = rows.reshape(out_features, rank_in, height * width).swapaxes(1, 2)  # (out, kh * kw, r_in)
    rebuilt = ops.matmul(rows, right)  # (out, kh * kw, in)
    return rebuilt.swapaxes(1, 2).reshape(out_features, in_features, height, width)


class _Coin(nn.Cell):
    """A seeded uniform generator for the rank/module dropouts (see :class:`mindpeft.models.layers.Dropout`)."""

    def __init__(self):
        super().__init__()
        self.uniform = _uniform_real(*_get_graph_seed(0, "lycoris_dropout"))

    def construct(self, shape):
        return self.uniform(shape)


class LycorisLayer(nn.Cell, BaseTunerLayer):
    """A LyCORIS adapter around a ``Linear``/``mindspore.nn.Dense`` layer (weight (out, in)) or a
    ``mindspore.nn.Conv1d``/``Conv2d`` (HF peft's Conv1d/Conv2d; the factors follow torch's weight layout
    (out, in / groups, *kernel), MindSpore keeps a Conv1d weight as (out, in, 1, k)). ``base_layer`` may itself be
    another method's adapter layer (a mixed model stacks them); the innermost plain layer sets the shapes.

    Subclasses set ``adapter_layer_names`` (their ``ParameterDict``s), ``method`` (for messages) and implement
    ``create_adapter_parameters(adapter_name, r, config)`` and ``delta(adapter_name)``, the unscaled update as
    MindSpore ops (used by ``construct`` and, evaluated, by ``merge``), in any shape holding the base weight's values
    in torch's order.
    """

    other_param_names = ("r", "alpha", "scaling", "rank_dropout", "rank_dropout_scale", "module_dropout",
                         "effective_conv2d")
    method = "LyCORIS"

    def __init__(self, base_layer, adapter_name, r, alpha, config):
        super().__init__()
        base = base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer) else base_layer
        if isinstance(base, nn.Dense) and base.activation_flag:
            raise ValueError(f"{self.method} cannot wrap a mindspore.nn.Dense that has an activation; split the "
                             "activation into its own Cell")
        self._init_tuner_layer(base_layer)
        for name in self.adapter_layer_names:
            setattr(self, name, ParameterDict())
        for name in self.other_param_names:
            setattr(self, name, {})
        self.weight_shape = tuple(base_weight(base).shape)
        self.is_conv1d = isinstance(base, nn.Conv1d)
        if isinstance(base, (nn.Conv1d, nn.Conv2d)):
            if getattr(base, "data_format", "NCHW") != "NCHW":
                raise ValueError(f"{self.method} supports mindspore.nn.Conv2d with data_format='NCHW' only, got "
                                 f"{base.data_format!r}")
            self.in_features, self.out_features = base.in_channels, base.out_channels
            self.kernel_size = tuple(base.kernel_size)[-1:] if self.is_conv1d else tuple(base.kernel_size)
            self.groups = base.group
            # the base layer's convolution (stride, padding, dilation, groups), run with the update as weight
            self.convolution = ops.Conv2D(base.out_channels, base.kernel_size, pad_mode=base.pad_mode,
                                          pad=base.padding, stride=base.stride, dilation=base.dilation,
                                          group=base.group)
        else:
            self.in_features, self.out_features = layer_features(base)
            self.kernel_size, self.groups, self.convolution = (), 1, None
        self.update_layer(adapter_name, r, alpha, config)

    @property
    def is_conv(self):
        return bool(self.kernel_size)

    def flat_shape(self):
        """The update as a matrix: (out, in / groups * kernel size) (HF peft's shape without CP decomposition)."""
        return self.out_features, self.in_features // self.groups * math.prod(self.kernel_size)

    def uses_effective_conv2d(self, config):
        """Whether the kernel is CP-decomposed: ``use_effective_conv2d`` on a convolution whose kernel is not 1x1
        (HF peft treats 1x1 convolutions as linear layers)."""
        return self.is_conv and config.use_effective_conv2d and math.prod(self.kernel_size) != 1

    def cp_kernel(self):
        """(kh, kw) of a CP core; a Conv1d's kernel k as (k, 1), HF peft's layout."""
        return self.kernel_size if len(self.kernel_size) == 2 else self.kernel_size + (1,)

    def update_layer(self, adapter_name, r, alpha, config):
        if not is_integer(r) or r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        self.r[adapter_name] = r
        self.alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / r
        self.rank_dropout[adapter_name] = config.rank_dropout
        self.rank_dropout_scale[adapter_name] = self._rank_dropout_scale(config)
        self.module_dropout[adapter_name] = config.module_dropout
        self.effective_conv2d[adapter_name] = self.uses_effective_conv2d(config)
        if (config.rank_dropout or config.module_dropout) and not hasattr(self, "coin"):
            self.coin = _Coin()  # only when needed: creating one advances MindSpore's graph seed
        self.create_adapter_parameters(adapter_name, r, config)
        self.set_adapter(self.active_adapters or (adapter_name,))

    def _rank_dropout_scale(self, config):
        """Whether rank dropout rescales the kept rows by the mean of the mask."""
        return True

    def create_adapter_parameters(self, adapter_name, r, config):
        raise NotImplementedError

    def delta(self, adapter_name):
        """The adapter's update before scaling, as MindSpore ops (values in the order of torch's weight)."""
        raise NotImplementedError

    def _available(self, adapter_name):
        return adapter_name in self.r

    def set_scale(self, adapter_name, scale):
        """Multiply the adapter's base scaling ``alpha / r`` by ``scale``."""
        if self._available(adapter_name):
            self.scaling[adapter_name] = scale * self.alpha[adapter_name] / self.r[adapter_name]

    def get_delta_weight(self, adapter_name):
        """The adapter's weight update (numpy), shaped like the base weight."""
        return self.delta(adapter_name).asnumpy().reshape(self.weight_shape) * self.scaling[adapter_name]

    def _apply_update(self, x, weight):
        """The base layer's operation with ``weight`` (shaped like the base weight), without bias."""
        if self.convolution is None:
            return linear(x, weight)
        if self.is_conv1d:  # MindSpore runs Conv1d as a 2-D convolution of height 1
            return self.convolution(x.expand_dims(2), weight).squeeze(2)
        return self.convolution(x, weight)

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        for name in self._active_in_layer:
            weight = self.delta(name).reshape(self.weight_shape) * self.scaling[name]
            if self.training and self.rank_dropout[name] > 0:
                drop = (self.coin((weight.shape[0],)) > self.rank_dropout[name]).astype(weight.dtype)
                if self.rank_dropout_scale[name]:
                    drop = drop / drop.mean()
                weight = weight * drop.reshape((-1,) + (1,) * (weight.ndim - 1))
            out = self._apply_update(x.astype(weight.dtype), weight)
            if self.training and self.module_dropout[name] > 0:
                out = out * (self.coin((1,)) > self.module_dropout[name]).astype(out.dtype)
            result = result + out.astype(result.dtype)
        return result


class LycorisTuner(BaseTuner):
    """A tuner that wraps the targeted ``Linear``/``mindspore.nn.Dense``/``Conv1d``/``Conv2d`` layers with the
    ``layers_mapping`` class of their type (subclasses of ``layer_cls`` named as HF peft's)."""

    layer_cls = LycorisLayer
    layers_mapping = {}  # base layer class -> adapter layer class

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        rank_key = get_pattern_key(config.rank_pattern.keys(), current_key)
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), current_key)
        r = config.rank_pattern[rank_key] if rank_key else config.r
        alpha = config.alpha_pattern[alpha_key] if alpha_key else config.alpha
        if isinstance(target, self.layer_cls):
            target.update_layer(adapter_name, r, alpha, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        new_cls = next((cls for base_cls, cls in self.layers_mapping.items() if isinstance(base, base_cls)), None)
        if new_cls is None:  # HF peft adapts torch Linear, Conv1d and Conv2d; GPT-2's Conv1D is refused there too
            raise TypeError(f"Target module {current_key!r} of type {type(base).__name__} not supported, currently "
                            f"only adapters for Linear/mindspore.nn.Dense, mindspore.nn.Conv1d and "
                            f"mindspore.nn.Conv2d layers are supported by {self.layer_cls.method}")
        # another method's adapter layer is wrapped as a whole (a mixed model stacks them, as HF peft does)
        replace_child(parent, target_name, new_cls(target, adapter_name, r, alpha, config))
