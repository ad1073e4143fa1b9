"""Compiled training and evaluation steps that stay correct when adapters change.

Graph mode bakes adapter state (active adapter, enabled, merged) and train/eval mode into the compiled graph,
so these wrappers recompile whenever ``model.state_version`` or ``model.training`` changes.
"""
import contextlib
import itertools
import numbers
import types

import mindspore as ms
from mindspore import ops
from mindspore.amp import DynamicLossScaler, StaticLossScaler, all_finite
from mindspore.graph.api import _pynative_executor

from ..models.layer_graphs import shared_graph_marks, shared_layer_graphs
from ..models.model_outputs import compiling_gradient_graph, to_model_output
from .value_checks import check_batch, value_limits


def model_loss(model):
    """A loss function ``(**batch) -> model(**batch)["loss"]`` for models that compute their loss from labels."""

    def loss_fn(**batch):
        return model(**batch)["loss"]

    return loss_fn


_BUILD_IDS = itertools.count(1)


def uniquely_named(fn, prefix="loss_fn"):
    """``fn`` under a name of its own. MindSpore caches parsed functions by class name, ``__name__`` and ``id()``:
    a new function at the address of a freed one with the same name would get the freed one's graph (its model,
    its weights, its signature: "Got an unexpected keyword argument"). A plain function is copied under the new
    name (the graph parses the copy, so the name must be on it, not on a wrapper); anything else is wrapped."""
    name = f"{prefix}_{next(_BUILD_IDS)}"
    if isinstance(fn, types.FunctionType):
        named = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        named.__kwdefaults__ = fn.__kwdefaults__
    else:
        def named(*args, **kwargs):
            return fn(*args, **kwargs)
    named.__name__ = named.__qualname__ = name
    return named


def value_and_grad(loss_fn, params):
    """``mindspore.value_and_grad`` of ``loss_fn`` for ``params``, uniquely named (see :func:`uniquely_named`)."""
    grad_fn = ms.value_and_grad(uniquely_named(loss_fn), None, params)
    grad_fn.__name__ = grad_fn.__qualname__ = f"value_and_grad_{next(_BUILD_IDS)}"
    return grad_fn


class _StateAwareJit:
    """Calls ``self._build()``'s function, rebuilt when the model's adapter state, its train mode or its gradient
    checkpointing changes (not on every global graph-version move: other models' changes must not recompile this
    one, which hot-swapping relies on).

    Compiled, a batch's token ids and labels are first checked against the model (a graph cannot look at values;
    see :mod:`mindpeft.training.value_checks`). In PyNative an error raised inside the step (a model's input check)
    would leave MindSpore's gradient recording open, breaking later steps and in-place weight writes: it is closed
    before the error goes on, as ``mindspore.jit`` does for its own errors."""

    takes_gradients = True  # see models.model_outputs.swap_axes

    def __init__(self, model, jit=True):
        self.model = model
        self.jit = jit
        self._fn = None
        self._key = None
        self._shared_graphs = []
        self._limits = value_limits(model) if jit else {}

    def _build(self):
        raise NotImplementedError

    def __call__(self, **batch):
        key = (getattr(self.model, "state_version", None), self.model.training,
               getattr(self.model, "is_gradient_checkpointing", False))
        if self._fn is None or key != self._key:
            fn = self._build()
            if self.jit:
                # MindSpore warns '"step" has been compiled again' when a new jit object wraps a function with the
                # same name, file and line as an earlier one. Each build here is for another model, adapter state
                # or train mode, so its compile is expected: a name of its own per build keeps the log quiet.
                fn.__name__ = fn.__qualname__ = f"{fn.__name__}_{next(_BUILD_IDS)}"
            self._fn = ms.jit(fn) if self.jit else fn
            self._key = key
            self._shared_graphs = shared_graph_marks(self.model) if self.jit and self.takes_gradients else []
        check_batch(batch, self._limits)
        try:
            return self._run(batch)
        except (AttributeError, RuntimeError, ValueError) as err:
            message = str(err)
            if self.jit and ("'Dictionary' object has no attribute" in message
                             or "The key 0 does not exist" in message):
                raise AttributeError("Inside mindspore.jit a model's outputs are a plain dict: read them by key "
                                     "(outputs[\"loss\"]), not as outputs.loss or outputs[0]. MindSpore said: "
                                     f"{message.splitlines()[0]}") from err
            if self.jit and "The parameters number of the function is" in message:
                raise RuntimeError("This optimizer was called outside mindspore.jit before; MindSpore 2.10's "
                                   "mindspore.experimental.optim optimizers cannot be compiled into a graph after "
                                   "that. Create the optimizer anew for the compiled step. MindSpore said: "
                                   f"{message.splitlines()[0]}") from err
            raise

    def _run(self, batch):
        try:
            with compiling_gradient_graph() if self.takes_gradients else contextlib.nullcontext(), \
                    shared_layer_graphs(self._shared_graphs):
                return self._fn(**batch)
        except BaseException:
            if not self.jit:
                _pynative_executor.clear_res()
            raise


