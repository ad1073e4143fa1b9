"""Learning-rate schedules as per-step lists, which ``mindspore.nn`` optimizers accept as ``learning_rate``."""


def linear_schedule_with_warmup(learning_rate, num_warmup_steps, num_training_steps):
    """Linear warm-up from 0 to ``learning_rate`` over ``num_warmup_steps``, then linear decay to 0 at
    ``num_training_steps`` (HF's ``get_linear_schedule_with_warmup``)."""
    if num_training_steps <= 0:
        raise ValueError(f"num_training_steps must be positive, got {num_training_steps}")
    lrs = []
    for step in range(num_training_steps):
        if step < num_warmup_steps:
            factor = step / max(1, num_warmup_steps)
        else:
            factor = max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))
        lrs.append(learning_rate * factor)
    return lrs
