"""Trainable tokens (on their own and as LoRA's ``trainable_token_indices``) against HF peft: numbers both ways,
file keys, tied LM heads, merging, multiple adapters, jit training, errors."""
import copy
import dataclasses
import os
from typing import Optional, Union

import numpy as np
import peft
import pytest
import torch
import transformers
from mindspore import Tensor, nn, ops
from mindspore.experimental import optim
from safetensors.numpy import load_file

from mindpeft import LoraConfig, PeftModel, TrainableTokensConfig, get_layer_status, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from mindpeft.models.layers import Embedding, Linear
from mindpeft.tuners.trainable_tokens import TrainableTokensLayer, TrainableTokensWrapper
from mindpeft.tuners.tuners_utils import BaseTunerLayer, named_references
from mindpeft.training import TrainStep
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model

TOKENS = [5, 9, 11, 40]
IDS = np.array([[5, 9, 3, 11, 40, 7, 5], [8, 11, 12, 13, 9, 40, 2]])


if "trainable_token_indices" in {f.name for f in dataclasses.fields(LoraConfig)}:
    LoraTokensConfig = LoraConfig
else:  # until LoraConfig has the field (the mechanism lives in BaseTuner.inject_adapter)
    @dataclasses.dataclass
    class LoraTokensConfig(LoraConfig):
        trainable_token_indices: Optional[Union[list, dict]] = None


def _file(folder):
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def _shapes(folder):
    return {k: v.shape for k, v in _file(folder).items()}


def _hf_logits(model, ids=IDS):
    with torch.no_grad():
        return model(torch_ids(ids)).logits.numpy()


def _ms_logits(model, ids=IDS):
    return model(input_ids=ms_ids(ids))["logits"].asnumpy()


def _close(a, b):
    return max_diff(a, b) < 1e-4 + 1e-5 * np.abs(b).max()


def test_gpt2_matches_hf_both_ways_with_the_tied_head(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    base = _hf_logits(torch_model(path, "gpt2", "causal"))
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"),
                             peft.TrainableTokensConfig(token_indices=TOKENS, init_weights=False)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_logits(hf)
    assert max_diff(expected, base) > 1e-2

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "hf"))
    loaded.set_train(False)
    assert _close(_ms_logits(loaded), expected)

    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                          TrainableTokensConfig(token_indices=TOKENS, init_weights=False))
    ours.set_train(False)
    assert ours.peft_config["default"].target_modules == "transformer.wte"  # HF: the input embedding's name
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    ours.save_pretrained(str(tmp_path / "ms"))
    # HF peft saves the rows under the tied lm_head too; mindpeft's GPT-2 reads wte.weight, and writes both keys.
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf") == {
        "base_model.model.transformer.wte.trainable_tokens_delta": (4, 32),
        "base_model.model.lm_head.trainable_tokens_delta": (4, 32)}
    adapted = _ms_logits(ours)
    back = peft.PeftModel.from_pretrained(torch_model(path, "gpt2", "causal"), str(tmp_path / "ms")).eval()
    assert _close(_hf_logits(back), adapted)

    # only the chosen rows differ; the LM head (wte.weight) follows them
    wte = loaded.base_model.model.transformer.wte
    changed = np.nonzero(np.abs(wte.weight.asnumpy() - wte.base_layer.weight.asnumpy()).max(1))[0]
    assert changed.tolist() == TOKENS
    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert _close(_ms_logits(loaded), expected)
    loaded.unmerge_adapter()
    assert all(np.array_equal(p.asnumpy(), before[n]) for n, p in loaded.parameters_and_names())
    with loaded.disable_adapter():
        assert max_diff(_ms_logits(loaded), base) < 1e-4
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_logits(merged), expected)


class TorchTiedLM(torch.nn.Module):
    """An embedding and an LM head sharing one weight, with what HF peft reads to tie them."""

    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}

    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig(tie_word_embeddings=True)
        self.embed_tokens = torch.nn.Embedding(64, 16)
        self.proj = torch.nn.Linear(16, 16)
        self.lm_head = torch.nn.Linear(16, 64, bias=False)
        self.lm_head.weight = self.embed_tokens.weight

    def get_input_embeddings(self):
        return self.embed_tokens

    def forward(self, x):
        return self.lm_head(torch.tanh(self.proj(self.embed_tokens(x))))


