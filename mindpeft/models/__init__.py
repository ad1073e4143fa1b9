"""Compact MindSpore Cell implementations of GPT-2, BERT/RoBERTa, T5/mT5, LLaMA, BLOOM, OPT, Qwen2, Mistral,
ViT, SegFormer and Whisper loading HF checkpoints; torch-free image and audio pre-processing."""
from .auto import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
                   AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoModelForTokenClassification)
from .auto import AutoModelForImageClassification, AutoModelForSemanticSegmentation, AutoModelForSpeechSeq2Seq
from .bert import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
                   BertModel, RobertaConfig, RobertaForQuestionAnswering, RobertaForSequenceClassification,
                   RobertaForTokenClassification, RobertaModel)
from .bloom import BloomConfig, BloomForCausalLM, BloomForSequenceClassification, BloomModel
from .configuration_utils import PretrainedConfig
from .feature_extraction_whisper import WhisperFeatureExtractor
from .gpt2 import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Model
from .image_processing import AutoImageProcessor, BatchFeature, SegformerImageProcessor, ViTImageProcessor
from .llama import LlamaConfig, LlamaForCausalLM, LlamaModel
from .mistral import MistralConfig, MistralForCausalLM, MistralModel
from .modeling_utils import PreTrainedModel
from .opt import OPTConfig, OPTForCausalLM, OPTForSequenceClassification, OPTModel
from .qwen2 import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2Model
from .segformer import SegformerConfig, SegformerForSemanticSegmentation, SegformerModel
from .t5 import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration
from .tokenization import BatchEncoding, PreTrainedTokenizerFast, Tokenizer, train_word_level_tokenizer
from .tokenization_auto import (AutoTokenizer, BertTokenizerFast, DistilBertTokenizerFast, GPT2TokenizerFast,
                                RobertaTokenizerFast, T5TokenizerFast)
from .vit import ViTConfig, ViTForImageClassification, ViTModel
from .whisper import WhisperConfig, WhisperForConditionalGeneration, WhisperModel
