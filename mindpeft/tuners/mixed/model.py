"""``MixedModel``: adapters of different methods (LoRA, LoHa, LoKr, OFT) in one model, as HF peft's.

A module targeted by adapters of several methods carries one adapter layer per method, each wrapping the previous
one as its ``base_layer`` (the first method added sits innermost); ``get_base_layer()`` unwraps the whole chain.
Adapters of the method a layer already has are added to that layer when it is the outermost, as in HF peft.
"""
from mindspore import nn

from ...models.modeling_utils import sync_parameter_names
from ...utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from ...utils.other import ModulesToSaveWrapper, replace_child
from ...utils.peft_types import PeftType
from ..loha import LoHaLayer, LoHaModel
from ..lokr import LoKrLayer, LoKrModel
from ..lora import LoraLayer, LoraModel
from ..oft import OFTLayer, OFTModel
from ..tuners_utils import BaseTuner, BaseTunerLayer

# method -> (its tuner, its adapter layer class). HF peft 0.21 also mixes AdaLoRA and SHiRA; mindpeft's AdaLoRA keeps
# rank allocation state on its own tuner, and mindpeft has no SHiRA.
MIXED_TUNERS = {
    PeftType.LORA: (LoraModel, LoraLayer),
    PeftType.LOHA: (LoHaModel, LoHaLayer),
    PeftType.LOKR: (LoKrModel, LoKrLayer),
    PeftType.OFT: (OFTModel, OFTLayer),
}
COMPATIBLE_TUNER_TYPES = tuple(MIXED_TUNERS)
PREFIXES = tuple(tuner.prefix for tuner, _ in MIXED_TUNERS.values())


def check_config_compatible(config):
    """``ValueError`` (HF peft's message) unless ``config``'s method can go into a mixed model."""
    if config.peft_type not in COMPATIBLE_TUNER_TYPES:
        value = getattr(config.peft_type, "value", config.peft_type)
        raise ValueError(f"The provided `peft_type` '{value}' is not compatible with the `PeftMixedModel`. "
                         f"Compatible types are: {COMPATIBLE_TUNER_TYPES}")


class _Slot(nn.Cell):
    """A parent holding one layer, for a tuner to replace it with its adapter layer."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer


def layer_chains(model):
    """``[(path, [outermost layer, ..., innermost layer])]`` of the adapter-layer chains in ``model``."""
    chains, inside = [], set()
    for path, cell in model.cells_and_names():
        if isinstance(cell, BaseTunerLayer) and id(cell) not in inside:
            chain = [cell]
            while isinstance(chain[-1].base_layer, BaseTunerLayer):
                chain.append(chain[-1].base_layer)
            inside.update(id(layer) for layer in chain)
            chains.append((path, chain))
    return chains


class MixedModel(BaseTuner):
    """Adapters of the methods in :data:`COMPATIBLE_TUNER_TYPES` on one model; build it with
    ``get_peft_model(model, config, mixed=True)`` (a :class:`mindpeft.PeftMixedModel`)."""

    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def inject_adapter(self, model, adapter_name):
        check_config_compatible(self.peft_config[adapter_name])
        if sum(getattr(c, "bias", "none") != "none" for c in self.peft_config.values()) > 1:
            raise ValueError(f"{type(self).__name__} supports only 1 adapter with bias. When using multiple "
                             "adapters, set bias to 'none' for all adapters.")
        super().inject_adapter(model, adapter_name)

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        tuner_cls, layer_cls = MIXED_TUNERS[config.peft_type]
        wraps_other = isinstance(target, BaseTunerLayer) and (
            not isinstance(target, layer_cls) or isinstance(target.base_layer, BaseTunerLayer))
        if wraps_other and getattr(config, "use_dora", False):  # LoRA's DoRA reads base_layer.weight/bias
            raise ValueError(f"Module {current_key!r} already holds another method's adapter: mindpeft cannot stack "
                             f"a DoRA adapter (use_dora=True) on it yet. Add the DoRA adapter first, so that it "
                             "wraps the plain layer.")
        # The tuners' _create_and_replace read class attributes only (layer_cls, dispatch): the class stands in
        # for an instance.
        if not isinstance(target, BaseTunerLayer) or isinstance(target, layer_cls):
            tuner_cls._create_and_replace(tuner_cls, config, adapter_name, target, target_name, parent, current_key)
            return
        # Another method's layer: build the new layer for the plain base layer, then let it wrap the whole chain.
        slot = _Slot(target.get_base_layer())
        tuner_cls._create_and_replace(tuner_cls, config, adapter_name, slot.layer, "layer", slot, current_key)
        replace_child(slot.layer, "base_layer", target)
        replace_child(parent, target_name, slot.layer)

    def _mark_only_adapters_as_trainable(self, model):
        for name, param in model.parameters_and_names():
            if not any(prefix in name for prefix in PREFIXES) and ".modules_to_save." not in name:
                param.requires_grad = False
        for adapter in self.active_adapters:
            bias = getattr(self.peft_config[adapter], "bias", "none")
            if bias == "all":
                for name, param in model.parameters_and_names():
                    if name.endswith(".bias") and ".original_module." not in name:
                        param.requires_grad = True
            elif bias.endswith("_only"):  # lora_only, oft_only: the biases of the adapted layers
                for _, layer in self.tuner_layers():
                    base = layer.get_base_layer()
                    if getattr(base, "bias", None) is not None:
                        base.bias.requires_grad = True

    def merge_adapter(self, adapter_names=None, safe_merge=False):
        """Merge the active (or given) adapters, the innermost layer of each chain first: an outer OFT rotation
        then turns the weight that already holds the inner updates, as the forward does."""
        for _, chain in layer_chains(self.model):
            for layer in reversed(chain):
                layer.merge(adapter_names=adapter_names, safe_merge=safe_merge)
        self._bump()

    def _unload_and_optionally_merge(self, merge, safe_merge=False, adapter_names=None):
        if merge:
            self.merge_adapter(adapter_names, safe_merge)
        return super()._unload_and_optionally_merge(False)

    def delete_adapter(self, adapter_name):
        """Remove one adapter or a list of them (not while merged); the other active adapters stay active (the
        first remaining adapter becomes active when none would be)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        missing = set(names) - set(self.peft_config)
        if missing:
            raise ValueError(f"Adapter(s) {sorted(missing)} not found, available adapters: "
                             f"{sorted(self.peft_config)}")
        merged = sorted({n for _, layer in self.tuner_layers() for n in layer.merged_adapters} & set(names))
        if merged:
            raise ValueError(f"Cannot delete adapter(s) {merged} while they are merged. Please unmerge them first.")
        remaining = [n for n in self.peft_config if n not in names]
        active = [n for n in self.active_adapters if n not in names] or remaining[:1]
        for name in names:
            del self.peft_config[name]
            for _, layer in self.tuner_layers():
                layer.delete_adapter(name)
            for _, cell in self.model.cells_and_names():
                if isinstance(cell, ModulesToSaveWrapper):
                    cell.delete_adapter(name)
        sync_parameter_names(self.model)
        if active:
            self.set_adapter(active)
        else:
            self.active_adapter = []
            self._bump()

    def add_weighted_adapter(self, *args, **kwargs):
        raise NotImplementedError(f"Weighted adapters are not supported for {type(self).__name__} (yet).")

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)
