"""The Poly router: per task, a learned mixture over the skills of each split."""
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.seed import _get_graph_seed

from ...models.layers import _uniform_real

EPS = 1e-12
_UNIFORM_CLAMP = float(np.finfo(np.float32).eps)  # torch's clamp_probs for float32


class PolyRouter(nn.Cell):
    """``module_logits`` (n_tasks, n_splits * n_skills), HF peft's parameter, initialised U(-1e-3, 1e-3).

    ``construct(task_ids)`` gives mixing weights (batch, n_splits, n_skills) that sum to one over the skills:
    the sigmoid of the task's logits in eval mode; in training mode a relaxed Bernoulli sample (temperature 1, as
    torch's ``RelaxedBernoulli(...).rsample()``) drawn from a seeded uniform generator, so runs repeat under
    :func:`mindpeft.set_seed`.
    """

    def __init__(self, config):
        super().__init__()
        self.n_splits = config.n_splits
        self.n_skills = config.n_skills
        shape = (config.n_tasks, config.n_splits * config.n_skills)
        self.module_logits = Parameter(Tensor(np.random.uniform(-1e-3, 1e-3, shape).astype(np.float32)))
        self.uniform = _uniform_real(*_get_graph_seed(0, "poly_router"))

    def construct(self, task_ids):
        logits = ops.gather(self.module_logits, task_ids, 0).view(-1, self.n_splits, self.n_skills)
        if self.training:
            u = ops.clamp(self.uniform(logits.shape), _UNIFORM_CLAMP, 1.0 - _UNIFORM_CLAMP)
            logits = logits + ops.log(u) - ops.log1p(-u)  # a logistic sample around the logits
        weights = ops.sigmoid(logits)
        return weights / (weights.sum(-1, keepdims=True) + EPS)
