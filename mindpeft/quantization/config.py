"""``QuantizationConfig``: how ``from_pretrained`` quantizes linear layers, with the field names (and the
``config.json`` entry) of transformers' ``BitsAndBytesConfig``."""
import mindspore as ms

from ..config import describe

QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}
_BOOL_FIELDS = ("load_in_8bit", "load_in_4bit", "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight",
                "bnb_4bit_use_double_quant")


def _dtype_name(value, field):
    """The name (``"float32"``...) of a compute dtype given as ``None``, a name or a MindSpore dtype."""
    if value is None:
        return "float32"
    for name, dtype in COMPUTE_DTYPES.items():
        if value == name or value is dtype or (not isinstance(value, str) and value == dtype):
            return name
    raise ValueError(f"{field}={value!r} is not supported; use one of {list(COMPUTE_DTYPES)} or the matching "
                     "mindspore dtype")


class QuantizationConfig:
    """Quantize the linear layers of a model while ``from_pretrained`` loads it (bitsandbytes' formats).

    ``load_in_8bit``: int8 weights with one absmax per row (LLM.int8's storage; the forward dequantizes the weight,
    activations are not quantized, so ``llm_int8_threshold`` is kept for the config file only).
    ``load_in_4bit``: 4-bit ``bnb_4bit_quant_type`` codes (``"nf4"`` or ``"fp4"``) with one absmax per block of
    64 values, the absmax themselves 8-bit quantized with ``bnb_4bit_use_double_quant``; the forward dequantizes
    to ``bnb_4bit_compute_dtype`` (float32 by default). ``llm_int8_skip_modules`` names modules kept in float
    (by default the output head, as transformers does).
    """

    quant_method = "bitsandbytes"

    def __init__(self, load_in_8bit=False, load_in_4bit=False, llm_int8_threshold=6.0, llm_int8_skip_modules=None,
                 llm_int8_enable_fp32_cpu_offload=False, llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=None,
                 bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False, bnb_4bit_quant_storage=None):
        self.load_in_8bit = load_in_8bit
        self.load_in_4bit = load_in_4bit
        self.llm_int8_threshold = llm_int8_threshold
        self.llm_int8_skip_modules = llm_int8_skip_modules
        self.llm_int8_enable_fp32_cpu_offload = llm_int8_enable_fp32_cpu_offload
        self.llm_int8_has_fp16_weight = llm_int8_has_fp16_weight
        self.bnb_4bit_compute_dtype = _dtype_name(bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype")
        self.bnb_4bit_quant_type = bnb_4bit_quant_type
        self.bnb_4bit_use_double_quant = bnb_4bit_use_double_quant
        self.bnb_4bit_quant_storage = "uint8" if bnb_4bit_quant_storage is None else bnb_4bit_quant_storage
        self._check()

    def _check(self):
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {describe(getattr(self, name))}")
        if self.load_in_8bit and self.load_in_4bit:
            raise ValueError("load_in_4bit and load_in_8bit are both True, but only one can be used at the same time")
        if self.bnb_4bit_quant_type not in QUANT_TYPES:
            raise ValueError(f"bnb_4bit_quant_type={self.bnb_4bit_quant_type!r} is not supported; use 'nf4' or "
                             "'fp4'")
        if isinstance(self.llm_int8_threshold, bool) or not isinstance(self.llm_int8_threshold, (int, float)):
            raise ValueError(f"llm_int8_threshold must be a float, got {describe(self.llm_int8_threshold)}")
        skip = self.llm_int8_skip_modules
        if skip is not None and (not isinstance(skip, list) or not all(isinstance(s, str) for s in skip)):
            raise ValueError(f"llm_int8_skip_modules must be a list of module names, got {describe(skip)}")
        if self.llm_int8_has_fp16_weight:
            raise ValueError("llm_int8_has_fp16_weight=True (trainable float weights next to the int8 ones) is not "
                             "supported by mindpeft; train adapters on the quantized base instead")
        if self.bnb_4bit_quant_storage != "uint8":
            raise ValueError(f"bnb_4bit_quant_storage={self.bnb_4bit_quant_storage!r} is not supported; mindpeft "
                             "stores 4-bit codes as 'uint8'")

    @property
    def bits(self):
        """8, 4, or ``None`` when neither ``load_in_8bit`` nor ``load_in_4bit`` is set."""
        return 8 if self.load_in_8bit else 4 if self.load_in_4bit else None

    @property
    def compute_dtype(self):
        return COMPUTE_DTYPES[self.bnb_4bit_compute_dtype]

    def quantization_method(self):
        """``"llm_int8"``, ``"nf4"``, ``"fp4"`` or ``None``, as transformers names them."""
        return "llm_int8" if self.load_in_8bit else self.bnb_4bit_quant_type if self.load_in_4bit else None

    def to_dict(self):
        """The ``quantization_config`` entry transformers writes into ``config.json``."""
        out = {k: v for k, v in vars(self).items()}
        out.update(_load_in_8bit=self.load_in_8bit, _load_in_4bit=self.load_in_4bit, quant_method=self.quant_method)
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, values):
        """From a ``config.json`` entry (transformers' keys, ``_load_in_*`` included)."""
        values = dict(values)
        method = values.pop("quant_method", cls.quant_method)
        if method != cls.quant_method:
            raise ValueError(f"quantization_config has quant_method={method!r}; mindpeft loads 'bitsandbytes' "
                             "quantized checkpoints only")
        for key in ("load_in_8bit", "load_in_4bit"):
            values[key] = values.pop(f"_{key}", values.get(key, False))
        known = set(cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount])
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"quantization_config has unknown field(s) {unknown}")
        return cls(**values)

    @classmethod
    def from_value(cls, value):
        """A :class:`QuantizationConfig` from one, a dict, or an object with the same attributes (transformers'
        ``BitsAndBytesConfig``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if hasattr(value, "to_dict") and hasattr(value, "load_in_4bit"):
            values = value.to_dict()
            for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
                values[key] = str(values.get(key) or "").replace("torch.", "") or None
            return cls.from_dict(values)
        raise ValueError(f"quantization_config must be a QuantizationConfig (BitsAndBytesConfig) or a dict, got "
                         f"{describe(value)}")

    def __eq__(self, other):
        return isinstance(other, QuantizationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


BitsAndBytesConfig = QuantizationConfig
