"""Mixed adapter batches (HF peft's ``adapter_names``): one adapter per row, ``"__base__"`` for none, in forward and
in ``generate`` (the compiled decode step included), against HF peft and against running each adapter alone; a
compiled forward serves other adapter names without compiling again; HF peft's refusals."""
import copy

import mindspore as ms
import numpy as np
import peft
import pytest
import torch
import transformers
from mindspore import Tensor, nn
from mindspore.graph import api as graph_api

from mindpeft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from mindpeft.models.modeling_utils import write_parameter
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model

NAMES = ["default", "__base__", "other", "default"]
tnn = torch.nn


def _close(actual, expected):
    return max_diff(actual, expected) <= 1e-4 + 1e-5 * np.abs(expected).max()


@pytest.fixture(scope="module")
def gpt2_adapters(tiny_model_dir, tmp_path_factory):
    """A tiny GPT-2 and HF peft's two adapters for it: "default" on c_attn and the (tied) embedding, "other" on
    c_attn and c_fc with another rank and alpha; saved by HF peft."""
    path = tiny_model_dir("gpt2", "causal")
    torch.manual_seed(1)
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"),
                             peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn", "wte"], r=4,
                                             init_lora_weights=False))
    hf.add_adapter("other", peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn", "c_fc"], r=2,
                                            lora_alpha=32, init_lora_weights=False))
    folder = str(tmp_path_factory.mktemp("mixed"))
    hf.save_pretrained(folder)
    return path, hf.eval(), folder


def _ours(path, folder):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), folder)
    model.load_adapter(f"{folder}/other", "other")
    model.set_train(False)
    return model


def _logits(model, ids, **kwargs):
    return model(input_ids=ms_ids(ids), **kwargs)["logits"].asnumpy()


def _alone(model, ids, names, run):
    """Row i of ``run(model)`` with only adapter ``names[i]`` active (the base model for "__base__")."""
    rows = []
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                rows.append(run(model)[i])
        else:
            model.set_adapter(name)
            rows.append(run(model)[i])
    model.set_adapter("default")
    return np.stack(rows)


def test_forward_matches_hf_peft_and_each_adapter_alone(gpt2_adapters):
    path, hf, folder = gpt2_adapters
    model = _ours(path, folder)
    ids = rand_ids((4, 7))
    mixed = _logits(model, ids, adapter_names=NAMES)
    with torch.no_grad():
        expected = hf(torch_ids(ids), adapter_names=NAMES).logits.numpy()
    assert _close(mixed, expected)
    assert _close(mixed, _alone(model, ids, NAMES, lambda m: _logits(m, ids)))
    assert max_diff(mixed[0], mixed[1]) > 1e-2 and max_diff(mixed[2], _logits(model, ids)[2]) > 1e-2
    assert _close(_logits(model, ids), _logits(model, ids, adapter_names=["default"] * 4))  # the state is back


def test_compiled_forward_reads_new_adapter_names_without_compiling(gpt2_adapters):
    path, _, folder = gpt2_adapters
    model = _ours(path, folder)
    ids = rand_ids((4, 7), seed=2)

    def forward(input_ids):
        return model(input_ids=input_ids)["logits"]

    compiled = ms.jit(forward)
    with model.mixed_adapter_batch(NAMES):
        first = compiled(ms_ids(ids)).asnumpy()
    count = len(graph_api.ms_compile_cache)
    others = ["other", "default", "__base__", "other"]
    with model.mixed_adapter_batch(others):
        second = compiled(ms_ids(ids)).asnumpy()
    assert len(graph_api.ms_compile_cache) == count
    assert _close(first, _logits(model, ids, adapter_names=NAMES))
    assert _close(second, _logits(model, ids, adapter_names=others))
    big, names = rand_ids((10, 3), seed=4), ["other", "__base__", "default", "other", "default"] * 2
    assert _close(_logits(model, big, adapter_names=names), _alone(model, big, names, lambda m: _logits(m, big)))
    with model.mixed_adapter_batch(NAMES):  # the batch of 10 needed more rows: the compiled graph still reads its own
        assert _close(compiled(ms_ids(ids)).asnumpy(), first)


