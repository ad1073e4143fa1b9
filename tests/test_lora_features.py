"""Adapter management: merge, unload, several adapters, weighted combinations, any Cell model."""
import numpy as np
import peft
import pytest
import torch
import mindspore as ms
from mindspore import Tensor, nn

from mindpeft import LoraConfig, PeftModel, get_peft_model
from mindpeft.models import GPT2LMHeadModel, LlamaForCausalLM
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model


def _lora(path, cls=GPT2LMHeadModel, **kwargs):
    kwargs.setdefault("init_lora_weights", False)
    return get_peft_model(cls.from_pretrained(path), LoraConfig(task_type="CAUSAL_LM", r=4, **kwargs))


def _logits(model, ids):
    return model(ms_ids(ids))["logits"].asnumpy()


def _base_weights(model):
    return {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if "lora_" not in n}


@pytest.mark.parametrize("family,cls,target_modules", [
    ("gpt2", GPT2LMHeadModel, ["c_attn", "c_proj", "c_fc"]),
    ("llama", LlamaForCausalLM, ["embed_tokens", "q_proj", "down_proj"]),  # untied embedding
])
def test_merge_unmerge_restores_base_and_merged_output_equals_unmerged(tiny_model_dir, family, cls, target_modules):
    model = _lora(tiny_model_dir(family, "causal"), cls, target_modules=target_modules)
    ids = rand_ids((2, 7))
    unmerged = _logits(model, ids)
    before = _base_weights(model)
    model.merge_adapter()
    assert max_diff(_logits(model, ids), unmerged) < 1e-5
    changed = [n for n, w in _base_weights(model).items() if np.abs(w - before[n]).max() > 0]
    assert changed and all("base_layer.weight" in n for n in changed)
    model.unmerge_adapter()
    assert max(np.abs(w - before[n]).max() for n, w in _base_weights(model).items()) < 1e-6
    assert max_diff(_logits(model, ids), unmerged) < 1e-5


def test_merge_and_unload_returns_plain_model_with_adapter_output(tiny_model_dir):
    model = _lora(tiny_model_dir("llama", "causal"), LlamaForCausalLM, target_modules=["q_proj", "v_proj"])
    ids = rand_ids((2, 6))
    expected = _logits(model, ids)
    merged = model.merge_and_unload()
    assert isinstance(merged, LlamaForCausalLM)
    names = [n for n, _ in merged.parameters_and_names()]
    assert not any("lora_" in n or "base_layer" in n for n in names)
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert max_diff(_logits(merged, ids), expected) < 1e-5


def test_unload_and_disable_adapter_give_base_outputs(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    ids = rand_ids((2, 6))
    base = _logits(GPT2LMHeadModel.from_pretrained(path), ids)
    model = _lora(path)
    adapted = _logits(model, ids)
    assert max_diff(adapted, base) > 1e-3
    with model.disable_adapter():
        assert max_diff(_logits(model, ids), base) < 1e-6
    assert max_diff(_logits(model, ids), adapted) < 1e-6
    model.merge_adapter()
    with model.disable_adapter():  # disabling unmerges first
        assert max_diff(_logits(model, ids), base) < 1e-5
    assert max_diff(_logits(model.unload(), ids), base) < 1e-5


def test_several_adapters_switch_delete_and_save_to_subfolders(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    ids = rand_ids((2, 6))
    model = _lora(path)
    model.add_adapter("other", LoraConfig(task_type="CAUSAL_LM", r=2, init_lora_weights=False,
                                          target_modules=["c_fc"]))
    assert model.active_adapter == "default"
    trainable = [p.name for p in model.trainable_params()]
    assert trainable and all(".default." in n for n in trainable)
    default_out = _logits(model, ids)
    model.set_adapter("other")
    assert all(".other." in p.name for p in model.trainable_params())
    other_out = _logits(model, ids)
    assert max_diff(default_out, other_out) > 1e-3
    model.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "other" / "adapter_config.json").exists()

    fresh = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(path), str(tmp_path))
    fresh.load_adapter(str(tmp_path / "other"), adapter_name="other")
    assert max_diff(_logits(fresh, ids), default_out) < 1e-6
    fresh.set_adapter("other")
    assert max_diff(_logits(fresh, ids), other_out) < 1e-6

    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert not any(".other" in n for n, _ in model.parameters_and_names())
    assert max_diff(_logits(model, ids), default_out) < 1e-6


