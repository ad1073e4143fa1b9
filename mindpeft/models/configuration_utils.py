"""HF-style model configuration read from and written to ``config.json``."""
import copy
import json
import os

CONFIG_NAME = "config.json"


class PretrainedConfig:
    """Attribute bag built from an HF ``config.json``.

    Subclasses set ``model_type``, ``defaults`` (values used when the file lacks a key) and ``attribute_map``
    (generic names such as ``hidden_size`` mapped onto the architecture's own, such as ``n_embd``).
    """

    model_type = ""
    defaults = {}
    attribute_map = {}

    def __init__(self, **kwargs):
        common = {"pad_token_id": None, "bos_token_id": None, "eos_token_id": None, "tie_word_embeddings": True,
                  "is_encoder_decoder": False, "num_labels": 2}
        values = {**common, **copy.deepcopy(self.defaults), **kwargs}
        if "id2label" in values and "num_labels" not in kwargs:
            values["num_labels"] = len(values["id2label"])
        for key, value in values.items():
            setattr(self, key, value)
        self.model_type = type(self).model_type or values.get("model_type", "")

    def __setattr__(self, key, value):
        key = type(self).attribute_map.get(key, key)
        object.__setattr__(self, key, value)

    def __getattr__(self, key):
        mapped = type(self).attribute_map.get(key)
        if mapped is not None:
            return getattr(self, mapped)
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        return cls(**{**config_dict, **kwargs})

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Read ``config.json`` from the local folder ``path``."""
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {CONFIG_NAME} found at {path!r} (mindpeft loads models from local folders)")
        with open(file, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), **kwargs)

    def to_dict(self):
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if not k.startswith("_")}
        out["model_type"] = self.model_type
        return out

    def save_pretrained(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    def __repr__(self):
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)}"
