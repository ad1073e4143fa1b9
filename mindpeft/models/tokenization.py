"""Tokenizers over the ``tokenizers`` package, loading HF tokenizer folders (``tokenizer.json`` and friends).

:class:`PreTrainedTokenizerFast` behaves as transformers' (5.x) fast tokenizers: ``__call__`` returns a
:class:`BatchEncoding` of python lists (or ``"np"`` arrays / ``"ms"`` MindSpore Tensors), with HF's padding,
truncation, ``text_target`` and decoding rules. :class:`~mindpeft.models.tokenization_auto.AutoTokenizer` loads one
from a folder. :class:`Tokenizer` is the older, simpler interface (numpy ``int32`` arrays, padding to the longest row
by default) that the tutorials, ``scripts/train.py`` and ``mindpeft.training`` use.
"""
import copy
import json
import logging
import os
import threading
import warnings
from collections import UserDict
from collections.abc import Mapping

import numpy as np

from ..utils.hub import resolve_folder
from ..utils.io import atomic_directory, json_dumps, write_text

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
SPECIAL_TOKENS_MAP_FILE = SPECIAL_TOKENS_FILE
ADDED_TOKENS_FILE = "added_tokens.json"
MODEL_CONFIG_FILE = "config.json"

VERY_LARGE_INTEGER = int(1e30)  # as transformers: "no maximum length" for model_max_length
LARGE_INTEGER = int(1e20)

SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token")
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("only_first", "only_second", "longest_first", "do_not_truncate")
TENSOR_TYPES = ("np", "ms")

# Files that hold a "slow" (python / sentencepiece) tokenizer, which mindpeft cannot read.
SLOW_TOKENIZER_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "spm.model", "vocab.txt",
                        "vocab.json", "merges.txt", "sentencepiece.model")

# keyword arguments of transformers' from_pretrained that only matter for downloads
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "trust_remote_code",
               "use_fast", "proxies", "resume_download", "use_auth_token", "mirror", "_from_auto", "_commit_hash",
               "_from_pipeline", "config", "code_revision", "tokenizer_type")
# init_kwargs that never go to tokenizer_config.json
_PRIVATE_INIT_KWARGS = ("name_or_path", "special_tokens_map_file", "tokenizer_file", "files_loaded", "is_local",
                        "local_files_only", "added_tokens_decoder", "tokenizer_object", "add_bos_token",
                        "add_eos_token", "tokenizer_class", "device_map", "slow_tokenizer_class", "init_inputs",
                        "vocab", "merges", "vocab_file", "merges_file")

PAD_TOKEN_ERROR = ("Asking to pad but the tokenizer does not have a padding token. Please select a token to use as "
                   "`pad_token` `(tokenizer.pad_token = tokenizer.eos_token e.g.)` or add a new pad token via "
                   "`tokenizer.add_special_tokens({'pad_token': '[PAD]'})`.")


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer classes of transformers whose loading rebuilds part of the pipeline from their own code. mindpeft does
# the same for these, so that a folder gives the same ids as transformers' AutoTokenizer even where its
# tokenizer.json differs from the class's pipeline. Other classes load tokenizer.json as it is (as
# transformers' TokenizersBackend does).
# ---------------------------------------------------------------------------------------------------------------
_BERT_DEFAULTS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]", "do_lower_case": True, "tokenize_chinese_chars": True,
                  "strip_accents": None}
_ROBERTA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                     "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>", "errors": "replace",
                     "add_prefix_space": False, "trim_offsets": True}
CLASS_PROFILES = {
    "BertTokenizer": {"model": "WordPiece", "family": "bert", "defaults": _BERT_DEFAULTS,
                      "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]},
    "DistilBertTokenizer": {"model": "WordPiece", "family": "bert", "defaults": _BERT_DEFAULTS,
                            "model_input_names": ["input_ids", "attention_mask"]},
    "GPT2Tokenizer": {"model": "BPE", "family": "gpt2",
                      "defaults": {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
                                   "eos_token": "<|endoftext|>", "pad_token": None, "errors": "replace",
                                   "add_prefix_space": False},
                      "model_input_names": ["input_ids", "attention_mask"]},
    "RobertaTokenizer": {"model": "BPE", "family": "roberta", "defaults": _ROBERTA_DEFAULTS,
                         "model_input_names": ["input_ids", "attention_mask"]},
    "T5Tokenizer": {"model": "Unigram", "family": "t5",
                    "defaults": {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 100},
                    "model_input_names": ["input_ids", "attention_mask"]},
}
CLASS_ALIASES = {"ElectraTokenizer": "BertTokenizer"}
# config.json model_type -> tokenizer class, used when tokenizer_config.json names none (as transformers does)
MODEL_TYPE_TO_TOKENIZER_CLASS = {"bert": "BertTokenizer", "distilbert": "BertTokenizer", "electra": "BertTokenizer",
                                 "gpt2": "GPT2Tokenizer", "roberta": "RobertaTokenizer", "t5": "T5Tokenizer",
                                 "mt5": "T5Tokenizer"}


# profile name -> the mindpeft class that AutoTokenizer returns for it (filled by tokenization_auto)
PROFILE_CLASSES = {}


def resolve_profile(class_name):
    """The profile name (a key of :data:`CLASS_PROFILES`) for a transformers tokenizer class name, or ``None``."""
    if not class_name:
        return None
    name = class_name[:-4] if class_name.endswith("Fast") else class_name
    name = CLASS_ALIASES.get(name, name)
    return name if name in CLASS_PROFILES else None


def _rebuild_backend_json(data, profile, kwargs):
    """Rewrite the pipeline of a ``tokenizer.json`` dict as transformers' class ``profile`` rebuilds it on load."""
    family = CLASS_PROFILES[profile]["family"]
    model = data["model"]
    if family == "bert":
        data["normalizer"] = {"type": "BertNormalizer", "clean_text": True,
                              "handle_chinese_chars": bool(kwargs.get("tokenize_chinese_chars", True)),
                              "strip_accents": kwargs.get("strip_accents"),
                              "lowercase": bool(kwargs.get("do_lower_case", True))}
        data["pre_tokenizer"] = {"type": "BertPreTokenizer"}
        data["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
        unk = kwargs.get("unk_token")
        model.update(unk_token=str(unk) if unk is not None else "[UNK]", continuing_subword_prefix="##",
                     max_input_chars_per_word=100)
    elif family in ("gpt2", "roberta"):
        data["normalizer"] = None
        data["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": bool(kwargs.get("add_prefix_space", False)),
                                 "trim_offsets": True, "use_regex": True}
        data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        model.update(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                     fuse_unk=False, byte_fallback=False, ignore_merges=False)
    elif family == "t5":
        data["normalizer"] = _find_precompiled(data.get("normalizer"))
        metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
        data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]}
        data["decoder"] = dict(metaspace)
        model.update(unk_id=2, byte_fallback=False)
    return data


def _find_precompiled(normalizer):
    """The ``Precompiled`` (sentencepiece charsmap) normalizer inside ``normalizer``, or ``None``."""
    if not normalizer:
        return None
    parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for part in parts:
        if part and part.get("type") == "Precompiled" and "precompiled_charsmap" in part:
            return {"type": "Precompiled", "precompiled_charsmap": part["precompiled_charsmap"]}
    return None


