"""Configuration of LoRA (Hu et al., 2021), field for field as HF peft's ``LoraConfig``."""
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

from ...config import (PeftConfig, check_bool, check_mapping, check_names, check_number, check_targets, describe,
                       is_integer, is_number)
from ...utils.peft_types import PeftType
from .initialization import check_init_lora_weights, mutates_base_weight


@dataclass
class LoraConfig(PeftConfig):
    """Low-rank adapters ``W + (lora_alpha / r) * B A`` on the targeted layers."""

    r: int = field(default=8, metadata={"help": "LoRA rank"})
    target_modules: Optional[Union[list, str]] = field(
        default=None,
        metadata={"help": "Module names (exact or suffix match), a regex (full match), or 'all-linear'. "
                          "Defaults to the architecture's usual attention projections."})
    exclude_modules: Optional[Union[list, str]] = field(default=None, metadata={"help": "Modules never targeted."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input"})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for (in, out) weights such as GPT-2 Conv1D"})
    bias: str = field(default="none", metadata={"help": "Biases to train: 'none', 'all' or 'lora_only'"})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha / sqrt(r)"})
    modules_to_save: Optional[list] = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. a classifier)"})
    init_lora_weights: Union[bool, str] = field(
        default=True, metadata={"help": "True: B=0 and A Kaiming-uniform; 'gaussian': A ~ N(0, 1/r); False: random; "
                                        "'pissa' / 'pissa_niter_<n>' / 'olora': factors from the base weight's "
                                        "SVD / QR (the base weight keeps the rest); 'orthogonal': B A = 0 from "
                                        "orthogonal halves"})
    layers_to_transform: Optional[Union[list, int]] = field(
        default=None, metadata={"help": "Layer indexes to adapt (all by default)"})
    layers_pattern: Optional[Union[list, str]] = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'h' or 'layers', used with layers_to_transform"})
    rank_pattern: Optional[dict] = field(default_factory=dict, metadata={"help": "Per-module rank overrides (regex)"})
    alpha_pattern: Optional[dict] = field(default_factory=dict, metadata={"help": "Per-module alpha overrides"})
    use_dora: bool = field(
        default=False, metadata={"help": "DoRA: a trained magnitude per output feature (lora_magnitude_vector) "
                                         "rescales the LoRA-adapted weight"})
    lora_bias: bool = field(
        default=False, metadata={"help": "Give lora_B a bias (merging adds it into the base layer's bias)"})
    trainable_token_indices: Optional[Union[list, dict]] = field(
        default=None, metadata={"help": "Token indices of the input embedding (a list) or {module name: indices} to "
                                        "train selectively; saved as <embedding>.token_adapter.trainable_tokens_delta"})
    loftq_config: Union[dict, object] = field(
        default_factory=dict, metadata={"help": "LoftQ settings (a LoftQConfig or its dict) for "
                                                "init_lora_weights='loftq', which quantizes the base weights and "
                                                "initialises the adapter from the quantization error"})
    target_parameters: Optional[list] = field(
        default=None, metadata={"help": "Names of bare Parameters to adapt (e.g. 'experts.gate_up_proj', stacked "
                                        "expert weights (experts, in, out)), matched like target_modules lists"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.LORA
        if not is_integer(self.r) or self.r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {self.r!r}")
        check_number(self, "lora_alpha")
        check_number(self, "lora_dropout")
        if self.lora_dropout < 0 or self.lora_dropout >= 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        check_targets(self)
        for name in ("fan_in_fan_out", "use_rslora", "use_dora", "lora_bias"):
            check_bool(self, name)
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        check_init_lora_weights(self.init_lora_weights)
        self._check_loftq_config()
        self._check_trainable_token_indices()
        if isinstance(self.target_parameters, str):
            raise TypeError("`target_parameters` must be a list of strings or None.")
        check_names(self, "target_parameters", as_set=False)
        if self.lora_bias:
            if self.init_lora_weights not in (True, False):
                raise ValueError(f"The argument lora_bias=True is only supported with init_lora_weights=True or "
                                 f"False, got init_lora_weights={self.init_lora_weights} instead.")
            if self.use_dora:
                raise ValueError("The argument lora_bias=True is not supported for DoRA, please pass use_dora=False")
        self._check_rank_pattern()
        check_mapping(self, "alpha_pattern", is_number, "finite ints or floats")
        if self.use_rslora and (self.rank_pattern or self.alpha_pattern) and mutates_base_weight(
                self.init_lora_weights):
            warnings.warn("Using Rank-Stabilized LoRA with rank_pattern/alpha_pattern and post-training conversion of "
                          "modified base weights PiSSA/CorDA/OLoRA/LoRA-GA means that you won't be able to pass "
                          "`path_initial_model_for_weight_conversion` to `save_pretrained` to restore the initial "
                          "values of the base weights; if you intend to do this, please ensure not to use rslora or "
                          "rank_pattern/alpha_pattern.")
        self._custom_modules = None

    def _check_loftq_config(self):
        """HF peft's rules: ``loftq_config`` is needed by, and only kept for, ``init_lora_weights='loftq'``."""
        if self.init_lora_weights != "loftq":
            if self.loftq_config:
                self.loftq_config = {}
                warnings.warn("`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'.")
            return
        if not self.loftq_config:
            raise ValueError("`loftq_config` must be specified when `init_lora_weights` is 'loftq'.")
        if not isinstance(self.loftq_config, dict):
            self.loftq_config = dict(vars(self.loftq_config))
        bits, iters = self.loftq_config.get("loftq_bits", 4), self.loftq_config.get("loftq_iter", 1)
        if bits not in (4, 8) or not is_integer(iters) or iters < 1:
            raise ValueError(f"loftq_config needs loftq_bits 4 or 8 and a positive integer loftq_iter, got "
                             f"loftq_bits={describe(bits)}, loftq_iter={describe(iters)}")
        self.loftq_config = {"loftq_bits": bits, "loftq_iter": iters}

    def _register_custom_module(self, mapping):
        """Have LoRA wrap the layer classes of ``mapping`` (``{layer class: LoRA layer class}``, HF peft's
        experimental API), consulted before mindpeft's own mapping. A LoRA layer class is built as
        ``cls(base_layer, adapter_name, config=config, r=r, lora_alpha=lora_alpha)`` and gets further adapters
        through ``update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)``, as
        :class:`mindpeft.tuners.lora.layer.Linear` does."""
        if not isinstance(mapping, dict) or not all(isinstance(k, type) and isinstance(v, type)
                                                    for k, v in mapping.items()):
            raise ValueError(f"_register_custom_module expects a dict mapping layer classes to LoRA layer classes, "
                             f"got {describe(mapping)}")
        self._custom_modules = {**(self._custom_modules or {}), **mapping}

    def _check_trainable_token_indices(self):
        from ..trainable_tokens.config import check_token_indices

        indices = self.trainable_token_indices
        if indices is None or isinstance(indices, list):
            if indices is not None:
                check_token_indices("trainable_token_indices", indices)
            return
        if not isinstance(indices, dict) or not indices or not all(isinstance(k, str) for k in indices):
            raise ValueError(f"trainable_token_indices must be a list of token indices or a dict mapping module names "
                             f"to such lists, got {describe(indices)}")
        for name, value in indices.items():
            check_token_indices(f"trainable_token_indices[{name!r}]", value)

    def _check_rank_pattern(self):
        check_mapping(self, "rank_pattern", lambda rank: is_integer(rank) and rank > 0, "positive integers")