def test_generate_rows_use_their_adapters_compiled_and_eager(gpt2_adapters):
    path, hf, folder = gpt2_adapters
    model = _ours(path, folder)
    ids = rand_ids((4, 5), seed=3)
    kwargs = dict(input_ids=ms_ids(ids), max_new_tokens=8, eos_token_id=-1)
    alone = _alone(model, ids, NAMES, lambda m: m.generate(jit=False, **kwargs).asnumpy())
    plain = model.generate(**kwargs).asnumpy()  # the plain decode graph
    mixed = model.generate(adapter_names=NAMES, **kwargs).asnumpy()  # the mixed one
    np.testing.assert_array_equal(mixed, alone)
    np.testing.assert_array_equal(mixed, model.generate(adapter_names=NAMES, jit=False, **kwargs).asnumpy())
    with torch.no_grad():
        expected = hf.generate(input_ids=torch_ids(ids), adapter_names=NAMES, max_new_tokens=8, min_new_tokens=8,
                               do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(mixed, expected)
    assert not np.array_equal(mixed[1], plain[1])

    count = len(graph_api.ms_compile_cache)  # other names, and the plain graph again: nothing new to compile
    others = ["__base__", "other", "default", "__base__"]
    swapped = model.generate(adapter_names=others, **kwargs).asnumpy()
    np.testing.assert_array_equal(plain, model.generate(**kwargs).asnumpy())
    assert len(graph_api.ms_compile_cache) == count
    np.testing.assert_array_equal(swapped, model.generate(adapter_names=others, jit=False, **kwargs).asnumpy())
    assert not np.array_equal(swapped, mixed)


class TorchConvNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.c1 = tnn.Conv2d(3, 6, 3, padding=1), tnn.Conv2d(6, 4, 1)
        self.emb = tnn.Embedding(10, 4)

    def forward(self, x, ids):
        return self.c1(torch.relu(self.c0(x))).mean((2, 3)) + self.emb(ids).sum(1)


class MsConvNet(nn.Cell):
    def __init__(self, twin):
        super().__init__()
        self.c0 = nn.Conv2d(3, 6, 3, pad_mode="pad", padding=1, has_bias=True)
        self.c1 = nn.Conv2d(6, 4, 1, has_bias=True)
        self.emb = nn.Embedding(10, 4)
        state = twin.state_dict()
        for name, param in self.parameters_and_names():
            write_parameter(param, state[name.replace("embedding_table", "weight")].numpy())

    def construct(self, x, ids):
        return self.c1(ms.ops.relu(self.c0(x))).mean((2, 3)) + self.emb(ids).sum(1)


def test_convolutions_and_embeddings_match_hf_peft():
    torch.manual_seed(4)
    base = TorchConvNet().eval()
    config = dict(target_modules=["c0", "c1", "emb"], init_lora_weights=False)
    hf = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, **config))
    hf.add_adapter("other", peft.LoraConfig(r=4, lora_alpha=4, **config))
    hf.eval()
    ours = get_peft_model(MsConvNet(base), LoraConfig(r=2, **config))
    ours.add_adapter("other", LoraConfig(r=4, lora_alpha=4, **config))
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    for name, param in ours.parameters_and_names():
        key = name.replace("embedding_table", "weight")
        write_parameter(param, state[key + ".weight" if key + ".weight" in state else key].reshape(param.shape))
    ours.set_train(False)
    rng = np.random.default_rng(5)
    x, ids = rng.standard_normal((3, 3, 5, 5)).astype(np.float32), rng.integers(0, 10, (3, 4))
    names = ["other", "default", "__base__"]
    with torch.no_grad():
        expected = hf(torch.tensor(x), torch_ids(ids), adapter_names=names).numpy()
    mixed = ours(Tensor(x), ms_ids(ids), adapter_names=names).asnumpy()
    assert _close(mixed, expected)
    assert _close(mixed, _alone(ours, ids, names, lambda m: m(Tensor(x), ms_ids(ids)).asnumpy()))


