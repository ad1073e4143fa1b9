from .lora import LoraConfig, LoraModel
