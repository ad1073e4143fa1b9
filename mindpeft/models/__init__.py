"""Compact MindSpore Cell implementations of GPT-2, BERT/RoBERTa, T5/mT5 and LLaMA loading HF checkpoints."""
from .auto import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
                   AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoModelForTokenClassification)
from .bert import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
                   BertModel, RobertaConfig, RobertaForQuestionAnswering, RobertaForSequenceClassification,
                   RobertaForTokenClassification, RobertaModel)
from .configuration_utils import PretrainedConfig
from .gpt2 import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model
from .llama import LlamaConfig, LlamaForCausalLM, LlamaModel
from .modeling_utils import PreTrainedModel
from .t5 import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration
from .tokenization import BatchEncoding, PreTrainedTokenizerFast, Tokenizer, train_word_level_tokenizer
from .tokenization_auto import (AutoTokenizer, BertTokenizerFast, DistilBertTokenizerFast, GPT2TokenizerFast,
                                RobertaTokenizerFast, T5TokenizerFast)
