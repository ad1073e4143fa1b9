"""A tokenizer over the ``tokenizers`` package: loads ``tokenizer.json`` from a local model folder."""
import json
import os

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"


class Tokenizer:
    """Encodes text to padded numpy id arrays (HF ``__call__`` style) and decodes ids back to text.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        pad_token, eos_token, bos_token, unk_token: special token strings (looked up in the vocabulary).
    """

    def __init__(self, tokenizer, pad_token=None, eos_token=None, bos_token=None, unk_token=None,
                 padding_side="right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.padding_side = padding_side
        self._tokenizer = tokenizer
        self.special_tokens = {k: v for k, v in dict(pad_token=pad_token, eos_token=eos_token, bos_token=bos_token,
                                                     unk_token=unk_token).items() if v is not None}
        for name, token in self.special_tokens.items():
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")

    @classmethod
    def from_pretrained(cls, path):
        """Load ``tokenizer.json`` (and ``special_tokens_map.json`` when present) from the folder ``path``."""
        from tokenizers import Tokenizer as _Tokenizer

        file = os.path.join(path, TOKENIZER_FILE)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {TOKENIZER_FILE} in {path!r} (mindpeft loads tokenizers from local folders)")
        special = {}
        special_file = os.path.join(path, SPECIAL_TOKENS_FILE)
        if os.path.isfile(special_file):
            with open(special_file, encoding="utf-8") as f:
                special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in json.load(f).items()
                           if k in ("pad_token", "eos_token", "bos_token", "unk_token")}
        return cls(_Tokenizer.from_file(file), **special)

    def save_pretrained(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        self._tokenizer.save(os.path.join(save_directory, TOKENIZER_FILE))
        with open(os.path.join(save_directory, SPECIAL_TOKENS_FILE), "w", encoding="utf-8") as f:
            json.dump(self.special_tokens, f, indent=2)

    def _id(self, name):
        token = self.special_tokens.get(name)
        return None if token is None else self._tokenizer.token_to_id(token)

    @property
    def pad_token_id(self):
        return self._id("pad_token")

    @property
    def eos_token_id(self):
        return self._id("eos_token")

    @property
    def bos_token_id(self):
        return self._id("bos_token")

    @property
    def vocab_size(self):
        return self._tokenizer.get_vocab_size()

    def encode(self, text, add_special_tokens=True):
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, texts, max_length=None, padding="longest", truncation=True, add_special_tokens=True):
        """``{"input_ids", "attention_mask"}`` int32 arrays of shape (batch, length) for a string or a list.

        ``padding``: ``"longest"``, ``"max_length"`` (pads to ``max_length``) or ``False`` (lists, unpadded);
        pads on ``self.padding_side``.
        """
        single = isinstance(texts, str)
        encoded = [self.encode(t, add_special_tokens) for t in ([texts] if single else texts)]
        if truncation and max_length is not None:
            encoded = [ids[:max_length] for ids in encoded]
        if padding is False:
            out = {"input_ids": encoded, "attention_mask": [[1] * len(ids) for ids in encoded]}
            return {k: v[0] for k, v in out.items()} if single else out
        if self.pad_token_id is None:
            raise ValueError("Padding needs a pad_token; create the Tokenizer with pad_token=")
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            length = max_length
        elif padding == "longest":
            length = max(len(ids) for ids in encoded)
        else:
            raise ValueError(f"padding must be 'longest', 'max_length' or False, got {padding!r}")
        input_ids = np.full((len(encoded), length), self.pad_token_id, np.int32)
        mask = np.zeros((len(encoded), length), np.int32)
        for row, ids in enumerate(encoded):
            span = slice(length - len(ids), length) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = ids
            mask[row, span] = 1
        if single:
            return {"input_ids": input_ids[0], "attention_mask": mask[0]}
        return {"input_ids": input_ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens=True):
        ids = [int(i) for i in (ids.asnumpy() if hasattr(ids, "asnumpy") else np.asarray(ids)).reshape(-1)]
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens=True):
        batch = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        return [self.decode(row, skip_special_tokens) for row in batch]


def train_word_level_tokenizer(texts, special_tokens=("<pad>", "</s>", "<unk>"), lowercase=True,
                               eos_token="</s>"):
    """A word-level :class:`Tokenizer` trained on ``texts`` (tutorials and tests build tiny models with it).

    The first special token is the pad token; ``eos_token``, when given, is appended to every encoding.
    """
    from tokenizers import Tokenizer as _Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    special_tokens = list(special_tokens)
    tokenizer = _Tokenizer(models.WordLevel(unk_token="<unk>" if "<unk>" in special_tokens else None))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=special_tokens))
    if eos_token is not None:
        eos_id = tokenizer.token_to_id(eos_token)
        tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {eos_token}", pair=f"$A $B {eos_token}",
                                                                 special_tokens=[(eos_token, eos_id)])
    unk = "<unk>" if "<unk>" in special_tokens else None
    return Tokenizer(tokenizer, pad_token=special_tokens[0], eos_token=eos_token, unk_token=unk)
