"""Quantized base models in bitsandbytes' formats (int8 row-wise, 4-bit NF4/FP4 block-wise, double quantization)
and PEFT on them: QLoRA, DoRA, IA3 and AdaLoRA on quantized layers, k-bit training preparation and LoftQ.

``from_pretrained(path, quantization_config=BitsAndBytesConfig(...))`` on any ``mindpeft.models`` class quantizes
while loading (see :mod:`.loading`); ``save_pretrained`` writes the keys transformers + bitsandbytes write.
"""
from .config import BitsAndBytesConfig, QuantizationConfig
from .kbit_training import prepare_model_for_kbit_training
from .layers import Linear4bit, Linear8bitLt, QuantizedLinear
from .loftq import LoftQConfig, loftq_init, loftq_init_layer, replace_lora_weights_loftq
from .lora import QuantizedLoraLinear
from .tuners import QuantizedIA3Linear, QuantizedSVDLinear
from .utils import dequantize_model, quantized_model_bytes
