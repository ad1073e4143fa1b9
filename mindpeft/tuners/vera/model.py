"""``VeraModel``: injects VeRA layers into a Cell model and owns the shared random projections."""
import math
import warnings

from mindspore import Parameter, Tensor, nn

from ...models.layers import Conv1D, Linear as LinearLayer
from ...utils.constants import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING
from ...utils.other import replace_child
from ...utils.torch_random import TorchCPUGenerator
from ..tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists, layer_features
from .layer import Linear, VeraProjection


def kaiming_projection(generator, shape):
    """HF peft's projection init: U(-b, b) with ``b = sqrt(3) * sqrt(2) / sqrt(shape[1])`` from ``generator``."""
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return generator.uniform(shape, -bound, bound)


def frozen(values):
    return Parameter(Tensor(values), requires_grad=False)


class VeraModel(BaseTuner):
    """Creates a VeRA model from a base model (see :class:`VeraConfig`).

    The first adapter sets the projections: ``vera_A`` (r, largest in_features) then ``vera_B`` (largest
    out_features, r), drawn as HF peft draws them (torch's CPU generator seeded with ``projection_prng_key``,
    reproduced exactly), so an adapter saved with ``save_projection=False`` loads with the same projections.
    Adapters added later get a copy of them, as in HF peft, so their layers must fit in them.
    """

    prefix = "vera_lambda_"
    uses_shared_state = True  # HF peft's flag: the projections live on the tuner, not in the adapted model
    target_module_mapping = TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING

    def inject_adapter(self, model, adapter_name):
        config = self.peft_config[adapter_name]
        others = [c for name, c in self.peft_config.items() if name != adapter_name]
        for other in others:
            if other.projection_prng_key != config.projection_prng_key:
                raise ValueError(f"Vera PRNG initialisation key must be the same for all adapters. Got "
                                 f"config.projection_prng_key={config.projection_prng_key} but previous config had "
                                 f"{other.projection_prng_key}.")
        saved = sorted({c.save_projection for c in others + [config]})
        if len(saved) > 1:
            raise ValueError(f"VeRA projection weights must be saved for all adapters or none, but got multiple "
                             f"different values: {saved}")
        if "vera_A" not in self._cells:
            self.vera_A, self.vera_B = VeraProjection(), VeraProjection()
        for stale in [name for name in self.vera_A.keys() if name not in self.peft_config]:  # from a failed load
            self.vera_A.delete_adapter(stale)
            self.vera_B.delete_adapter(stale)
        if len(self.vera_A):
            first = self.vera_A.keys()[0]
            self.vera_A[adapter_name] = frozen(self.vera_A[first].asnumpy())
            self.vera_B[adapter_name] = frozen(self.vera_B[first].asnumpy())
        else:
            self.vera_A.persistent = self.vera_B.persistent = config.save_projection
            out_features, in_features = self._largest_shape(config, model)
            generator = TorchCPUGenerator(config.projection_prng_key)
            self.vera_A[adapter_name] = frozen(kaiming_projection(generator, (config.r, in_features)))
            self.vera_B[adapter_name] = frozen(kaiming_projection(generator, (out_features, config.r)))
        try:
            super().inject_adapter(model, adapter_name)
        except Exception:
            self.vera_A.delete_adapter(adapter_name)
            self.vera_B.delete_adapter(adapter_name)
            raise

    def _largest_shape(self, config, model):
        """``(out, in)``: the largest of the targeted layers' dimensions."""
        config = self._prepare_adapter_config(config, getattr(model, "config", None))
        if config.target_modules == "all-linear":
            self._expand_all_linear(config, model)
        shapes = []
        for key, cell in model.cells_and_names():
            base = cell.get_base_layer() if isinstance(cell, BaseTunerLayer) else cell
            if key and check_target_module_exists(config, key) and layer_features(base) is not None:
                in_features, out_features = layer_features(base)
                shapes.append((out_features, in_features))
        if not shapes:
            raise ValueError("No layers types compatible with VeRA were found. Please check "
                             "`peft_config.target_modules`.")
        return max(s[0] for s in shapes), max(s[1] for s in shapes)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if isinstance(target, Linear):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (LinearLayer, nn.Dense, Conv1D)):
            raise TypeError(f"Target module {current_key!r} of type {type(base).__name__} is not supported. "
                            "Currently, only Linear/mindspore.nn.Dense and Conv1D layers are supported.")
        if isinstance(base, Conv1D) and not config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out "
                          "to True.")
            config.fan_in_fan_out = True
        elif not isinstance(base, Conv1D) and config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to True but the target module is a Linear layer. Setting "
                          "fan_in_fan_out to False.")
            config.fan_in_fan_out = False
        replace_child(parent, target_name, Linear(target, self.vera_A, self.vera_B, adapter_name, config))

    def delete_adapter(self, adapter_name):
        super().delete_adapter(adapter_name)
        self.vera_A.delete_adapter(adapter_name)
        self.vera_B.delete_adapter(adapter_name)