@pytest.mark.parametrize("combination_type", ["linear", "cat", "svd"])
def test_add_weighted_adapter_matches_hf_peft(tiny_model_dir, tmp_path, combination_type):
    path = tiny_model_dir("gpt2", "causal")
    ids = rand_ids((2, 6))
    ours = _lora(path, target_modules=["c_attn", "wte"])
    ours.add_adapter("b", LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=16, init_lora_weights=False,
                                     target_modules=["c_attn", "wte"]))
    ours.save_pretrained(str(tmp_path))
    hf = peft.PeftModel.from_pretrained(torch_model(path, "gpt2", "causal"), str(tmp_path))
    hf.load_adapter(str(tmp_path / "b"), adapter_name="b")
    for lib_model in (ours, hf):
        lib_model.add_weighted_adapter(["default", "b"], [0.7, -0.4], "mix", combination_type=combination_type)
        lib_model.set_adapter("mix")
    with torch.no_grad():
        expected = hf(torch_ids(ids)).logits
    assert max_diff(_logits(ours, ids), expected) < 1e-4
    if combination_type == "cat":  # cat is exact: the weighted sum of the two adapters' deltas
        layer = ours.base_model.model.transformer.h[0].attn.c_attn
        want = 0.7 * layer.delta_weight("default") - 0.4 * layer.delta_weight("b")
        assert np.abs(layer.delta_weight("mix") - want).max() < 1e-5


class TinyNet(nn.Cell):
    """A model that is no transformer: plain mindspore.nn layers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.hidden = nn.Dense(8, 8)
        self.out = nn.Dense(8, 3)

    def construct(self, x):
        return self.out(ops_relu(self.hidden(self.embed(x))))


def ops_relu(x):
    return ms.ops.relu(x)


def test_lora_wraps_plain_mindspore_cells_and_trains(tmp_path):
    net = TinyNet()
    x = Tensor(np.random.randint(0, 20, (4, 5)), ms.int32)
    base_out = net(x).asnumpy()
    model = get_peft_model(net, LoraConfig(r=2, target_modules=["hidden", "embed"], modules_to_save=["out"]))
    assert max_diff(model(x), base_out) == 0.0
    names = {p.name for p in model.trainable_params()}
    assert names == {"base_model.model.embed.lora_embedding_A.default", "base_model.model.embed.lora_embedding_B.default",
                     "base_model.model.hidden.lora_A.default.weight", "base_model.model.hidden.lora_B.default.weight",
                     "base_model.model.out.modules_to_save.default.weight",
                     "base_model.model.out.modules_to_save.default.bias"}
    params = model.trainable_params()
    grad_fn = ms.value_and_grad(lambda x: model(x).sum(), None, params)
    _, grads = grad_fn(x)
    grads = dict(zip([p.name for p in params], grads))
    assert np.abs(grads["base_model.model.hidden.lora_B.default.weight"].asnumpy()).max() > 0
    model.save_pretrained(str(tmp_path))
    from safetensors.numpy import load_file
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert keys == {"base_model.model.embed.lora_embedding_A", "base_model.model.embed.lora_embedding_B",
                    "base_model.model.hidden.lora_A.weight", "base_model.model.hidden.lora_B.weight",
                    "base_model.model.out.weight", "base_model.model.out.bias"}


def test_merged_llama_generation_equals_adapter_generation(tiny_model_dir):
    model = _lora(tiny_model_dir("llama", "causal"), LlamaForCausalLM)
    ids = ms_ids(rand_ids((2, 5)))
    expected = model.generate(ids, max_new_tokens=4, eos_token_id=-1).asnumpy()
    merged = model.merge_and_unload()
    np.testing.assert_array_equal(merged.generate(ids, max_new_tokens=4, eos_token_id=-1).asnumpy(), expected)


def test_auto_peft_model_rebuilds_base_from_config(tiny_model_dir, tmp_path):
    from mindpeft import AutoPeftModelForCausalLM
    path = tiny_model_dir("gpt2", "causal")
    model = _lora(path)
    model.save_pretrained(str(tmp_path))
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path))
    ids = rand_ids((1, 5))
    assert max_diff(_logits(loaded, ids), _logits(model, ids)) < 1e-6
    assert not loaded.trainable_params()  # loaded for inference unless is_trainable=True
    trainable = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path), is_trainable=True)
    assert len(trainable.trainable_params()) == 4
