"""AdaLoRA layers (``base(x) + B (A * E) x * scaling / ranknum``) and the rank allocator."""
import numpy as np
from mindspore import Parameter, Tensor, nn

from ...models.layers import Conv1D, Dropout, Linear as LinearLayer, linear
from ...models.modeling_utils import write_parameter
from ..lora.layer import LoraLayer
from ..tuners_utils import ParameterDict, layer_features


def _param(array, requires_grad=True):
    return Parameter(Tensor(np.ascontiguousarray(array, dtype=np.float32)), requires_grad=requires_grad)


class AdaLoraLayer(LoraLayer):
    adapter_layer_names = ("lora_A", "lora_B", "lora_E")
    other_param_names = ("r", "lora_alpha", "scaling", "lora_dropout", "ranknum")


class SVDLinear(nn.Cell, AdaLoraLayer):
    """AdaLoRA around ``Linear``/``mindspore.nn.Dense``/``Conv1D``: ``lora_A`` (r, in), ``lora_E`` (r, 1),
    ``lora_B`` (out, r) and the fixed ``ranknum`` (the initial rank), named as in HF peft."""

    def __init__(self, base_layer, adapter_name, r, lora_alpha, lora_dropout=0.0, fan_in_fan_out=False,
                 init_lora_weights=True):
        super().__init__()
        self._init_tuner_layer(base_layer)
        self.r, self.lora_alpha, self.scaling = {}, {}, {}
        self.lora_dropout = nn.CellDict()
        self.lora_A, self.lora_B, self.lora_E = ParameterDict(), ParameterDict(), ParameterDict()
        self.ranknum = ParameterDict()
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = layer_features(base_layer)
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights)

    def update_layer(self, adapter_name, r, lora_alpha, lora_dropout, init_lora_weights=True, ranknum=None):
        if r < 0:
            raise ValueError(f"`r` should be a positive integer or 0, but the value passed is {r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = Dropout(lora_dropout)
        std = 0.02 if init_lora_weights else 1.0
        self.lora_A[adapter_name] = _param(np.random.normal(0, std, (r, self.in_features)))
        self.lora_E[adapter_name] = _param(np.zeros((r, 1)) if init_lora_weights else np.random.normal(0, 1, (r, 1)))
        self.lora_B[adapter_name] = _param(np.random.normal(0, std, (self.out_features, r)))
        self.ranknum[adapter_name] = _param(np.array([float(r if ranknum is None else ranknum)]), requires_grad=False)
        self.scaling[adapter_name] = lora_alpha if lora_alpha > 0 else float(r)
        self.set_adapter(self.active_adapters or (adapter_name,))

    def delta_weight(self, adapter_name):
        a, e = self.lora_A[adapter_name].asnumpy(), self.lora_E[adapter_name].asnumpy()
        delta = self.lora_B[adapter_name].asnumpy() @ (a * e)
        delta = delta * self.scaling[adapter_name] / (self.ranknum[adapter_name].asnumpy()[0] + 1e-5)
        return delta.T if self.fan_in_fan_out else delta

    def construct(self, x):
        result = self.base_layer(x)
        if self.disable_adapters or self.merged_adapters:
            return result
        for name in self._active_in_layer:
            a = getattr(self.lora_A, name) * getattr(self.lora_E, name)
            scale = self.scaling[name] / (getattr(self.ranknum, name) + 1e-5)
            lora_out = linear(linear(self.lora_dropout[name](x), a) * scale, getattr(self.lora_B, name))
            result = result + lora_out.astype(result.dtype)
        return result


def dispatch_adalora_layer(target, adapter_name, config, r, lora_alpha):
    kwargs = dict(lora_dropout=config.lora_dropout, init_lora_weights=config.init_lora_weights)
    if isinstance(target, Conv1D):
        config.fan_in_fan_out = True
        return SVDLinear(target, adapter_name, r, lora_alpha, fan_in_fan_out=True, **kwargs)
    if isinstance(target, (LinearLayer, nn.Dense)):
        config.fan_in_fan_out = False
        return SVDLinear(target, adapter_name, r, lora_alpha, **kwargs)
    raise ValueError(f"Target module {type(target).__name__} is not supported by AdaLoRA. Currently, only "
                     "Linear/Dense and Conv1D layers are supported.")


class RankAllocator:
    """AdaLoRA's budget schedule and importance-based masking of singular values (HF peft's algorithm).

    Works on ``{model parameter name: numpy array}`` values and gradients, since MindSpore keeps gradients
    outside the parameters.
    """

    def __init__(self, model, config, adapter_name):
        self.config = config
        self.adapter_name = adapter_name
        self.beta1, self.beta2 = config.beta1, config.beta2
        self.reset_ipt()
        self.init_bgt = 0
        names = set()
        for name, param in model.parameters_and_names():
            if f"lora_A.{adapter_name}" in name:
                self.init_bgt += param.shape[0]
                names.add(name.replace("lora_A", "%s"))
        self.name_set = sorted(names)
        self.target_bgt = config.target_r * len(self.name_set)

    def reset_ipt(self):
        self.ipt, self.exp_avg_ipt, self.exp_avg_unc = {}, {}, {}

    def budget_schedule(self, step):
        tinit, tfinal, total = self.config.tinit, self.config.tfinal, self.config.total_step
        if step <= tinit:
            return self.init_bgt, False
        if step > total - tfinal:
            return self.target_bgt, True
        mul_coeff = 1 - (step - tinit) / (total - tfinal - tinit)
        budget = int((self.init_bgt - self.target_bgt) * (mul_coeff ** 3) + self.target_bgt)
        return budget, step % self.config.deltaT == 0

    def update_ipt(self, params, grads):
        for name, value in params.items():
            if "lora_" not in name or self.adapter_name not in name or name not in grads:
                continue
            if name not in self.ipt:
                self.exp_avg_ipt[name] = np.zeros_like(value)
                self.exp_avg_unc[name] = np.zeros_like(value)
            self.ipt[name] = np.abs(value * grads[name])
            self.exp_avg_ipt[name] = self.beta1 * self.exp_avg_ipt[name] + (1 - self.beta1) * self.ipt[name]
            self.exp_avg_unc[name] = (self.beta2 * self.exp_avg_unc[name]
                                      + (1 - self.beta2) * np.abs(self.ipt[name] - self.exp_avg_ipt[name]))

    def _score(self, name):
        return self.exp_avg_ipt[name] * self.exp_avg_unc[name]

    def mask_to_budget(self, model, budget):
        """Zero the least important singular values so ``budget`` remain; returns the rank pattern."""
        vector_ipt, value_ipt = {}, {}
        for name, _ in model.parameters_and_names():
            if f"lora_A.{self.adapter_name}" in name:
                vector_ipt.setdefault(name.replace("lora_A", "%s"), []).append(
                    self._score(name).mean(axis=1, keepdims=True))
            if f"lora_B.{self.adapter_name}" in name:
                vector_ipt.setdefault(name.replace("lora_B", "%s"), []).append(
                    self._score(name).mean(axis=0).reshape(-1, 1))
            if f"lora_E.{self.adapter_name}" in name:
                value_ipt[name.replace("lora_E", "%s")] = self._score(name)
        triplet_ipt, all_scores = {}, []
        for key, vectors in vector_ipt.items():
            summed = value_ipt[key].reshape(-1) + np.concatenate(vectors, axis=1).sum(axis=1).reshape(-1)
            triplet_ipt[key % "lora_E"] = summed.reshape(-1, 1)
            all_scores.append(summed)
        scores = np.concatenate(all_scores)
        k = self.init_bgt - budget
        threshold = np.partition(scores, k - 1)[k - 1] if k > 0 else -np.inf
        rank_pattern = {}
        for name, param in model.parameters_and_names():
            if f"lora_E.{self.adapter_name}" in name:
                drop = triplet_ipt[name] <= threshold
                write_parameter(param, np.where(drop, 0.0, param.asnumpy()))
                rank_pattern[name] = (~drop).reshape(-1).tolist()
        return rank_pattern

    def update_and_allocate(self, model, global_step, grads, force_mask=False):
        params = {n: p.asnumpy() for n, p in model.parameters_and_names()}
        if global_step < self.config.total_step - self.config.tfinal:
            self.update_ipt(params, grads)
        budget, mask_ind = self.budget_schedule(global_step)
        rank_pattern = self.mask_to_budget(model, budget) if (mask_ind or force_mask) else None
        return budget, rank_pattern

    def mask_using_rank_pattern(self, model, rank_pattern):
        for name, param in model.parameters_and_names():
            if f"lora_E.{self.adapter_name}" in name:
                key = name if name in rank_pattern else name.replace(f".{self.adapter_name}", "")
                keep = np.array(rank_pattern[key], dtype=bool).reshape(-1, 1)
                write_parameter(param, np.where(keep, param.asnumpy(), 0.0))