def test_hf_peft_refusals(gpt2_adapters, tiny_model_dir):
    path, hf, folder = gpt2_adapters
    model = _ours(path, folder)
    ids = ms_ids(rand_ids((2, 5)))
    with pytest.raises(ValueError, match="Trying to infer with non-existing adapter\\(s\\): nope"):
        model(input_ids=ids, adapter_names=["default", "nope"])
    with pytest.raises(ValueError, match="Length of `adapter_names` should be the same as the number of inputs, but "
                                         "got 3 and 2 respectively"):
        model(input_ids=ids, adapter_names=["default"] * 3)
    with pytest.raises(ValueError, match="Length of `adapter_names`"):
        model.generate(input_ids=ids, adapter_names=["default"] * 3)
    model.set_train(True)
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when the model is in training mode."):
        model(input_ids=ids, adapter_names=["default", "other"])
    model.set_train(False)
    model.merge_adapter()
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when there are merged adapters, please call "
                                         "`unmerge_adapter` first."):
        model(input_ids=ids, adapter_names=["default", "other"])
    model.unmerge_adapter()
    model.add_adapter("dora", LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"], use_dora=True))
    hf.add_adapter("dora", peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"], use_dora=True))
    for run in (lambda: model(input_ids=ids, adapter_names=["dora", "other"]),
                lambda: hf(torch_ids(ids.asnumpy()), adapter_names=["dora", "other"])):
        with pytest.raises(ValueError, match="Cannot pass `adapter_names` when DoRA is enabled."):
            run()
    hf.delete_adapter("dora")
    assert _close(_logits(model, ids.asnumpy(), adapter_names=["other", "__base__"]),
                  _alone(model, ids.asnumpy(), ["other", "__base__"], lambda m: _logits(m, ids.asnumpy())))

    mha = get_peft_model(nn.SequentialCell([nn.MultiheadAttention(8, 2)]), LoraConfig(target_modules=["0"]))
    mha.set_train(False)
    x = Tensor(np.ones((3, 2, 8), np.float32))
    with pytest.raises(TypeError, match="lora.MultiheadAttention does not support mixed adapter batches."):
        mha(x, x, x, adapter_names=["default", "default", "default"])
    prompt = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                            PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ValueError, match="adapter_names \\(mixed adapter batches\\) needs LoRA adapters"):
        prompt(input_ids=ids, adapter_names=["default", "default"])


@pytest.mark.parametrize("family,head,config", [
    ("bert", "seq_cls", {"task_type": "SEQ_CLS", "target_modules": ["query"]}),  # classifier in modules_to_save
    ("llama", "causal", {"task_type": "CAUSAL_LM", "target_modules": ["q_proj"], "trainable_token_indices": [1, 5]}),
])
def test_modules_to_save_and_trainable_tokens_in_mixed_batches(tiny_model_dir, tmp_path, family, head, config):
    """Each row gets its adapter's classifier copy / trained token rows, as in HF peft, eager and compiled."""
    path = tiny_model_dir(family, head)
    torch.manual_seed(2)
    hf = peft.get_peft_model(torch_model(path, family, head), peft.LoraConfig(r=2, init_lora_weights=False, **config))
    hf.add_adapter("other", peft.LoraConfig(r=4, init_lora_weights=False, **config))
    with torch.no_grad():  # trained-looking classifier copies / token rows, different per adapter
        for name, param in hf.named_parameters():
            if "modules_to_save" in name or "trainable_tokens_delta" in name:
                param.add_(torch.randn_like(param))
    hf.save_pretrained(str(tmp_path))
    auto = AutoModelForSequenceClassification if head == "seq_cls" else AutoModelForCausalLM
    if family == "llama":  # its LM head is untied: the head has no trainable tokens
        assert not transformers.AutoConfig.from_pretrained(path).tie_word_embeddings
    model = PeftModel.from_pretrained(auto.from_pretrained(path), str(tmp_path))
    model.load_adapter(str(tmp_path / "other"), "other")
    model.set_train(False)
    hf.eval()
    names = ["other", "__base__", "default", "other"]
    ids = rand_ids((4, 6), low=0, high=8)  # token ids 1 and 5 appear
    with torch.no_grad():
        expected = hf(torch_ids(ids), adapter_names=names).logits.numpy()
    mixed = _logits(model, ids, adapter_names=names)
    assert _close(mixed, expected)
    assert _close(mixed, _alone(model, ids, names, lambda m: _logits(m, ids)))

    def forward(input_ids):
        return model(input_ids=input_ids)["logits"]

    with model.mixed_adapter_batch(names):
        assert _close(ms.jit(forward)(ms_ids(ids)).asnumpy(), expected)


def test_trainable_tokens_of_a_tied_head_are_refused_in_mixed_batches(tiny_model_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                           LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"], trainable_token_indices=[1]))
    model.set_train(False)
    with pytest.raises(ValueError, match="GPT2LMHeadModel computes its logits from the input embedding's weight"):
        model(input_ids=ms_ids(rand_ids((2, 3))), adapter_names=["default", "__base__"])
