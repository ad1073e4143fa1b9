"""``AutoTokenizer``: transformers' entry point for loading a tokenizer folder, and the per-family classes.

The class is picked as transformers 5 does: ``tokenizer_class`` in ``tokenizer_config.json``, else the model type in
``config.json``. BERT (WordPiece), GPT-2 and RoBERTa (byte-level BPE) and T5/mT5 (Unigram) folders get the pipeline
those classes of transformers rebuild on load; any other folder is read as its ``tokenizer.json`` says.
"""
from .tokenization import PROFILE_CLASSES, PreTrainedTokenizerFast, _from_folder


class AutoTokenizer:
    """Use ``AutoTokenizer.from_pretrained(folder)``; the class cannot be instantiated."""

    def __init__(self):
        raise EnvironmentError("AutoTokenizer is designed to be instantiated using the "
                               "`AutoTokenizer.from_pretrained(pretrained_model_name_or_path)` method.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *inputs, **kwargs):
        """A :class:`~mindpeft.models.tokenization.PreTrainedTokenizerFast` from a local folder holding
        ``tokenizer.json`` (plus ``tokenizer_config.json`` / ``special_tokens_map.json`` when present).

        Keyword arguments override the saved settings (``padding_side="left"``, ``pad_token=...``,
        ``model_max_length=...``); download-related ones of transformers (``cache_dir``, ``revision``, ...) are
        accepted and ignored.
        """
        return _from_folder(PreTrainedTokenizerFast, pretrained_model_name_or_path, kwargs)


class BertTokenizerFast(PreTrainedTokenizerFast):
    """transformers' ``BertTokenizer`` (WordPiece): returns ``token_type_ids`` too."""

    _profile = "BertTokenizer"


class DistilBertTokenizerFast(PreTrainedTokenizerFast):
    _profile = "DistilBertTokenizer"


class GPT2TokenizerFast(PreTrainedTokenizerFast):
    """transformers' ``GPT2Tokenizer`` (byte-level BPE); it has no pad token: set ``pad_token = eos_token``."""

    _profile = "GPT2Tokenizer"


class RobertaTokenizerFast(PreTrainedTokenizerFast):
    _profile = "RobertaTokenizer"


class T5TokenizerFast(PreTrainedTokenizerFast):
    """transformers' ``T5Tokenizer`` (Unigram), which appends ``</s>``."""

    _profile = "T5Tokenizer"


PROFILE_CLASSES.update({cls._profile: cls for cls in (BertTokenizerFast, DistilBertTokenizerFast, GPT2TokenizerFast,
                                                      RobertaTokenizerFast, T5TokenizerFast)})

# transformers 5 names the fast classes without "Fast"
BertTokenizer = BertTokenizerFast
DistilBertTokenizer = DistilBertTokenizerFast
GPT2Tokenizer = GPT2TokenizerFast
RobertaTokenizer = RobertaTokenizerFast
T5Tokenizer = T5TokenizerFast
