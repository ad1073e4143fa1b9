"""Compiled training and evaluation steps that stay correct when adapters change.

Graph mode bakes adapter state (active adapter, enabled, merged) and train/eval mode into the compiled graph,
so these wrappers recompile whenever ``model.state_version`` or ``model.training`` changes.
"""
import itertools

import mindspore as ms
from mindspore import ops

from ..models.model_outputs import to_model_output


def model_loss(model):
    """A loss function ``(**batch) -> model(**batch)["loss"]`` for models that compute their loss from labels."""

    def loss_fn(**batch):
        return model(**batch)["loss"]

    return loss_fn


_BUILD_IDS = itertools.count(1)


def uniquely_named(fn, prefix="loss_fn"):
    """``fn`` under a name of its own. MindSpore caches parsed functions by name and ``id()``: a new function at
    the address of a freed one with the same name would get the freed one's graph (its model, its weights, its
    signature: "Got an unexpected keyword argument")."""

    def named(*args, **kwargs):
        return fn(*args, **kwargs)

    named.__name__ = named.__qualname__ = f"{prefix}_{next(_BUILD_IDS)}"
    return named


def value_and_grad(loss_fn, params):
    """``mindspore.value_and_grad`` of ``loss_fn`` for ``params``, uniquely named (see :func:`uniquely_named`)."""
    grad_fn = ms.value_and_grad(uniquely_named(loss_fn), None, params)
    grad_fn.__name__ = grad_fn.__qualname__ = f"value_and_grad_{next(_BUILD_IDS)}"
    return grad_fn


class _StateAwareJit:
    """Calls ``self._build()``'s function, rebuilt when the model's adapter state or train mode changes."""

    def __init__(self, model, jit=True):
        self.model = model
        self.jit = jit
        self._fn = None
        self._key = None

    def _build(self):
        raise NotImplementedError

    def __call__(self, **batch):
        key = (getattr(self.model, "state_version", None), self.model.training)
        if self._fn is None or key != self._key:
            fn = self._build()
            if self.jit:
                # MindSpore warns '"step" has been compiled again' when a new jit object wraps a function with the
                # same name, file and line as an earlier one. Each build here is for another model, adapter state
                # or train mode, so its compile is expected: a name of its own per build keeps the log quiet.
                fn.__name__ = fn.__qualname__ = f"{fn.__name__}_{next(_BUILD_IDS)}"
            self._fn = ms.jit(fn) if self.jit else fn
            self._key = key
        try:
            return self._fn(**batch)
        except (AttributeError, RuntimeError, ValueError) as err:
            message = str(err)
            if self.jit and ("'Dictionary' object has no attribute" in message or "The key 0 does not exist" in message):
                raise AttributeError("Inside mindspore.jit a model's outputs are a plain dict: read them by key "
                                     "(outputs[\"loss\"]), not as outputs.loss or outputs[0]. MindSpore said: "
                                     f"{message.splitlines()[0]}") from err
            if self.jit and "The parameters number of the function is" in message:
                raise RuntimeError("This optimizer was called outside mindspore.jit before; MindSpore 2.10's "
                                   "mindspore.experimental.optim optimizers cannot be compiled into a graph after "
                                   "that. Create the optimizer anew for the compiled step. MindSpore said: "
                                   f"{message.splitlines()[0]}") from err
            raise


class TrainStep(_StateAwareJit):
    """``loss = step(**batch)``: forward, gradients of ``optimizer.parameters`` and an optimizer update.

    Args:
        model: the (Peft) model; ``model.state_version`` is read when present.
        optimizer: a ``mindspore.nn.Optimizer`` over the parameters to train, e.g. ``model.trainable_params()``.
        loss_fn: ``(**batch) -> scalar loss``; defaults to ``model(**batch)["loss"]``.
        jit: compile with ``mindspore.jit`` (on CPU 2-7x faster than PyNative, most on small models).
        return_grads: return ``(loss, grads)``; AdaLoRA's ``update_and_allocate`` needs the gradients.
    """

    def __init__(self, model, optimizer, loss_fn=None, jit=True, return_grads=False):
        super().__init__(model, jit)
        self.optimizer = optimizer
        self.loss_fn = loss_fn or model_loss(model)
        self.return_grads = return_grads

    def _build(self):
        grad_fn = value_and_grad(self.loss_fn, self.optimizer.parameters)
        optimizer = self.optimizer
        return_grads = self.return_grads

        def step(**batch):
            loss, grads = grad_fn(**batch)
            loss = ops.depend(loss, optimizer(grads))
            if return_grads:
                return loss, grads
            return loss

        return step


class ForwardStep(_StateAwareJit):
    """``outputs = forward(**batch)``: the model's forward, compiled (for evaluation loops)."""

    def _build(self):
        model = self.model

        def forward(**batch):
            return model(**batch)

        return forward

    def __call__(self, **batch):
        return to_model_output(super().__call__(**batch))