# ---------------------------------------------------------------------------------------------------------------
# Conversion helpers
# ---------------------------------------------------------------------------------------------------------------
def _to_py(obj):
    """Lists/ints from MindSpore Tensors, numpy arrays and scalars, torch tensors and nested sequences."""
    if hasattr(obj, "asnumpy"):
        obj = obj.asnumpy()
    if isinstance(obj, Mapping):
        return {k: _to_py(v) for k, v in obj.items()}
    if isinstance(obj, (np.ndarray, np.generic)) or (hasattr(obj, "tolist") and not isinstance(obj, (list, tuple))):
        return obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [_to_py(o) for o in obj]
    return obj


def _as_text(value):
    """Text inputs as ``str`` / nested lists of ``str``: numpy string arrays (what ``mindspore.dataset`` gives a map
    function) and bytes are converted; anything else is returned unchanged."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, tuple):
        return [_as_text(v) for v in value]
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return value


def _is_valid_text_input(t):
    if isinstance(t, str):
        return True
    if isinstance(t, (list, tuple)):
        if len(t) == 0 or isinstance(t[0], str):
            return True
        if isinstance(t[0], (list, tuple)):
            return len(t[0]) == 0 or isinstance(t[0][0], str) or (
                isinstance(t[0][0], (list, tuple)) and (len(t[0][0]) == 0 or isinstance(t[0][0][0], str)))
    return False


def _flatten(value):
    out = []
    for v in value:
        if isinstance(v, (list, tuple)):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _check_tensor_type(return_tensors):
    if return_tensors is None:
        return None
    name = getattr(return_tensors, "value", return_tensors)
    if name in ("mindspore", "ms"):
        return "ms"
    if name == "np":
        return "np"
    if name == "pt":
        raise ValueError("return_tensors='pt' asks for torch tensors, which mindpeft does not use: pass "
                         "return_tensors='ms' for mindspore.Tensor or 'np' for numpy arrays")
    raise ValueError(f"return_tensors must be None, 'ms' (mindspore.Tensor) or 'np' (numpy), got {return_tensors!r}")


def _as_numpy(value):
    if isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], (list, tuple, np.ndarray)):
        if len({len(v) for v in value}) > 1:  # ragged: numpy object array, as transformers
            out = np.empty(len(value), dtype=object)
            out[:] = [np.asarray(v) for v in value]
            return out
    if isinstance(value, (list, tuple)) and len(_flatten(value)) == 0:
        return np.asarray(value, dtype=np.int64)
    return np.asarray(value)


class BatchEncoding(UserDict):
    """The output of a tokenizer call: a dict (``input_ids``, ``attention_mask``, ...) that also gives its values as
    attributes (``enc.input_ids``), unpacks with ``**enc`` and, when it comes from a call, keeps the
    ``tokenizers.Encoding`` of each row (``enc[0]``, ``enc.tokens()``, ``enc.word_ids()``)."""

    def __init__(self, data=None, encoding=None, tensor_type=None, prepend_batch_axis=False, n_sequences=None):
        super().__init__(data)
        if encoding is not None and not isinstance(encoding, (list, tuple)):
            encoding = [encoding]
        self._encodings = encoding
        if n_sequences is None and encoding:
            n_sequences = encoding[0].n_sequences
        self._n_sequences = n_sequences
        self.convert_to_tensors(tensor_type=tensor_type, prepend_batch_axis=prepend_batch_axis)

    @property
    def n_sequences(self):
        return self._n_sequences

    @property
    def is_fast(self):
        return self._encodings is not None

    @property
    def encodings(self):
        return self._encodings

    def __getitem__(self, item):
        if isinstance(item, str):
            return self.data[item]
        if self._encodings is not None:
            return self._encodings[item]
        if isinstance(item, slice):
            return {key: self.data[key][item] for key in self.data}
        raise KeyError("Invalid key. Only three types of key are available: (1) string, (2) integers for backend "
                       "Encoding, and (3) slices for data subsetting.")

    def __getattr__(self, item):
        if item.startswith("__") or item in ("data", "_encodings", "_n_sequences"):
            raise AttributeError(item)
        try:
            return self.data[item]
        except KeyError:
            raise AttributeError(item) from None

    def __getstate__(self):
        return {"data": self.data, "encodings": self._encodings, "n_sequences": self._n_sequences}

    def __setstate__(self, state):
        self.data = state.get("data", {})
        self._encodings = state.get("encodings")
        self._n_sequences = state.get("n_sequences")

    def _need_encodings(self):
        if self._encodings is None:
            raise ValueError("This BatchEncoding holds no tokenizers.Encoding (it was not made by a tokenizer call)")
        return self._encodings

    def tokens(self, batch_index=0):
        return self._need_encodings()[batch_index].tokens

    def word_ids(self, batch_index=0):
        return self._need_encodings()[batch_index].word_ids

    def sequence_ids(self, batch_index=0):
        return self._need_encodings()[batch_index].sequence_ids

    def convert_to_tensors(self, tensor_type=None, prepend_batch_axis=False):
        """Convert the values to ``"np"`` arrays or ``"ms"`` MindSpore Tensors (int64 for ids and masks)."""
        tensor_type = _check_tensor_type(tensor_type)
        if tensor_type is None:
            return self
        for key, value in self.items():
            if prepend_batch_axis:
                value = [value]
            if tensor_type == "np":
                if not isinstance(value, np.ndarray):
                    self[key] = _as_numpy(value)
                continue
            import mindspore as ms

            if isinstance(value, ms.Tensor):
                continue
            array = value if isinstance(value, np.ndarray) else _as_numpy(value)
            if array.dtype == object:
                raise ValueError(
                    "Unable to create tensor, you should probably activate truncation and/or padding with "
                    "'padding=True' 'truncation=True' to have batched tensors with the same length. Perhaps your "
                    f"features (`{key}` in this case) have excessive nesting (inputs type `list` where type `int` "
                    "is expected).")
            self[key] = ms.Tensor(array)
        return self


# ---------------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------------
def _added_token(value, special=None):
    """A ``tokenizers.AddedToken`` from a str, an AddedToken or its serialised dict; ``None`` stays ``None``."""
    from tokenizers import AddedToken

    if value is None or isinstance(value, AddedToken):
        return value
    if isinstance(value, dict):
        fields = {k: v for k, v in value.items() if k in ("content", "single_word", "lstrip", "rstrip", "normalized",
                                                          "special")}
        if special is not None:
            fields["special"] = special
        return AddedToken(**fields)
    return value


def _token_value(value):
    """A special token from a config file: str, AddedToken (from a dict) or None."""
    if isinstance(value, dict):
        return _added_token(value, special=True)
    return value


class PreTrainedTokenizerFast:
    """A fast tokenizer (``tokenizers.Tokenizer`` backend) with transformers' API and outputs.

    Build one with :meth:`from_pretrained` (or ``AutoTokenizer.from_pretrained``) from a folder holding
    ``tokenizer.json``, or directly from a ``tokenizers.Tokenizer`` (``tokenizer_object=``) or a file
    (``tokenizer_file=``) and the special tokens (``pad_token=``, ``eos_token=``, ...).
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"
    _profile = None  # a key of CLASS_PROFILES when this tokenizer follows one of transformers' classes
    _default_tokenizer_class = "PreTrainedTokenizerFast"

    def __init__(self, *args, tokenizer_object=None, tokenizer_file=None, **kwargs):
        from tokenizers import Tokenizer as _Backend

        if args:
            if len(args) > 1 or tokenizer_object is not None:
                raise TypeError(f"{type(self).__name__} takes one positional argument, a tokenizers.Tokenizer")
            tokenizer_object = args[0]
        profile = kwargs.pop("_profile", self._profile)
        if profile is not None and profile not in CLASS_PROFILES:
            raise ValueError(f"Unknown tokenizer profile {profile!r}")
        self._lock = threading.RLock()
        if tokenizer_object is not None:
            if not isinstance(tokenizer_object, _Backend):
                raise TypeError(f"tokenizer_object must be a tokenizers.Tokenizer, got {type(tokenizer_object)}")
            backend = copy.deepcopy(tokenizer_object)
        elif tokenizer_file is not None:
            backend = _load_backend_file(tokenizer_file)
        else:
            raise ValueError(f"{type(self).__name__} needs a tokenizers.Tokenizer (tokenizer_object=) or a "
                             "tokenizer.json file (tokenizer_file=); use from_pretrained(folder) to load a folder")
        self._tokenizer = backend
        self._profile_name = profile
        profile_spec = CLASS_PROFILES.get(profile) if profile else None
        if profile_spec:
            for key, value in profile_spec["defaults"].items():
                kwargs.setdefault(key, value)
            if profile_spec["family"] == "t5" and "extra_special_tokens" not in kwargs \
                    and kwargs.get("additional_special_tokens") is None:
                kwargs.pop("additional_special_tokens", None)
                kwargs["extra_special_tokens"] = [f"<extra_id_{i}>" for i in range(int(kwargs.get("extra_ids") or 0))]

        # Padding / truncation baked into tokenizer.json give defaults, as in transformers; every call sets its own.
        if backend.truncation is not None:
            kwargs.setdefault("truncation_side", backend.truncation.get("direction", "right"))
        if backend.padding is not None:
            kwargs.setdefault("pad_token", backend.padding.get("pad_token"))
            kwargs.setdefault("padding_side", backend.padding.get("direction", "right"))
        backend.no_truncation()
        backend.no_padding()

        if "additional_special_tokens" in kwargs and "extra_special_tokens" not in kwargs:
            kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
        explicit_bos_eos = "add_bos_token" in kwargs or "add_eos_token" in kwargs
        self._add_bos_token = bool(kwargs.get("add_bos_token", False))
        self._add_eos_token = bool(kwargs.get("add_eos_token", False))
        added_tokens_decoder = kwargs.pop("added_tokens_decoder", None) or {}
        self.init_kwargs = copy.deepcopy({k: v for k, v in kwargs.items()})
        self.name_or_path = kwargs.pop("name_or_path", "")
        self.verbose = kwargs.pop("verbose", False)

        self._special_tokens_map = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        self._special_attributes = list(SPECIAL_TOKENS_ATTRIBUTES)
        self._extra_special_tokens = []
        model_specific = dict(kwargs.pop("model_specific_special_tokens", None) or {})
        for key in list(kwargs):
            if key in SPECIAL_TOKENS_ATTRIBUTES:
                value = _token_value(kwargs.pop(key))
                if value is not None and not isinstance(value, str) and not hasattr(value, "content"):
                    raise TypeError(f"Special token {key} has to be either str or AddedToken but got: {type(value)}")
                self._special_tokens_map[key] = value
            elif key == "extra_special_tokens":
                value = kwargs.pop(key)
                if isinstance(value, dict):
                    model_specific.update(value)
                elif isinstance(value, (list, tuple)):
                    self._extra_special_tokens = [_token_value(v) for v in value]
                elif value is not None:
                    raise TypeError("extra_special_tokens must be a list/tuple of tokens or a dict of named tokens")
            elif key.endswith("_token") and isinstance(kwargs[key], (str, dict)):
                model_specific[key] = kwargs.pop(key)
        for key, value in model_specific.items():
            if key not in self._special_attributes:
                self._special_attributes.append(key)
            self._special_tokens_map[key] = _token_value(value)

        model_max_length = kwargs.pop("model_max_length", kwargs.pop("max_len", None))
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        self.padding_side = kwargs.pop("padding_side", type(self).padding_side) or "right"
        self.truncation_side = kwargs.pop("truncation_side", type(self).truncation_side) or "right"
        names = kwargs.pop("model_input_names", None)
        if names is None:
            names = profile_spec["model_input_names"] if profile_spec else type(self).model_input_names
        self.model_input_names = list(names)
        self.clean_up_tokenization_spaces = bool(kwargs.pop("clean_up_tokenization_spaces", False))
        self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = bool(
            kwargs.pop("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        self.split_special_tokens = bool(kwargs.pop("split_special_tokens", False))
        self.add_prefix_space = kwargs.get("add_prefix_space", False)
        self._warned_too_long = False

        self._add_missing_special_tokens(added_tokens_decoder)
        self._tokenizer.encode_special_tokens = self.split_special_tokens
        if explicit_bos_eos or self._tokenizer.post_processor is None:
            self.update_post_processor()
        self._set_profile_post_processor()

    # ---- construction helpers ----------------------------------------------------------------------------------
    def _add_missing_special_tokens(self, added_tokens_decoder):
        """Register the special tokens (and the ``added_tokens_decoder`` of an older tokenizer_config.json) with the
        backend, as transformers does: tokens already in the vocabulary keep their id, new ones are appended."""
        from tokenizers import AddedToken

        present = {str(t) for t in self._tokenizer.get_added_tokens_decoder().values()}
        tokens = []
        for _, token in sorted(((int(k), v) for k, v in added_tokens_decoder.items()), key=lambda kv: kv[0]):
            token = _added_token(token)
            if str(token) not in present:
                tokens.append(token if not isinstance(token, str) else AddedToken(token, special=True))
                present.add(str(token))
        named = {str(v) for v in self._special_tokens_map.values() if v is not None}
        for value in list(self._special_tokens_map.values()) + list(self._extra_special_tokens):
            if value is None or str(value) in present:
                continue
            if isinstance(value, str):
                value = AddedToken(value, special=True)
            elif not value.special and str(value) in named:
                value.special = True
            tokens.append(value)
            present.add(str(value))
        if tokens:
            self._tokenizer.add_tokens(tokens)

    def _set_profile_post_processor(self):
        """The post-processor transformers' class sets after loading (BERT, RoBERTa and T5 templates)."""
        from tokenizers import processors

        family = CLASS_PROFILES[self._profile_name]["family"] if self._profile_name else None
        if family == "bert":
            cls_token, sep_token = str(self.cls_token), str(self.sep_token)
            cls_id = self.cls_token_id if self.cls_token_id is not None else 2
            sep_id = self.sep_token_id if self.sep_token_id is not None else 3
            self._tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{cls_token}:0 $A:0 {sep_token}:0",
                pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
                special_tokens=[(cls_token, cls_id), (sep_token, sep_id)])
        elif family == "roberta":
            self._tokenizer.post_processor = processors.RobertaProcessing(
                (str(self.sep_token), self.sep_token_id), (str(self.cls_token), self.cls_token_id),
                trim_offsets=bool(self.init_kwargs.get("trim_offsets", True)),
                add_prefix_space=bool(self.init_kwargs.get("add_prefix_space", False)))
        elif family == "t5":
            self._tokenizer.post_processor = processors.TemplateProcessing(
                single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", self.eos_token_id)])

    def update_post_processor(self):
        """Rebuild the post-processor from ``add_bos_token`` / ``add_eos_token`` (transformers' rule)."""
        from tokenizers import processors

        bos, eos = self.bos_token, self.eos_token
        if bos is None:
            self._add_bos_token = False
        if eos is None:
            self._add_eos_token = False
        add_bos, add_eos = self._add_bos_token, self._add_eos_token
        single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
        pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
        special = ([(bos, self.bos_token_id)] if add_bos else []) + ([(eos, self.eos_token_id)] if add_eos else [])
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                       special_tokens=special)

    @property
    def add_bos_token(self):
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value):
        self._add_bos_token = bool(value)
        self.update_post_processor()

    @property
    def add_eos_token(self):
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value):
        self._add_eos_token = bool(value)
        self.update_post_processor()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    # ---- loading -----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *init_inputs, **kwargs):
        """Load a tokenizer from a local folder holding ``tokenizer.json`` (and ``tokenizer_config.json``,
        ``special_tokens_map.json`` when present), or from a ``tokenizer.json`` file; keyword arguments override the
        saved settings (``pad_token=``, ``padding_side=``, ``model_max_length=``, ...)."""
        return _from_folder(cls, pretrained_model_name_or_path, kwargs, profile=cls._profile,
                            fixed_profile=cls._profile is not None)

    # ---- special tokens ----------------------------------------------------------------------------------------
    def __getattr__(self, key):
        # model-specific named special tokens (``image_token``, ``image_token_id``, ...) read from tokenizer_config
        if key.startswith("_"):
            raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")
        attributes = self.__dict__.get("_special_attributes", ())
        base = key[:-3] if key.endswith("_id") else key
        if base in attributes:
            value = self.__dict__["_special_tokens_map"].get(base)
            if value is None:
                return None
            return self.convert_tokens_to_ids(str(value)) if base != key else str(value)
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def _get_special(self, name):
        value = self._special_tokens_map.get(name)
        return None if value is None else str(value)

    def _get_special_id(self, name):
        value = self._special_tokens_map.get(name)
        return None if value is None else self.convert_tokens_to_ids(str(value))

    def _set_special(self, name, value):
        if value is not None and not isinstance(value, str) and not hasattr(value, "content"):
            raise ValueError(f"Cannot set a non-string value as the {name}")
        self._special_tokens_map[name] = value

    def _set_special_id(self, name, value):
        self._special_tokens_map[name] = None if value is None else self.convert_ids_to_tokens(int(value))

    bos_token = property(lambda self: self._get_special("bos_token"),
                         lambda self, v: self._set_special("bos_token", v))
    eos_token = property(lambda self: self._get_special("eos_token"),
                         lambda self, v: self._set_special("eos_token", v))
    unk_token = property(lambda self: self._get_special("unk_token"),
                         lambda self, v: self._set_special("unk_token", v))
    sep_token = property(lambda self: self._get_special("sep_token"),
                         lambda self, v: self._set_special("sep_token", v))
    pad_token = property(lambda self: self._get_special("pad_token"),
                         lambda self, v: self._set_special("pad_token", v))
    cls_token = property(lambda self: self._get_special("cls_token"),
                         lambda self, v: self._set_special("cls_token", v))
    mask_token = property(lambda self: self._get_special("mask_token"),
                          lambda self, v: self._set_special("mask_token", v))
    bos_token_id = property(lambda self: self._get_special_id("bos_token"),
                            lambda self, v: self._set_special_id("bos_token", v))
    eos_token_id = property(lambda self: self._get_special_id("eos_token"),
                            lambda self, v: self._set_special_id("eos_token", v))
    unk_token_id = property(lambda self: self._get_special_id("unk_token"),
                            lambda self, v: self._set_special_id("unk_token", v))
    sep_token_id = property(lambda self: self._get_special_id("sep_token"),
                            lambda self, v: self._set_special_id("sep_token", v))
    pad_token_id = property(lambda self: self._get_special_id("pad_token"),
                            lambda self, v: self._set_special_id("pad_token", v))
    cls_token_id = property(lambda self: self._get_special_id("cls_token"),
                            lambda self, v: self._set_special_id("cls_token", v))
    mask_token_id = property(lambda self: self._get_special_id("mask_token"),
                             lambda self, v: self._set_special_id("mask_token", v))

    @property
    def pad_token_type_id(self):
        return 0

    @property
    def extra_special_tokens(self):
        return [str(t) for t in self._extra_special_tokens]

    @extra_special_tokens.setter
    def extra_special_tokens(self, value):
        self._extra_special_tokens = [] if value is None else list(value)

    @property
    def extra_special_tokens_ids(self):
        return self.convert_tokens_to_ids(self.extra_special_tokens)

    additional_special_tokens = extra_special_tokens
    additional_special_tokens_ids = extra_special_tokens_ids

    @property
    def special_tokens_map(self):
        """Named special tokens (``bos_token``, ``pad_token``, ...) that are set, as strings."""
        return {name: str(self._special_tokens_map[name]) for name in self._special_attributes
                if self._special_tokens_map.get(name) is not None}

    @property
    def all_special_tokens(self):
        seen, out = set(), []
        for token in [self._special_tokens_map.get(n) for n in self._special_attributes] + \
                list(self._extra_special_tokens):
            if token is not None and str(token) not in seen:
                seen.add(str(token))
                out.append(str(token))
        return out

    @property
    def all_special_ids(self):
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def add_tokens(self, new_tokens, special_tokens=False):
        """Add tokens to the vocabulary (those already in it are only registered); returns how many are new."""
        if not new_tokens:
            return 0
        if not isinstance(new_tokens, (list, tuple)):
            new_tokens = [new_tokens]
        with self._lock:
            if special_tokens:
                return self._tokenizer.add_special_tokens(list(new_tokens))
            return self._tokenizer.add_tokens(list(new_tokens))

    def add_special_tokens(self, special_tokens_dict, replace_extra_special_tokens=True):
        """Set named special tokens (``{"pad_token": "[PAD]"}``) or ``extra_special_tokens`` and add them to the
        vocabulary when missing; returns how many tokens are new. Resize the model's embeddings after that."""
        from tokenizers import AddedToken

        if not special_tokens_dict:
            return 0
        special_tokens_dict = dict(special_tokens_dict)
        if "additional_special_tokens" in special_tokens_dict and not special_tokens_dict.get("extra_special_tokens"):
            special_tokens_dict["extra_special_tokens"] = special_tokens_dict.pop("additional_special_tokens")
        allowed = set(self._special_attributes) | {"extra_special_tokens"}
        to_add = []
        for key, value in special_tokens_dict.items():
            if key not in allowed:
                raise ValueError(f"Key {key} is not a valid special token. Valid keys are: {sorted(allowed)}")
            if key == "extra_special_tokens":
                if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) or hasattr(t, "content")
                                                                   for t in value):
                    raise ValueError(f"Tokens {value} for key {key} should all be str or AddedToken instances")
                new = [AddedToken(t, rstrip=False, lstrip=False, normalized=False, special=True)
                       if isinstance(t, str) else t for t in value
                       if replace_extra_special_tokens or str(t) not in self.extra_special_tokens]
                if replace_extra_special_tokens and new:
                    self._extra_special_tokens = list(new)
                else:
                    self._extra_special_tokens.extend(new)
                to_add.extend(new)
            else:
                if not isinstance(value, str) and not hasattr(value, "content"):
                    raise ValueError(f"Token {value} for key {key} should be a str or an AddedToken instance")
                if isinstance(value, str):
                    value = AddedToken(value, rstrip=False, lstrip=False, normalized=False, special=True)
                self._special_tokens_map[key] = value
                to_add.append(value)
        return self.add_tokens(to_add, special_tokens=True)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if not already_has_special_tokens:
            raise NotImplementedError("get_special_tokens_mask needs already_has_special_tokens=True (ids that "
                                      "already hold the special tokens)")
        if token_ids_1 is not None:
            raise ValueError("You should not supply a second sequence if the provided sequence of ids is already "
                             "formatted with special tokens for the model.")
        special = set(self.all_special_ids)
        return [1 if int(i) in special else 0 for i in _to_py(token_ids_0)]

    # ---- vocabulary --------------------------------------------------------------------------------------------
    @property
    def backend_tokenizer(self):
        """The ``tokenizers.Tokenizer`` doing the work."""
        return self._tokenizer

    @property
    def is_fast(self):
        return True

    @property
    def vocab_size(self):
        """Size of the base vocabulary, without added tokens (``len(tokenizer)`` counts them)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self):
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __bool__(self):
        return True

    def get_vocab(self):
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab(self):
        return self.get_vocab()

    @property
    def added_tokens_decoder(self):
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self):
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items(), key=lambda kv: kv[0])}

    def get_added_vocab(self):
        return self.added_tokens_encoder

    def convert_tokens_to_ids(self, tokens):
        """Id of a token (``unk_token_id`` for unknown ones), or the ids of a list of tokens."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        ids = _to_py(ids)
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_string(self, tokens):
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def num_special_tokens_to_add(self, pair=False):
        return self._tokenizer.num_special_tokens_to_add(pair)

    @property
    def max_len_single_sentence(self):
        return self.model_max_length - self.num_special_tokens_to_add(pair=False)

    @property
    def max_len_sentences_pair(self):
        return self.model_max_length - self.num_special_tokens_to_add(pair=True)

    # ---- encoding ----------------------------------------------------------------------------------------------
    def _get_padding_truncation_strategies(self, padding=False, truncation=None, max_length=None,
                                           pad_to_multiple_of=None, verbose=True):
        """transformers' rules: ``(padding, truncation, max_length)`` as strategy strings and a length."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # only max_length given: it truncates
        padding_value = getattr(padding, "value", padding)
        if padding_value is False:
            padding_strategy = "do_not_pad"
        elif padding_value is True:
            if verbose and max_length is not None and truncation in (None, False, "do_not_truncate"):
                warnings.warn("`max_length` is ignored when `padding`=`True` and there is no truncation strategy. "
                              "To pad to max length, use `padding='max_length'`.")
            padding_strategy = "longest"
        elif isinstance(padding_value, str) and padding_value in PADDING_STRATEGIES:
            padding_strategy = padding_value
        else:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        truncation_value = getattr(truncation, "value", truncation)
        if truncation_value is None or truncation_value is False:
            truncation_strategy = "do_not_truncate"
        elif truncation_value is True:
            truncation_strategy = "longest_first"
        elif isinstance(truncation_value, str) and truncation_value in TRUNCATION_STRATEGIES:
            truncation_strategy = truncation_value
        else:
            raise ValueError("truncation must be True, False, 'longest_first', 'only_first', 'only_second' or "
                             f"'do_not_truncate', got {truncation!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))
                                       or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int or None, got {max_length!r}")
        if max_length is None:
            if padding_strategy == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    padding_strategy = "do_not_pad"
                else:
                    max_length = self.model_max_length
            if truncation_strategy != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    truncation_strategy = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        if padding_strategy != "do_not_pad":
            pad_id = self.pad_token_id if self.pad_token is not None else None
            if pad_id is None or pad_id < 0:
                raise ValueError(PAD_TOKEN_ERROR)
        if (truncation_strategy != "do_not_truncate" and padding_strategy != "do_not_pad"
                and pad_to_multiple_of is not None and max_length is not None and max_length % pad_to_multiple_of):
            raise ValueError("Truncation and padding are both activated but truncation length "
                             f"({max_length}) is not a multiple of pad_to_multiple_of ({pad_to_multiple_of}).")
        return padding_strategy, truncation_strategy, None if max_length is None else int(max_length)

    def __call__(self, text=None, text_pair=None, text_target=None, text_pair_target=None, add_special_tokens=True,
                 padding=False, truncation=None, max_length=None, stride=0, is_split_into_words=False,
                 pad_to_multiple_of=None, padding_side=None, return_tensors=None, return_token_type_ids=None,
                 return_attention_mask=None, return_overflowing_tokens=False, return_special_tokens_mask=False,
                 return_offsets_mapping=False, return_length=False, verbose=True, **kwargs):
        """Tokenize a string, a list of strings (a batch) or pairs of them, as transformers does.

        Returns a :class:`BatchEncoding` with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT-style
        tokenizers; ``labels`` when ``text_target`` is given): python lists (a flat list for a single string), or
        ``return_tensors="np"`` arrays / ``"ms"`` MindSpore Tensors (int64) of shape ``(batch, length)``.
        ``padding``: ``False``/``"do_not_pad"``, ``True``/``"longest"`` or ``"max_length"``; ``truncation``:
        ``True``/``"longest_first"``, ``"only_first"``, ``"only_second"`` or ``False``. Giving ``max_length``
        alone truncates.
        """
        max_target_length = kwargs.pop("max_target_length", None)
        split_special_tokens = kwargs.pop("split_special_tokens", self.split_special_tokens)
        tokenizer_kwargs = kwargs.pop("tokenizer_kwargs", None)
        if kwargs:
            warnings.warn(f"Keyword arguments {sorted(kwargs)} are not recognized by the tokenizer and are ignored")
        call = dict(add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                    max_length=max_length, stride=stride, is_split_into_words=is_split_into_words,
                    pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side, return_tensors=return_tensors,
                    return_token_type_ids=return_token_type_ids, return_attention_mask=return_attention_mask,
                    return_overflowing_tokens=return_overflowing_tokens,
                    return_special_tokens_mask=return_special_tokens_mask,
                    return_offsets_mapping=return_offsets_mapping, return_length=return_length, verbose=verbose,
                    split_special_tokens=split_special_tokens)
        if tokenizer_kwargs:
            call.update(tokenizer_kwargs)
        if text is None and text_target is None:
            raise ValueError("You need to specify either `text` or `text_target`.")
        _check_tensor_type(call["return_tensors"])
        if call["padding_side"] not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {call['padding_side']!r}")
        padding_strategy, truncation_strategy, max_length = self._get_padding_truncation_strategies(
            padding=call.pop("padding"), truncation=call.pop("truncation"), max_length=call.pop("max_length"),
            pad_to_multiple_of=call["pad_to_multiple_of"], verbose=call["verbose"])
        encodings = target = None
        if text is not None:
            encodings = self._encode_plus(_as_text(text), _as_text(text_pair), padding_strategy=padding_strategy,
                                          truncation_strategy=truncation_strategy, max_length=max_length, **call)
        if text_target is not None:
            target = self._encode_plus(_as_text(text_target), _as_text(text_pair_target),
                                       padding_strategy=padding_strategy, truncation_strategy=truncation_strategy,
                                       max_length=max_target_length if max_target_length is not None else max_length,
                                       **call)
        if text_target is None:
            return encodings
        if text is None:
            return target
        encodings["labels"] = target["input_ids"]
        return encodings

    def _set_truncation_and_padding(self, padding_strategy, truncation_strategy, max_length, stride,
                                    pad_to_multiple_of, padding_side):
        backend = self._tokenizer
        if truncation_strategy == "do_not_truncate":
            if backend.truncation is not None:
                backend.no_truncation()
        else:
            target = {"max_length": max_length, "stride": stride, "strategy": truncation_strategy,
                      "direction": self.truncation_side}
            current = backend.truncation
            if current is None or {k: current.get(k) for k in target} != target:
                backend.enable_truncation(**target)
        if padding_strategy == "do_not_pad":
            if backend.padding is not None:
                backend.no_padding()
        else:
            target = {"length": max_length if padding_strategy == "max_length" else None,
                      "direction": padding_side if padding_side is not None else self.padding_side,
                      "pad_id": self.pad_token_id, "pad_token": self.pad_token, "pad_type_id": self.pad_token_type_id,
                      "pad_to_multiple_of": pad_to_multiple_of}
            if backend.padding != target:
                backend.enable_padding(**target)

    def _encode_plus(self, text, text_pair=None, add_special_tokens=True, padding_strategy="do_not_pad",
                     truncation_strategy="do_not_truncate", max_length=None, stride=0, is_split_into_words=False,
                     pad_to_multiple_of=None, padding_side=None, return_tensors=None, return_token_type_ids=None,
                     return_attention_mask=None, return_overflowing_tokens=False, return_special_tokens_mask=False,
                     return_offsets_mapping=False, return_length=False, verbose=True, split_special_tokens=None):
        bad = ("text input must be of type `str` (single example), `list[str]` (batch or single pretokenized "
               "example) or `list[list[str]]` (batch of pretokenized examples) or `list[tuple[list[str], "
               "list[str]]]` (batch of pretokenized sequence pairs).")
        if not _is_valid_text_input(text) or (text_pair is not None and not _is_valid_text_input(text_pair)):
            raise ValueError(bad)
        if is_split_into_words:
            is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            is_batched = isinstance(text, (list, tuple))
        if is_batched:
            if isinstance(text_pair, str):
                raise TypeError("when tokenizing batches of text, `text_pair` must be a list or tuple with the same "
                                "length as `text`.")
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: "
                                 f"{len(text_pair)}.")
            batch = list(zip(text, text_pair)) if text_pair is not None else list(text)
        else:
            batch = [(text, text_pair)] if text_pair else [text]
        if split_special_tokens is None:
            split_special_tokens = self.split_special_tokens
        with self._lock:
            self._set_truncation_and_padding(padding_strategy, truncation_strategy, max_length, stride,
                                             pad_to_multiple_of, padding_side)
            if self._tokenizer.encode_special_tokens != split_special_tokens:
                self._tokenizer.encode_special_tokens = split_special_tokens
            encodings = self._tokenizer.encode_batch(batch, add_special_tokens=add_special_tokens,
                                                     is_pretokenized=is_split_into_words)
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data = {"input_ids": []}
        if return_token_type_ids:
            data["token_type_ids"] = []
        if return_attention_mask:
            data["attention_mask"] = []
        if return_special_tokens_mask:
            data["special_tokens_mask"] = []
        if return_offsets_mapping:
            data["offset_mapping"] = []
        if return_length:
            data["length"] = []
        flat, overflow_map = [], []
        for index, encoding in enumerate(encodings):
            rows = [encoding] + list(encoding.overflowing) if return_overflowing_tokens else [encoding]
            for row in rows:
                flat.append(row)
                overflow_map.append(index)
                data["input_ids"].append(row.ids)
                if return_token_type_ids:
                    data["token_type_ids"].append(row.type_ids)
                if return_attention_mask:
                    data["attention_mask"].append(row.attention_mask)
                if return_special_tokens_mask:
                    data["special_tokens_mask"].append(row.special_tokens_mask)
                if return_offsets_mapping:
                    data["offset_mapping"].append(row.offsets)
                if return_length:
                    data["length"].append(len(row.ids))
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = overflow_map
        for ids in data["input_ids"]:
            self._warn_if_too_long(ids, max_length, verbose)
        output = BatchEncoding(data, flat, tensor_type=return_tensors)
        if not is_batched and return_tensors is None and not return_overflowing_tokens:
            output = BatchEncoding({k: (v[0] if len(v) > 0 and isinstance(v[0], list) else v)
                                    for k, v in output.items()}, output.encodings)
        return output

    def _warn_if_too_long(self, ids, max_length, verbose):
        if (max_length is None and len(ids) > self.model_max_length and verbose and self.model_max_length != 0
                and not self._warned_too_long):
            logger.warning("Token indices sequence length is longer than the specified maximum sequence length for "
                           f"this model ({len(ids)} > {self.model_max_length}). Running this sequence through the "
                           "model will result in indexing errors")
            self._warned_too_long = True

    def encode(self, text, text_pair=None, add_special_tokens=True, padding=False, truncation=None, max_length=None,
               stride=0, padding_side=None, return_tensors=None, **kwargs):
        """The ``input_ids`` of ``text`` (a list of ints for a string)."""
        return PreTrainedTokenizerFast.__call__(
            self, text, text_pair=text_pair, add_special_tokens=add_special_tokens, padding=padding,
            truncation=truncation, max_length=max_length, stride=stride, padding_side=padding_side,
            return_tensors=return_tensors, **kwargs)["input_ids"]

    def tokenize(self, text, pair=None, add_special_tokens=False, **kwargs):
        """The token strings of ``text`` (no special tokens unless ``add_special_tokens=True``)."""
        encoding = PreTrainedTokenizerFast.__call__(self, _as_text(text), text_pair=pair,
                                                    add_special_tokens=add_special_tokens, **kwargs)
        return encoding.tokens()

    def pad(self, encoded_inputs, padding=True, max_length=None, pad_to_multiple_of=None, padding_side=None,
            return_attention_mask=None, return_tensors=None, verbose=True):
        """Pad already-encoded inputs (a dict of lists, a list of dicts, a BatchEncoding) as transformers does; numpy
        or MindSpore inputs come back in the same kind unless ``return_tensors`` says otherwise."""
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            encoded_inputs = {key: [example[key] for example in encoded_inputs] for key in encoded_inputs[0].keys()}
        main = self.model_input_names[0]
        if main not in encoded_inputs:
            raise ValueError("You should supply an encoding or a list of encodings to this method that includes "
                             f"{main}, but you provided {list(encoded_inputs.keys())}")
        required = encoded_inputs[main]
        if required is None or (hasattr(required, "__len__") and len(required) == 0):
            if return_attention_mask:
                encoded_inputs["attention_mask"] = []
            return encoded_inputs
        first = required[0]
        if isinstance(first, (list, tuple)):
            for item in required:
                if len(item) != 0:
                    first = item[0]
                    break
        if not isinstance(first, (int, list, tuple)):
            if hasattr(first, "asnumpy") or type(required).__name__ in ("Tensor", "StubTensor"):
                return_tensors = "ms" if return_tensors is None else return_tensors
            elif isinstance(first, (np.ndarray, np.generic)):
                return_tensors = "np" if return_tensors is None else return_tensors
        encoded_inputs = {key: _to_py(value) for key, value in encoded_inputs.items()}
        padding_strategy, _, max_length = self._get_padding_truncation_strategies(padding=padding,
                                                                                  max_length=max_length,
                                                                                  verbose=verbose)
        required = encoded_inputs[main]
        if required and not isinstance(required[0], (list, tuple)):
            out = self._pad(encoded_inputs, max_length, padding_strategy, pad_to_multiple_of, padding_side,
                            return_attention_mask)
            return BatchEncoding(out, tensor_type=return_tensors)
        if padding_strategy == "longest":
            max_length = max(len(x) for x in required)
            padding_strategy = "max_length"
        batch = {}
        for i in range(len(required)):
            row = self._pad({k: v[i] for k, v in encoded_inputs.items()}, max_length, padding_strategy,
                            pad_to_multiple_of, padding_side, return_attention_mask)
            for key, value in row.items():
                batch.setdefault(key, []).append(value)
        return BatchEncoding(batch, tensor_type=return_tensors)

    def _pad(self, inputs, max_length, padding_strategy, pad_to_multiple_of, padding_side, return_attention_mask):
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        main = self.model_input_names[0]
        required = list(inputs[main])
        if padding_strategy == "longest":
            max_length = len(required)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        if return_attention_mask and "attention_mask" not in inputs:
            inputs["attention_mask"] = [1] * len(required)
        if padding_strategy != "do_not_pad" and len(required) != max_length:
            diff = max_length - len(required)
            side = padding_side if padding_side is not None else self.padding_side
            fills = {"attention_mask": 0, "token_type_ids": self.pad_token_type_id, "special_tokens_mask": 1,
                     main: self.pad_token_id}
            for key, fill in fills.items():
                if key in inputs and (key != "attention_mask" or return_attention_mask):
                    value = list(inputs[key])
                    inputs[key] = value + [fill] * diff if side == "right" else [fill] * diff + value
        return inputs

    # ---- decoding ----------------------------------------------------------------------------------------------
    def clean_up_tokenization(self, text):
        """Remove spaces before punctuation and in English contractions (transformers' rule)."""
        return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
                .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
                .replace(" 've", "'ve").replace(" 're", "'re"))

    def decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        """Text of a sequence of ids (list, numpy array, MindSpore Tensor); a list of texts for a batch."""
        kwargs.pop("use_source_tokenizer", None)
        token_ids = _to_py(token_ids)
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], (list, tuple)):
            return [self._decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in token_ids]
        return self._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        """Texts of a batch of id sequences (list of lists, 2-D numpy array or MindSpore Tensor)."""
        result = self.decode(sequences, skip_special_tokens=skip_special_tokens,
                             clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)
        return [result] if isinstance(result, str) else result

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        if isinstance(token_ids, dict):
            token_ids = token_ids["input_ids"]
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._tokenizer.decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        if clean:
            # transformers skips the clean-up for BPE models (it would remove real spaces before punctuation)
            if type(self._tokenizer.model).__name__ != "BPE" or \
                    self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output:
                text = self.clean_up_tokenization(text)
        return text

    # ---- saving ------------------------------------------------------------------------------------------------
    def _tokenizer_class_name(self):
        return self._profile_name or self.init_kwargs.get("_tokenizer_class") or self._default_tokenizer_class

    def _config_to_save(self):
        config = {k: v for k, v in copy.deepcopy(self.init_kwargs).items()
                  if k not in _PRIVATE_INIT_KWARGS and not k.startswith("_")}
        for key in ("extra_special_tokens", "additional_special_tokens", "model_specific_special_tokens"):
            config.pop(key, None)
        config = {k: (str(v) if hasattr(v, "content") else v) for k, v in config.items()}
        for name in self._special_attributes:
            value = self._special_tokens_map.get(name)
            config[name] = None if value is None else str(value)
        if self._extra_special_tokens or "extra_ids" in config:
            # transformers 5 reads this name as extra_special_tokens; transformers 4 reads only this name
            config["additional_special_tokens"] = self.extra_special_tokens
        config.update(model_max_length=self.model_max_length, padding_side=self.padding_side,
                      truncation_side=self.truncation_side,
                      clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
                      backend="tokenizers", tokenizer_class=self._tokenizer_class_name())
        if self.split_special_tokens:
            config["split_special_tokens"] = True
        if list(self.model_input_names) != list(self._default_model_input_names()):
            config["model_input_names"] = list(self.model_input_names)
        return config

    def _default_model_input_names(self):
        spec = CLASS_PROFILES.get(self._profile_name) if self._profile_name else None
        return spec["model_input_names"] if spec else type(self).model_input_names

    def _backend_json(self):
        with self._lock:
            data = json.loads(self._tokenizer.to_str())
        data["truncation"] = None
        data["padding"] = None
        return data

    def save_pretrained(self, save_directory, legacy_format=None, filename_prefix=None, push_to_hub=False, **kwargs):
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` to
        ``save_directory`` (replaced as a whole; other files in it are kept). transformers' ``AutoTokenizer`` and
        mindpeft's load the folder with the same outputs. Returns the written paths."""
        if push_to_hub:
            raise ValueError("push_to_hub is not supported: mindpeft saves to local folders only")
        if legacy_format:
            raise ValueError("legacy_format=True (vocabulary files of a 'slow' tokenizer) is not supported: mindpeft "
                             "saves tokenizer.json")
        save_directory = os.fspath(save_directory)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        names = (prefix + TOKENIZER_CONFIG_FILE, prefix + SPECIAL_TOKENS_FILE, prefix + TOKENIZER_FILE)
        config = self._config_to_save()
        special_map = dict(self.special_tokens_map)
        if self._extra_special_tokens:
            special_map["additional_special_tokens"] = self.extra_special_tokens
        texts = []
        for name, data in zip(names, (config, special_map, self._backend_json())):
            try:  # all serialised before the folder is touched
                texts.append(json.dumps(data, indent=2, sort_keys=name != names[2], ensure_ascii=False) + "\n")
            except (TypeError, ValueError) as err:
                json_dumps(data)  # raises naming the key
                raise type(err)(f"{name}: {err}") from err
        with atomic_directory(save_directory) as staging:
            for name, text in zip(names, texts):
                write_text(os.path.join(staging, name), text)
        return tuple(os.path.join(save_directory, name) for name in names)

    def __repr__(self):
        added = "\n\t".join(f"{k}: {v!r}," for k, v in sorted(self.added_tokens_decoder.items()))
        if added:
            added = f"\n\t{added}\n"
        return (f"{type(self).__name__}(name_or_path='{self.name_or_path}', vocab_size={self.vocab_size}, "
                f"model_max_length={self.model_max_length}, padding_side='{self.padding_side}', "
                f"truncation_side='{self.truncation_side}', special_tokens={self.special_tokens_map}, "
                f"added_tokens_decoder={{{added}}})")


# transformers 5 calls the same class TokenizersBackend
TokenizersBackend = PreTrainedTokenizerFast


def _load_backend_file(file):
    from tokenizers import Tokenizer as _Backend

    try:
        return _Backend.from_file(os.fspath(file))
    except Exception as err:  # tokenizers raises a plain Exception for unreadable files
        raise ValueError(f"{file} is not a readable tokenizer.json ({err})") from None


def _read_json(path):
    from ..utils.io import read_json_object

    return read_json_object(path)


def _missing_tokenizer_json_error(folder):
    slow = sorted(f for f in os.listdir(folder) if f in SLOW_TOKENIZER_FILES or f.endswith(".model"))
    if slow:
        return FileNotFoundError(
            f"{folder!r} has no {TOKENIZER_FILE}, only the files of a 'slow' (python/sentencepiece) tokenizer "
            f"({', '.join(slow)}). mindpeft needs {TOKENIZER_FILE}, the 'fast' tokenizer file of the tokenizers "
            "library. Convert the folder once where transformers is installed: "
            f"transformers.AutoTokenizer.from_pretrained({folder!r}).save_pretrained({folder!r})")
    return FileNotFoundError(
        f"No {TOKENIZER_FILE} in {folder!r}: mindpeft needs {TOKENIZER_FILE}, the 'fast' tokenizer file of the "
        "tokenizers library (saved by transformers' tokenizer.save_pretrained or tokenizers' Tokenizer.save)")


def _from_folder(cls, path, kwargs, profile=None, fixed_profile=False):
    """Load ``cls`` from a folder (or a tokenizer.json file) following transformers 5's from_pretrained rules."""
    kwargs = dict(kwargs)
    revision = kwargs.get("revision")
    for key in _HUB_KWARGS:
        kwargs.pop(key, None)
    subfolder = kwargs.pop("subfolder", None)
    name = path = os.fspath(path)
    if not os.path.isfile(path):
        path = resolve_folder(path, revision, subfolder)
    if os.path.isfile(path):
        folder, tokenizer_file = os.path.dirname(path) or ".", path
        config_file = special_file = model_config_file = None
    else:
        folder = path
        tokenizer_file = os.path.join(folder, TOKENIZER_FILE)
        if not os.path.isfile(tokenizer_file):
            raise _missing_tokenizer_json_error(folder)
        config_file, special_file, model_config_file = (os.path.join(folder, name) for name in (
            TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE, MODEL_CONFIG_FILE))

    init = _read_json(config_file) if config_file and os.path.isfile(config_file) else {}
    class_name = init.pop("tokenizer_class", None)
    class_name_from_tokenizer_config = bool(class_name)
    init.pop("init_inputs", None)
    init.pop("auto_map", None)
    # transformers ignores add_bos_token/add_eos_token of the config when tokenizer.json exists (the template in
    # tokenizer.json already says what is added); passing them as arguments still works
    init.pop("add_bos_token", None)
    init.pop("add_eos_token", None)
    model_config = {}
    if model_config_file and os.path.isfile(model_config_file):
        try:
            model_config = _read_json(model_config_file)
        except ValueError:
            model_config = {}
    if not class_name:
        class_name = model_config.get("tokenizer_class") or MODEL_TYPE_TO_TOKENIZER_CLASS.get(
            model_config.get("model_type"))
    init.update(kwargs)
    if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
        init["extra_special_tokens"] = init.pop("additional_special_tokens")
    model_specific = {k: init.pop(k) for k in list(init) if k not in SPECIAL_TOKENS_ATTRIBUTES
                      and k.endswith("_token") and isinstance(init[k], (str, dict))}
    if isinstance(init.get("extra_special_tokens"), dict):
        model_specific.update(init.pop("extra_special_tokens"))
    if model_specific:
        init["model_specific_special_tokens"] = model_specific

    backend_json = _read_backend_json(tokenizer_file)
    added_map = {}
    if "added_tokens_decoder" in init:  # transformers 4.x tokenizer_config.json
        decoder = {}
        for index, token in init["added_tokens_decoder"].items():
            token = _added_token(token)
            decoder[int(index)] = token
            added_map[str(token)] = token
        init["added_tokens_decoder"] = decoder
    else:
        if special_file and os.path.isfile(special_file):  # legacy special_tokens_map.json overrides the config
            for key, value in _read_json(special_file).items():
                if key in kwargs and kwargs[key]:
                    continue
                if key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
                    existing = list(init.get("extra_special_tokens") or [])
                    for token in value:
                        token = _token_value(token)
                        if str(token) not in [str(t) for t in existing]:
                            existing.append(token)
                    init["extra_special_tokens"] = existing
                    continue
                init[key] = _token_value(value)
            if isinstance(init.get("extra_special_tokens"), dict):
                init.setdefault("model_specific_special_tokens", {}).update(init.pop("extra_special_tokens"))
        for entry in backend_json.get("added_tokens", []):
            token = _added_token({k: v for k, v in entry.items() if k != "id"})
            added_map[str(token)] = token
    for key in SPECIAL_TOKENS_ATTRIBUTES:
        if init.get(key) is not None and added_map:
            init[key] = added_map.get(str(init[key]), init[key])

    if not fixed_profile:
        profile = resolve_profile(class_name)
    keep_class_name = class_name_from_tokenizer_config and profile is None
    if profile is not None and CLASS_PROFILES[profile]["model"] != (backend_json.get("model") or {}).get("type"):
        # transformers would force this class's model onto a different one (a word-level tokenizer.json next to a
        # GPT-2 config.json, say) and tokenize garbage; mindpeft keeps the file's pipeline instead (and saves the
        # folder as a plain PreTrainedTokenizerFast, which transformers then loads as it is)
        profile = None
    if profile is not None:
        merged = dict(CLASS_PROFILES[profile]["defaults"])
        merged.update(init)
        backend_json = _rebuild_backend_json(backend_json, profile, merged)
    from tokenizers import Tokenizer as _Backend

    backend = _Backend.from_str(json.dumps(backend_json))
    init["name_or_path"] = path if os.path.exists(name) else name  # a hub id is kept, as in transformers
    if keep_class_name:
        init["_tokenizer_class"] = class_name
    if cls is PreTrainedTokenizerFast and profile is not None:
        cls = PROFILE_CLASSES.get(profile, cls)
    return cls(tokenizer_object=backend, _profile=profile, **init)


def _read_backend_json(file):
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not a readable tokenizer.json ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{file} is not a tokenizer.json of the tokenizers library (no 'model' object)")
    return data


class Tokenizer(PreTrainedTokenizerFast):
    """The simple tokenizer interface of the tutorials and ``mindpeft.training``: ``__call__`` pads to the longest
    row (or ``max_length``) and truncates by default and returns numpy ``int32`` arrays; ``decode`` skips special
    tokens by default. For transformers' exact call semantics use ``AutoTokenizer``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        pad_token, eos_token, bos_token, unk_token: special token strings (looked up in the vocabulary).
    """

    def __init__(self, tokenizer=None, pad_token=None, eos_token=None, bos_token=None, unk_token=None,
                 padding_side="right", **kwargs):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        legacy = tokenizer is not None
        if legacy:
            kwargs["tokenizer_object"] = tokenizer
            for name, token in dict(pad_token=pad_token, eos_token=eos_token, bos_token=bos_token,
                                    unk_token=unk_token).items():
                if token is not None and tokenizer.token_to_id(str(token)) is None:
                    raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
        for name, token in dict(pad_token=pad_token, eos_token=eos_token, bos_token=bos_token,
                                unk_token=unk_token).items():
            if token is not None:
                kwargs[name] = token
        kwargs.setdefault("padding_side", padding_side)
        super().__init__(**kwargs)

    @property
    def special_tokens(self):
        """The pad/eos/bos/unk tokens that are set (older interface)."""
        return {k: v for k, v in self.special_tokens_map.items() if k in ("pad_token", "eos_token", "bos_token",
                                                                          "unk_token")}

    @property
    def vocab_size(self):
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode_ids(self, texts, add_special_tokens):
        with self._lock:
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
            return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def __call__(self, texts, max_length=None, padding="longest", truncation=True, add_special_tokens=True):
        """``{"input_ids", "attention_mask"}`` int32 arrays of shape (batch, length) for a string or a list.

        ``padding``: ``"longest"``, ``"max_length"`` (pads to ``max_length``) or ``False`` (lists, unpadded);
        pads on ``self.padding_side``.
        """
        texts = _as_text(texts)
        single = isinstance(texts, str)
        encoded = self._encode_ids([texts] if single else texts, add_special_tokens)
        if truncation and max_length is not None:
            encoded = [ids[:max_length] for ids in encoded]
        if padding is False:
            out = {"input_ids": encoded, "attention_mask": [[1] * len(ids) for ids in encoded]}
            return BatchEncoding({k: v[0] for k, v in out.items()} if single else out)
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
            return BatchEncoding({"input_ids": input_ids[0], "attention_mask": mask[0]})
        return BatchEncoding({"input_ids": input_ids, "attention_mask": mask})

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=None, **kwargs):
        ids = _to_py(ids)
        if isinstance(ids, list) and ids and isinstance(ids[0], list):  # older interface: flatten
            ids = [i for row in ids for i in row]
        return super().decode(ids, skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    def batch_decode(self, batch, skip_special_tokens=True, clean_up_tokenization_spaces=None, **kwargs):
        batch = _to_py(batch)
        if batch and not isinstance(batch[0], list):
            batch = [[i] for i in batch]  # older interface: a 1-D array is a batch of one-token rows
        return [PreTrainedTokenizerFast.decode(self, row, skip_special_tokens=skip_special_tokens,
                                               clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)
                for row in batch]


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
