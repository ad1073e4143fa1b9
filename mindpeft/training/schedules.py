"""Learning-rate schedules for ``mindspore.experimental.optim`` optimizers, with transformers' names.

Each returns a ``mindspore.experimental.optim.lr_scheduler.LambdaLR``: call ``scheduler.step()`` after every
optimizer step, as in torch. The optimizer reads its learning rate from a Parameter, so a step compiled with
``mindspore.jit`` follows the schedule without recompiling.
"""
import math

from mindspore.experimental.optim.lr_scheduler import LambdaLR


def _check_steps(num_warmup_steps, num_training_steps=None):
    if isinstance(num_warmup_steps, bool) or not isinstance(num_warmup_steps, int) or num_warmup_steps < 0:
        raise ValueError(f"num_warmup_steps must be a non-negative integer, got {num_warmup_steps!r}")
    if num_training_steps is None:
        return
    if isinstance(num_training_steps, bool) or not isinstance(num_training_steps, int) or num_training_steps <= 0:
        raise ValueError(f"num_training_steps must be a positive integer, got {num_training_steps!r}")
    if num_warmup_steps > num_training_steps:
        raise ValueError(f"num_warmup_steps ({num_warmup_steps}) is larger than num_training_steps "
                         f"({num_training_steps})")


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, last_epoch=-1):
    """Linear warm-up from 0 to the optimizer's lr over ``num_warmup_steps``, then linear decay to 0 at
    ``num_training_steps``."""
    _check_steps(num_warmup_steps, num_training_steps)

    def factor(step):
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return LambdaLR(optimizer, factor, last_epoch)


def get_cosine_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps, num_cycles=0.5,
                                    last_epoch=-1):
    """Linear warm-up, then a cosine decay from the lr to 0 over ``num_cycles`` half-waves (0.5: one decay)."""
    _check_steps(num_warmup_steps, num_training_steps)

    def factor(step):
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))

    return LambdaLR(optimizer, factor, last_epoch)


def get_constant_schedule_with_warmup(optimizer, num_warmup_steps, last_epoch=-1):
    """Linear warm-up, then the optimizer's lr."""
    _check_steps(num_warmup_steps)

    def factor(step):
        return step / max(1, num_warmup_steps) if step < num_warmup_steps else 1.0

    return LambdaLR(optimizer, factor, last_epoch)


def get_constant_schedule(optimizer, last_epoch=-1):
    """The optimizer's lr at every step."""
    return LambdaLR(optimizer, lambda _: 1.0, last_epoch)


SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup,
             "constant_with_warmup": get_constant_schedule_with_warmup, "constant": get_constant_schedule}


def get_scheduler(name, optimizer, num_warmup_steps=0, num_training_steps=None):
    """The schedule called ``name`` (transformers' ``lr_scheduler_type`` names: linear, cosine, constant,
    constant_with_warmup)."""
    if name not in SCHEDULES:
        raise ValueError(f"Unknown lr_scheduler_type {name!r}; choose from {sorted(SCHEDULES)}")
    if name == "constant":
        return get_constant_schedule(optimizer)
    if name == "constant_with_warmup":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps)
    if num_training_steps is None:
        raise ValueError(f"The {name!r} schedule needs num_training_steps")
    return SCHEDULES[name](optimizer, num_warmup_steps, num_training_steps)

