from .model import COMPATIBLE_TUNER_TYPES, MixedModel