class TrainStep(_StateAwareJit):
    """``loss = step(**batch)``: forward, gradients of ``optimizer.parameters`` and an optimizer update.

    Args:
        model: the (Peft) model; ``model.state_version`` is read when present.
        optimizer: a ``mindspore.nn.Optimizer`` over the parameters to train, e.g. ``model.trainable_params()``.
        loss_fn: ``(**batch) -> scalar loss``; defaults to ``model(**batch)["loss"]``.
        jit: compile with ``mindspore.jit`` (on CPU 2-7x faster than PyNative, most on small models).
        return_grads: return ``(loss, grads)``; AdaLoRA's ``update_and_allocate`` needs the gradients.
        loss_scale: for float16 training, as torch's ``GradScaler``: ``"dynamic"`` (scale 2**16, halved on
            overflow, doubled after 2000 finite steps), a number (a fixed scale) or a ``mindspore.amp``
            ``DynamicLossScaler``/``StaticLossScaler``. The loss is multiplied by the scale before the gradients
            are taken and the gradients divided by it; a step whose gradients are not all finite is skipped (the
            optimizer is not called) and a dynamic scale adjusted. ``self.loss_scaler.scale_value`` is the scale.
            The returned loss and gradients are unscaled.
    """

    def __init__(self, model, optimizer, loss_fn=None, jit=True, return_grads=False, loss_scale=None):
        super().__init__(model, jit)
        self.optimizer = optimizer
        self.loss_fn = loss_fn or model_loss(model)
        self.return_grads = return_grads
        self.loss_scaler = _loss_scaler(loss_scale)

    def _build(self):
        grad_fn = scaled_value_and_grad(self.loss_fn, self.optimizer.parameters, self.loss_scaler)
        optimizer, scaler, return_grads = self.optimizer, self.loss_scaler, self.return_grads

        def step(**batch):
            loss, grads = grad_fn(**batch)
            loss = apply_update(loss, grads, optimizer, scaler)
            if return_grads:
                return loss, grads
            return loss

        return step


def scaled_value_and_grad(loss_fn, params, scaler=None):
    """``(**batch) -> (loss, grads)`` of ``loss_fn`` for ``params`` (see :func:`value_and_grad`). With a loss
    ``scaler`` the loss is scaled before the gradients are taken, and both come back unscaled."""
    if scaler is None:
        return value_and_grad(loss_fn, params)

    def scaled_loss(**batch):
        return scaler.scale(loss_fn(**batch))

    grad_fn = value_and_grad(scaled_loss, params)

    def loss_and_grads(**batch):
        loss, grads = grad_fn(**batch)
        return scaler.unscale(loss), scaler.unscale(grads)

    return uniquely_named(loss_and_grads, "loss_and_grads")


def apply_update(loss, grads, optimizer, scaler=None):
    """``loss`` after ``optimizer(grads)``. With a loss ``scaler`` a step whose gradients are not all finite is
    skipped (the optimizer is not called) and a dynamic scale adjusted, as torch's ``GradScaler`` does."""
    if scaler is None:
        return ops.depend(loss, optimizer(grads))
    finite = all_finite(grads)
    if finite:
        loss = ops.depend(loss, optimizer(grads))
    if isinstance(scaler, DynamicLossScaler):
        loss = ops.depend(loss, scaler.adjust(finite))
    return loss


def _loss_scaler(loss_scale):
    """A ``mindspore.amp`` loss scaler for :class:`TrainStep`'s ``loss_scale``."""
    if loss_scale is None or isinstance(loss_scale, (DynamicLossScaler, StaticLossScaler)):
        return loss_scale
    if isinstance(loss_scale, str) and loss_scale == "dynamic":
        return DynamicLossScaler(scale_value=2.0 ** 16, scale_factor=2, scale_window=2000)
    if isinstance(loss_scale, numbers.Real) and not isinstance(loss_scale, bool) and loss_scale >= 1:
        return StaticLossScaler(float(loss_scale))
    raise ValueError(f"loss_scale={loss_scale!r} is not a loss scale: use 'dynamic', a number >= 1 or a "
                     "mindspore.amp DynamicLossScaler / StaticLossScaler")


class ForwardStep(_StateAwareJit):
    """``outputs = forward(**batch)``: the model's forward, compiled (for evaluation loops)."""

    takes_gradients = False

    def _build(self):
        model = self.model

        def forward(**batch):
            return model(**batch)

        return forward

    def __call__(self, **batch):
        return to_model_output(super().__call__(**batch))
