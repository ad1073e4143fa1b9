"""Tiny HF reference models (torch) saved to disk, for mindpeft to load and be compared against."""
import os
import signal
import subprocess
import warnings

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GLOG_v", "3")
warnings.filterwarnings("ignore", category=UserWarning)

import torch  # noqa: E402
import transformers  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from mindpeft.models.layers import Linear  # noqa: E402

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

# MindSpore 2.10 keys its cache of parsed Cells by class name and id() (mindspore/graph/_parse/parser.py,
# get_object_key). A suite that creates and frees hundreds of models can get a freed Cell's id reused by a new
# Cell of the same class, and a later jit compile then picks up the stale parse. Keeping every Cell alive for the
# session rules that out (the models are tiny).
_ALL_CELLS = []
_cell_init = ms.nn.Cell.__init__


def _init_and_keep(self, *args, **kwargs):
    _cell_init(self, *args, **kwargs)
    _ALL_CELLS.append(self)


ms.nn.Cell.__init__ = _init_and_keep


def _bitsandbytes_generic_cpu_path():
    """bitsandbytes 0.50 picks CPU kernels by CPU features, and on AVX-512 machines they are not its reference:
    the compiled 4-bit dequantization mixes up blocks when a row is shorter than a block (measured: 1.1 off on a
    64 x 32 weight whose codes and scales equal ours), and on AVX-512 BF16 machines ``Linear4bit`` repacks its
    weight for a bfloat16 kernel at inference (and fails on layers narrower than a block). The tests compare
    against bitsandbytes' device-independent implementation on every machine."""
    import bitsandbytes.nn.modules as bnb_modules
    from bitsandbytes._ops import register_kernel
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    bnb_modules.has_avx512bf16 = lambda: False

    @register_kernel("bitsandbytes::dequantize_4bit", "cpu")
    def _(A, absmax, blocksize, quant_type, shape, dtype):
        code = _get_4bit_code(quant_type, A.device)
        return _dequantize_4bit_compute(A.view(torch.uint8).reshape(-1), absmax, code, blocksize, shape, dtype)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch's notice that a kernel is overridden
    _bitsandbytes_generic_cpu_path()

VOCAB = 96

TINY_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=0),
    "bert": lambda: transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64,
                                            max_position_embeddings=64, num_labels=3),
    "roberta": lambda: transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=64,
                                                  max_position_embeddings=66, num_labels=3),
    "t5": lambda: transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                        num_heads=4, relative_attention_num_buckets=8,
                                        relative_attention_max_distance=20, decoder_start_token_id=0),
    "mt5": lambda: transformers.MT5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                          num_heads=4, relative_attention_num_buckets=8,
                                          relative_attention_max_distance=20, decoder_start_token_id=0),
    "llama": lambda: transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=64, pad_token_id=0),
    # 6 heads: ALiBi's slopes for a head count that is not a power of two
    "bloom": lambda: transformers.BloomConfig(vocab_size=VOCAB, hidden_size=48, n_layer=2, n_head=6, pad_token_id=0,
                                              num_labels=3),
    "opt": lambda: transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                          num_attention_heads=4, word_embed_proj_dim=16, max_position_embeddings=64,
                                          pad_token_id=0, num_labels=3),
    "qwen2": lambda: transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=64, pad_token_id=0, num_labels=3),
    "mistral": lambda: transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                  max_position_embeddings=64, sliding_window=4, pad_token_id=0),
}
# Families whose zero biases, unit norms and small weights get noise, so that every weight shows in the outputs.
NOISY_FAMILIES = {"bloom", "opt", "qwen2", "mistral"}