class MsTiedLM(nn.Cell):
    def __init__(self, twin):
        super().__init__()
        self.config = transformers.PretrainedConfig(tie_word_embeddings=True)
        self.embed_tokens = Embedding(64, 16)
        self.proj = Linear(16, 16)
        self.lm_head = Linear(16, 64, bias=False)
        self.lm_head.weight = self.embed_tokens.weight
        state = twin.state_dict()
        for name, param in self.parameters_and_names():
            param.set_data(Tensor(state[name].numpy()))

    def get_input_embeddings(self):
        return self.embed_tokens

    def construct(self, x):
        return self.lm_head(ops.tanh(self.proj(self.embed_tokens(x))))


def test_lm_head_sharing_the_embedding_weight_is_tied_as_in_hf(tmp_path):
    torch.manual_seed(3)
    twin = TorchTiedLM().eval()
    ids = rand_ids((2, 6), high=64)
    hf = peft.get_peft_model(copy.deepcopy(twin), peft.TrainableTokensConfig(token_indices=[3, 7], init_weights=False))
    hf.save_pretrained(str(tmp_path / "hf"))
    with torch.no_grad():
        expected = hf(torch_ids(ids)).numpy()
    ours = get_peft_model(MsTiedLM(twin), TrainableTokensConfig(token_indices=[3, 7], init_weights=False))
    assert isinstance(ours.base_model.model.lm_head, TrainableTokensLayer)
    assert ours.base_model.model.lm_head.tied_adapter is ours.base_model.model.embed_tokens
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    ours.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    back = peft.PeftModel.from_pretrained(copy.deepcopy(twin), str(tmp_path / "ms")).eval()
    with torch.no_grad():
        assert _close(back(torch_ids(ids)).numpy(), ours(ms_ids(ids)).asnumpy())
    loaded = PeftModel.from_pretrained(MsTiedLM(twin), str(tmp_path / "hf"))
    assert _close(loaded(ms_ids(ids)).asnumpy(), expected)
    assert [(s.name, s.module_type, s.requires_grad) for s in get_layer_status(ours)] == [
        (s.name, s.module_type, s.requires_grad) for s in peft.get_layer_status(hf)]


def test_t5_shared_embedding_is_adapted_everywhere(tiny_model_dir, tmp_path):
    path = tiny_model_dir("t5", "seq2seq")
    inputs = {"input_ids": IDS, "decoder_input_ids": IDS[:, :4]}
    hf = peft.get_peft_model(torch_model(path, "t5", "seq2seq"),
                             peft.TrainableTokensConfig(token_indices=TOKENS, init_weights=False)).eval()
    hf.save_pretrained(str(tmp_path / "hf"))
    with torch.no_grad():
        expected = hf(**{k: torch_ids(v) for k, v in inputs.items()}).logits.numpy()
    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(path), str(tmp_path / "hf"))
    loaded.set_train(False)
    model = loaded.base_model.model
    assert isinstance(model.shared, TrainableTokensLayer)
    assert model.encoder.embed_tokens is model.shared is model.decoder.embed_tokens  # one layer, three places
    assert _close(loaded(**{k: ms_ids(v) for k, v in inputs.items()})["logits"].asnumpy(), expected)
    loaded.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")  # shared, encoder/decoder.embed_tokens, lm_head
    unloaded = loaded.unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, _, _, c in named_references(unloaded))


def test_lora_trainable_token_indices_match_hf_both_ways(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    kwargs = dict(target_modules=["c_attn"], trainable_token_indices=TOKENS, init_lora_weights=False)
    torch.manual_seed(1)
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"), peft.LoraConfig(**kwargs)).eval()
    with torch.no_grad():  # train-like change of the token rows (they start equal to the embedding)
        delta = hf.base_model.model.transformer.wte.token_adapter.trainable_tokens_delta["default"]
        delta.add_(torch.randn_like(delta))
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_logits(hf)

    config = LoraTokensConfig.from_pretrained(str(tmp_path / "hf")) if LoraTokensConfig is LoraConfig else \
        LoraTokensConfig(**kwargs)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "hf"),
                                       config=config)
    loaded.set_train(False)
    assert isinstance(loaded.base_model.model.transformer.wte, TrainableTokensWrapper)
    assert _close(_ms_logits(loaded), expected)
    with loaded.disable_adapter():
        assert _close(_ms_logits(loaded), _hf_logits(torch_model(path, "gpt2", "causal")))

    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraTokensConfig(**kwargs))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    ours.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    assert "base_model.model.transformer.wte.token_adapter.trainable_tokens_delta" in _shapes(tmp_path / "ms")
    back = peft.PeftModel.from_pretrained(torch_model(path, "gpt2", "causal"), str(tmp_path / "ms")).eval()
    assert _close(_hf_logits(back), _ms_logits(ours))
    # HF's GPT-2 has an lm_head module (a tied token layer there); mindpeft's reads wte.weight instead
    assert [(s.name, s.module_type) for s in get_layer_status(ours)] == [
        (s.name, s.module_type) for s in peft.get_layer_status(hf) if "lm_head" not in s.name]

    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, (BaseTunerLayer, TrainableTokensWrapper)) for _, c in merged.cells_and_names())
    assert _close(_ms_logits(merged), expected)


