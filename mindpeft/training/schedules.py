"""Learning-rate schedules as ``mindspore.nn`` ``LearningRateSchedule`` Cells (usable under ``mindspore.jit``)."""
import mindspore as ms
from mindspore import ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule


class LinearScheduleWithWarmup(LearningRateSchedule):
    """Linear warm-up from 0 to ``learning_rate`` over ``num_warmup_steps``, then linear decay to 0 at
    ``num_training_steps`` and 0 after it (HF's ``get_linear_schedule_with_warmup``)."""

    def __init__(self, learning_rate, num_warmup_steps, num_training_steps):
        super().__init__()
        if num_training_steps <= 0:
            raise ValueError(f"num_training_steps must be positive, got {num_training_steps}")
        if not 0 <= num_warmup_steps <= num_training_steps:
            raise ValueError(f"num_warmup_steps must be in [0, {num_training_steps}], got {num_warmup_steps}")
        self.learning_rate = float(learning_rate)
        self.num_warmup_steps = float(num_warmup_steps)
        self.num_training_steps = float(num_training_steps)

    def construct(self, global_step):
        step = global_step.astype(ms.float32)
        warmup = step / max(1.0, self.num_warmup_steps)
        decay = (self.num_training_steps - step) / max(1.0, self.num_training_steps - self.num_warmup_steps)
        factor = ops.select(step < self.num_warmup_steps, warmup, ops.maximum(decay, ops.zeros_like(decay)))
        return self.learning_rate * factor


def linear_schedule_with_warmup(learning_rate, num_warmup_steps, num_training_steps):
    """A :class:`LinearScheduleWithWarmup` to pass as an optimizer's ``learning_rate``."""
    return LinearScheduleWithWarmup(learning_rate, num_warmup_steps, num_training_steps)