TORCH_CLASSES = {
    ("gpt2", "causal"): "GPT2LMHeadModel", ("gpt2", "seq_cls"): "GPT2ForSequenceClassification",
    ("bert", "seq_cls"): "BertForSequenceClassification", ("bert", "token_cls"): "BertForTokenClassification",
    ("bert", "qa"): "BertForQuestionAnswering", ("bert", "base"): "BertModel",
    ("roberta", "seq_cls"): "RobertaForSequenceClassification",
    ("roberta", "token_cls"): "RobertaForTokenClassification",
    ("roberta", "qa"): "RobertaForQuestionAnswering", ("roberta", "base"): "RobertaModel",
    ("t5", "seq2seq"): "T5ForConditionalGeneration", ("mt5", "seq2seq"): "MT5ForConditionalGeneration",
    ("llama", "causal"): "LlamaForCausalLM",
    ("bloom", "causal"): "BloomForCausalLM", ("bloom", "seq_cls"): "BloomForSequenceClassification",
    ("bloom", "base"): "BloomModel", ("opt", "causal"): "OPTForCausalLM",
    ("opt", "seq_cls"): "OPTForSequenceClassification", ("opt", "base"): "OPTModel",
    ("qwen2", "causal"): "Qwen2ForCausalLM", ("qwen2", "seq_cls"): "Qwen2ForSequenceClassification",
    ("qwen2", "base"): "Qwen2Model", ("mistral", "causal"): "MistralForCausalLM", ("mistral", "base"): "MistralModel",
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family, head)``: folder with config.json + model.safetensors of a seeded tiny HF model."""
    cache = {}

    def make(family, head):
        if (family, head) not in cache:
            torch.manual_seed(0)
            config = TINY_CONFIGS[family]()
            if head == "qa":
                config.num_labels = 2
            model = getattr(transformers, TORCH_CLASSES[(family, head)])(config).eval()
            if family in NOISY_FAMILIES:
                with torch.no_grad():
                    for param in model.parameters():
                        param.add_(0.1 * torch.randn_like(param))
            path = tmp_path_factory.mktemp(f"{family}_{head}")
            model.save_pretrained(path)
            cache[(family, head)] = str(path)
        return cache[(family, head)]

    return make


def torch_model(path, family, head):
    return getattr(transformers, TORCH_CLASSES[(family, head)]).from_pretrained(path).eval()


def rand_ids(shape, low=3, high=VOCAB, seed=0):
    return np.random.default_rng(seed).integers(low, high, shape)


def ms_ids(array):
    return Tensor(np.asarray(array), ms.int32)


def torch_ids(array):
    return torch.tensor(np.asarray(array), dtype=torch.long)


def max_diff(a, b):
    a = a.asnumpy() if hasattr(a, "asnumpy") else (a.detach().numpy() if hasattr(a, "detach") else np.asarray(a))
    b = b.asnumpy() if hasattr(b, "asnumpy") else (b.detach().numpy() if hasattr(b, "detach") else np.asarray(b))
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    torch.manual_seed(0)


def ms_logits(model, inputs):
    """``model``'s logits (numpy) for a dict of numpy id arrays."""
    return model(**{k: ms_ids(v) for k, v in inputs.items()})["logits"].asnumpy()


def torch_logits(model, inputs):
    """A torch model's logits (numpy) for a dict of numpy id arrays."""
    with torch.no_grad():
        return model(**{k: torch_ids(v) for k, v in inputs.items()}).logits.numpy()


def adapter_shapes(folder):
    """``{key: shape}`` of a saved ``adapter_model.safetensors``."""
    return {k: v.shape for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}


class TorchMLP(torch.nn.Module):
    """The small torch MLP (16 -> 32 -> 8) that the tuner tests adapt in both libraries."""

    def __init__(self):
        super().__init__()
        self.lin0 = torch.nn.Linear(16, 32)
        self.lin1 = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(x)))


class MsMLP(nn.Cell):
    """:class:`TorchMLP`'s MindSpore twin, with its torch twin's weights."""

    def __init__(self, torch_twin):
        super().__init__()
        self.lin0 = Linear(16, 32)
        self.lin1 = Linear(32, 8)
        state = torch_twin.state_dict()
        for name, param in self.parameters_and_names():
            param.set_data(Tensor(state[name].numpy()))

    def construct(self, x):
        return self.lin1(ms.ops.relu(self.lin0(x)))


@pytest.fixture
def torch_mlp():
    torch.manual_seed(1)
    return TorchMLP().eval()


def finish_launcher(process, log_dir, timeout, what):
    """A launcher's (``msrun``'s) exit status and output, with its workers' logs from ``log_dir`` (MindSpore's INFO
    and WARNING lines dropped); the whole process group is killed and the test failed past ``timeout`` seconds."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{what} did not finish within {timeout} s")
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        with open(os.path.join(log_dir, name), errors="replace") as f:
            output += f"\n----- {name}\n" + "\n".join(line for line in f.read().splitlines()
                                                    if "[INFO]" not in line and "[WARNING]" not in line)
    return process.returncode, output