def test_lora_trainable_tokens_on_a_tied_lm_head(tmp_path):
    torch.manual_seed(4)
    twin = TorchTiedLM().eval()
    ids = rand_ids((2, 6), high=64)
    kwargs = dict(target_modules=["proj"], trainable_token_indices=[3, 7])
    hf = peft.get_peft_model(copy.deepcopy(twin), peft.LoraConfig(**kwargs))
    with torch.no_grad():
        hf.base_model.model.embed_tokens.token_adapter.trainable_tokens_delta["default"].mul_(-2.0)
        expected = hf(torch_ids(ids)).numpy()
    hf.save_pretrained(str(tmp_path / "hf"))
    loaded = PeftModel.from_pretrained(MsTiedLM(twin), str(tmp_path / "hf"), config=LoraTokensConfig(**kwargs))
    head = loaded.base_model.model.lm_head
    assert isinstance(head, TrainableTokensWrapper) and head.token_adapter.tied_adapter is not None
    assert _close(loaded(ms_ids(ids)).asnumpy(), expected)
    loaded.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")  # the tied head's rows are not saved again


def test_jit_training_step_equals_pynative_and_trains_only_the_rows(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    batch = {"input_ids": ms_ids(IDS), "labels": ms_ids(IDS)}
    runs = []
    for jit in (True, False):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), TrainableTokensConfig(token_indices=TOKENS))
        model.set_train(False)
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        assert [p.name for p in model.trainable_params()] == [
            "base_model.model.transformer.wte.trainable_tokens_delta.default"]
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), jit=jit)
        losses = [float(step(**batch)) for _ in range(3)]
        assert losses[-1] < losses[0]
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, model.trainable_params()[0].asnumpy()))
    (jit_losses, jit_rows), (py_losses, py_rows) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert np.abs(jit_rows - py_rows).max() < 1e-5


def test_several_adapters(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           TrainableTokensConfig(token_indices=[5, 9], init_weights=False))
    model.add_adapter("other", TrainableTokensConfig(token_indices=[11, 40], init_weights=False))
    model.add_adapter("clash", TrainableTokensConfig(token_indices=[9, 12], init_weights=False))
    layer = model.base_model.model.transformer.wte
    with pytest.raises(ValueError, match="Token indices of adapter clash are already defined"):
        model.base_model.set_adapter(["default", "clash"])
    model.base_model.set_adapter(["default", "other"])
    both = layer.weight.asnumpy()
    rows = {n: layer.trainable_tokens_delta[n].asnumpy() for n in ("default", "other")}
    assert np.array_equal(both[[5, 9]], rows["default"]) and np.array_equal(both[[11, 40]], rows["other"])
    model.delete_adapter("other")
    assert layer.adapter_names() == ["default", "clash"] and "other" not in layer.token_indices


def test_bad_configs():
    for bad in ([], [1, 1], [-1], [1.5], "3"):
        with pytest.raises(ValueError, match="token_indices must be a non-empty list"):
            TrainableTokensConfig(token_indices=bad)
    with pytest.raises(ValueError, match=r"token_indices \[96\] are out of range for a weight with 64 rows"):
        get_peft_model(MsTiedLM(TorchTiedLM()), TrainableTokensConfig(token_indices=[2, 96]))
    with pytest.raises(ValueError, match="TrainableTokensLayer wraps an unknown layer type"):
        get_peft_model(nn.SequentialCell([nn.LayerNorm((4,))]), TrainableTokensConfig(token_indices=[2],
                                                                                       target_modules=["0"]))
    with pytest.raises(ValueError, match=r"Target modules \['nope'\] not found"):
        get_peft_model(MsTiedLM(TorchTiedLM()), LoraTokensConfig(target_modules=["proj"],
                                                                 trainable_token_indices={"nope": [1]}))
    with pytest.raises(ValueError, match="already marked to be trained fully"):
        get_peft_model(MsTiedLM(TorchTiedLM()), LoraTokensConfig(
            target_modules=["proj"], modules_to_save=["embed_tokens"], trainable_token_indices={"embed_tokens": [1]}))
