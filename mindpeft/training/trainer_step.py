"""The ``Trainer``'s compiled step: gradient accumulation, averaging across data-parallel ranks, clipping by global
norm and the optimizer update, all inside ``mindspore.jit`` graphs.

``accumulate(**batch)`` adds one micro-batch's gradients (and loss) to buffers kept as Parameters;
``update(**batch)`` adds the last micro-batch, averages over the micro-batches (so accumulating 2 x 2 rows equals
one batch of 4), averages across ranks with ``nn.DistributedGradReducer``, clips to ``max_grad_norm`` as torch's
``clip_grad_norm_`` does, updates and clears the buffers. With a loss scale (float16 training) the loss is scaled
before the gradients are taken and each micro-batch's gradients unscaled; an update whose gradients are not all
finite is skipped and a dynamic scale adjusted, as torch's ``GradScaler`` does.
"""
import itertools

import mindspore as ms
from mindspore import nn, ops

from .train_step import _StateAwareJit, _loss_scaler, apply_update, model_loss, scaled_value_and_grad

_INSTANCES = itertools.count(1)


class _Compiled(_StateAwareJit):
    """A :class:`_StateAwareJit` whose function comes from ``builder()``."""

    def __init__(self, model, jit, builder):
        super().__init__(model, jit)
        self._builder = builder

    def _build(self):
        return self._builder()


def _zeros_parameter(like, name):
    return ms.Parameter(ops.zeros(like.shape, like.dtype), name=name, requires_grad=False)


class TrainerStep:
    """Compiled training steps for one model and optimizer.

    Args:
        model: the (Peft) model; recompiled when its adapter state or train mode changes.
        optimizer: a ``mindspore.experimental.optim`` optimizer over the parameters to train.
        loss_fn: ``(**batch) -> scalar loss``; defaults to ``model(**batch)["loss"]``.
        gradient_accumulation_steps: micro-batches per update (1: no buffers, ``update`` only).
        max_grad_norm: clip the averaged gradients to this global L2 norm (``None``/0: no clipping).
        world_size: data-parallel ranks whose gradients and losses are averaged (needs an initialised
            ``mindspore.communication`` group when above 1).
        return_grads: ``update`` also returns the applied gradients (AdaLoRA's ``update_and_allocate`` needs them).
        jit: compile with ``mindspore.jit``.
        loss_scale: ``None``, ``"dynamic"``, a number or a ``mindspore.amp`` scaler (see :class:`TrainStep`).
    """

    def __init__(self, model, optimizer, loss_fn=None, gradient_accumulation_steps=1, max_grad_norm=None,
                 world_size=1, return_grads=False, jit=True, loss_scale=None):
        self.model = model
        self.optimizer = optimizer
        self.loss_scaler = _loss_scaler(loss_scale)
        self.loss_fn = loss_fn or model_loss(model)
        self.max_grad_norm = float(max_grad_norm) if max_grad_norm else None
        self.world_size = world_size
        self.return_grads = return_grads
        self.accumulating = gradient_accumulation_steps > 1
        prefix = f"trainer_step{next(_INSTANCES)}"
        params = optimizer.parameters
        if self.accumulating:
            self._grad_sums = ms.ParameterTuple([_zeros_parameter(p, f"{prefix}.grad_sum.{p.name}")
                                                 for p in params])
            self._loss_sum = _zeros_parameter(ms.Tensor(0.0, ms.float32), f"{prefix}.loss_sum")
            self._count = _zeros_parameter(ms.Tensor(0.0, ms.float32), f"{prefix}.count")
        self._reducer = nn.DistributedGradReducer(params, mean=True, degree=world_size) if world_size > 1 else None
        self._all_reduce = ops.AllReduce() if world_size > 1 else None
        self._accumulate = _Compiled(model, jit, self._build_accumulate) if self.accumulating else None
        self._update = _Compiled(model, jit, self._build_update)

    def accumulate(self, **batch):
        """Add one micro-batch's gradients; returns its loss (this rank's)."""
        if not self.accumulating:
            raise RuntimeError("accumulate() needs gradient_accumulation_steps > 1")
        return self._accumulate(**batch)

    def update(self, **batch):
        """Take the last micro-batch and update; returns ``(loss, grad_norm, grads)``: the loss averaged over the
        micro-batches and ranks, the global gradient norm before clipping (``None`` without clipping) and the
        applied gradients (``None`` unless ``return_grads``)."""
        out = self._update(**batch)
        loss, norm = out[0], (out[1] if self.max_grad_norm else None)
        return loss, norm, (out[-1] if self.return_grads else None)

    def recompile(self):
        """Compile anew at the next call (after dropout was reseeded: its generators live in the graphs)."""
        for compiled in (self._accumulate, self._update):
            if compiled is not None:
                compiled._fn = None

    def _loss_and_grads(self):
        """``(**batch) -> (loss, grads)``, both unscaled."""
        return scaled_value_and_grad(self.loss_fn, self.optimizer.parameters, self.loss_scaler)

    def _build_accumulate(self):
        grad_fn = self._loss_and_grads()
        grad_sums, loss_sum, count = self._grad_sums, self._loss_sum, self._count

        def accumulate(**batch):
            loss, grads = grad_fn(**batch)
            for total, grad in zip(grad_sums, grads):
                ops.assign_add(total, grad)
            ops.assign_add(loss_sum, loss)
            ops.assign_add(count, ops.ones_like(count))
            return loss

        return accumulate

    def _build_update(self):
        grad_fn = self._loss_and_grads()
        optimizer, reducer, all_reduce, scaler = self.optimizer, self._reducer, self._all_reduce, self.loss_scaler
        accumulating, world_size, max_norm = self.accumulating, float(self.world_size), self.max_grad_norm
        return_grads = self.return_grads
        if accumulating:
            grad_sums, loss_sum, count = self._grad_sums, self._loss_sum, self._count

        def update(**batch):
            loss, grads = grad_fn(**batch)
            if accumulating:
                micro_batches = count + 1.0
                grads = tuple((total + grad) / micro_batches for total, grad in zip(grad_sums, grads))
                loss = (loss_sum + loss) / micro_batches
            if reducer is not None:
                grads = reducer(grads)
                loss = all_reduce(loss) / world_size
            norm = loss
            if max_norm is not None:
                norm = ops.sqrt(ops.addn([ops.reduce_sum(ops.square(grad.astype(ms.float32))) for grad in grads]))
                scale = ops.clamp(max_norm / (norm + 1e-6), max=1.0)
                grads = tuple(grad * scale.astype(grad.dtype) for grad in grads)
            loss = apply_update(loss, grads, optimizer, scaler)
            if accumulating:
                for total in grad_sums:
                    loss = ops.depend(loss, ops.assign(total, ops.zeros_like(total)))
                loss = ops.depend(loss, ops.assign(loss_sum, ops.zeros_like(loss_sum)))
                loss = ops.depend(loss, ops.assign(count, ops.zeros_like(count)))
            if return_grads:
                return loss, norm, grads
            return loss, norm

        return update
