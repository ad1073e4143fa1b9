"""transformers' PEFT integration on mindpeft.models (add_adapter, load_adapter, set_adapter, enable/disable,
active_adapters, get_adapter_state_dict, delete_adapter, save_pretrained) against transformers + HF peft on the
same tiny models; adapter folders in AutoModelFor*.from_pretrained; ViT adapters with transformers 4 module names."""
import json
import os
import re
import shutil

import numpy as np
import peft
import pytest
import torch
import transformers
from mindspore import Tensor
from mindspore.experimental import optim
from safetensors.numpy import load_file, save_file

from mindpeft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model, set_peft_model_state_dict
from mindpeft.models import (AutoModelForCausalLM, AutoModelForImageClassification, GPT2LMHeadModel,
                             SegformerForSemanticSegmentation, ViTForImageClassification)
from mindpeft.training import TrainStep
from conftest import adapter_shapes, max_diff, ms_logits, rand_ids, torch_logits, torch_model

IDS = {"input_ids": rand_ids((2, 7))}
PIXELS = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
LORA = {"gpt2": {"target_modules": ["c_attn"]},
        "vit": {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["classifier"]}}
# transformers 4's ViT names: checkpoint keys, and module names in adapters written on transformers 4
CLASSIC_VIT = [("vit.layers.", "vit.encoder.layer."), ("attention.q_proj", "attention.attention.query"),
               ("attention.v_proj", "attention.attention.value")]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                    image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    path = str(tmp_path_factory.mktemp("vit"))
    model.save_pretrained(path)
    return path


def _models(family, tiny_model_dir, vit_dir):
    """(ours, transformers') for ``family``, and a ``run(model)`` giving either one's logits."""
    if family == "gpt2":
        path = tiny_model_dir("gpt2", "causal")
        return (GPT2LMHeadModel.from_pretrained(path), torch_model(path, "gpt2", "causal"),
                lambda m: ms_logits(m, IDS) if hasattr(m, "construct") else torch_logits(m, IDS))
    return (ViTForImageClassification.from_pretrained(vit_dir),
            transformers.ViTForImageClassification.from_pretrained(vit_dir).eval(), _vit_logits)


def _vit_logits(model):
    if hasattr(model, "construct"):
        return model(Tensor(PIXELS))["logits"].asnumpy()
    with torch.no_grad():
        return model(torch.tensor(PIXELS)).logits.numpy()


def _numpy(state):
    return {k: v.detach().numpy() for k, v in state.items()}


def _add_twin_adapters(ours, theirs, name, r, **kwargs):
    """The same adapter ``name`` added to both models, with transformers' (perturbed) values copied into ours."""
    theirs.add_adapter(peft.LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=False, **kwargs), adapter_name=name)
    with torch.no_grad():  # trained-looking modules_to_save copies
        for key, param in theirs.named_parameters():
            if f".modules_to_save.{name}." in key:
                param.mul_(1.5).add_(0.1)
    ours.add_adapter(LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=False, **kwargs), adapter_name=name)
    state = _numpy(theirs.get_adapter_state_dict(name))
    assert {k: v.shape for k, v in ours.get_adapter_state_dict(name).items()} == {k: v.shape for k, v in state.items()}
    assert set_peft_model_state_dict(ours, state, name) == []


@pytest.mark.parametrize("family", ["gpt2", "vit"])
def test_adapter_management_matches_transformers(tiny_model_dir, vit_dir, family):
    ours, theirs, run = _models(family, tiny_model_dir, vit_dir)
    base = run(theirs)
    model_object = ours
    for name, r in (("a", 2), ("b", 4)):
        _add_twin_adapters(ours, theirs, name, r, **LORA[family])
        assert ours.active_adapters() == theirs.active_adapters() == [name]
        assert max_diff(run(ours), run(theirs)) < 1e-4
    assert ours is model_object and set(ours.peft_config) == set(theirs.peft_config) == {"a", "b"}
    # trainable: the active adapter's LoRA weights, as in transformers, and its modules_to_save copy only
    # (transformers 5.23 + HF peft 0.21 leave the inactive adapter's copy trainable too)
    assert sum(p.size for p in ours.trainable_params() if "lora_" in p.name) == sum(
        p.numel() for n, p in theirs.named_parameters() if p.requires_grad and "lora_" in n)
    assert all(".lora_" in p.name and p.name.endswith(".b.weight") or ".modules_to_save.b." in p.name
               for p in ours.trainable_params())
    settings = [["a"], ["b"]] + ([["a", "b"]] if family == "gpt2" else [])
    for names in settings:
        ours.set_adapter(names)
        theirs.set_adapter(names)
        assert ours.active_adapters() == theirs.active_adapters() == names
        assert max_diff(run(ours), run(theirs)) < 1e-4
    if family == "vit":  # one modules_to_save copy at a time, in both (transformers has set the LoRA layers by then)
        for model in (ours, theirs):
            with pytest.raises(ValueError, match="Attempted to set multiple"):
                model.set_adapter(["a", "b"])
            model.set_adapter("b")
    ours.disable_adapters()
    theirs.disable_adapters()
    assert max_diff(run(ours), base) < 1e-4 and max_diff(run(theirs), base) < 1e-6
    ours.enable_adapters()
    theirs.enable_adapters()
    if family == "vit":  # transformers 5.23 turns only the LoRA layers back on; mindpeft also the modules_to_save
        assert theirs.classifier.disable_adapters
        theirs.classifier.enable_adapters(True)
    assert max_diff(run(ours), run(theirs)) < 1e-4 and max_diff(run(ours), base) > 1e-3
    for name in ("a", "b"):
        state, expected = ours.get_adapter_state_dict(name), _numpy(theirs.get_adapter_state_dict(name))
        assert set(state) == set(expected) and all(np.array_equal(state[k], expected[k]) for k in state)
    ours.delete_adapter("b")
    theirs.delete_adapter("b")
    assert ours.active_adapters() == theirs.active_adapters() and list(ours.peft_config) == ["a"]
    ours.delete_adapter(["a"])
    assert not hasattr(ours, "peft_config") and not ours._hf_peft_config_loaded
    with pytest.raises(ValueError, match="No adapter loaded. Please load an adapter first."):
        ours.active_adapters()
    assert max_diff(run(ours), base) < 1e-4


def test_save_pretrained_writes_the_adapter_as_transformers_does(tiny_model_dir, vit_dir, tmp_path):
    ours, theirs, run = _models("vit", tiny_model_dir, vit_dir)
    _add_twin_adapters(ours, theirs, "default", 4, **LORA["vit"])
    theirs.save_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(os.listdir(tmp_path / "theirs")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert adapter_shapes(tmp_path / "ours") == adapter_shapes(tmp_path / "theirs")
    saved = json.load(open(tmp_path / "ours" / "adapter_config.json"))
    assert saved["base_model_name_or_path"] == os.path.abspath(vit_dir)
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"] and saved["modules_to_save"] == ["classifier"]
    reference = peft.PeftModel.from_pretrained(
        transformers.ViTForImageClassification.from_pretrained(vit_dir).eval(), str(tmp_path / "ours"))
    assert max_diff(run(ours), run(reference)) < 1e-4
    ours.save_pretrained(tmp_path / "plain", save_peft_format=False)
    assert all(not k.startswith("base_model.") for k in adapter_shapes(tmp_path / "plain"))
    fresh = ViTForImageClassification.from_pretrained(vit_dir)
    fresh.load_adapter(str(tmp_path / "theirs"))  # transformers' files load back
    assert max_diff(run(fresh), run(theirs)) < 1e-4


def test_hf_peft_adapter_loads_with_load_adapter_and_auto_classes(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    torch.manual_seed(1)
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"),
                             peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False,
                                             target_modules=["c_attn", "c_fc"]))
    hf.save_pretrained(tmp_path)
    expected = torch_logits(hf.eval(), IDS)
    through_peft_model = ms_logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path),
                                                             str(tmp_path)), IDS)
    assert max_diff(through_peft_model, expected) < 1e-4

    model = GPT2LMHeadModel.from_pretrained(path)
    model.set_train(True)
    model.load_adapter(str(tmp_path), adapter_name="loaded")
    assert model.active_adapters() == ["loaded"] and not model.training and not model.trainable_params()
    assert max_diff(ms_logits(model, IDS), expected) < 1e-4

    auto = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert isinstance(auto, GPT2LMHeadModel) and auto.active_adapters() == ["default"]
    assert max_diff(ms_logits(auto, IDS), through_peft_model) == 0.0
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert max_diff(ms_logits(auto, IDS), torch_logits(reference, IDS)) < 1e-4
    generated = auto.generate(Tensor(IDS["input_ids"]), max_new_tokens=5, do_sample=False).asnumpy()
    expected_ids = reference.generate(torch.tensor(IDS["input_ids"]), max_new_tokens=5, do_sample=False,
                                      pad_token_id=0).numpy()
    np.testing.assert_array_equal(generated, expected_ids)

    trainable = GPT2LMHeadModel.from_pretrained(path)
    trainable.load_adapter(str(tmp_path), is_trainable=True)
    hf_trainable = torch_model(path, "gpt2", "causal")
    hf_trainable.load_adapter(str(tmp_path), is_trainable=True)
    assert sum(p.size for p in trainable.trainable_params()) == sum(
        p.numel() for p in hf_trainable.parameters() if p.requires_grad) > 0


def _classic_vit_adapter(source, target, classic_targets):
    """``source`` (an adapter HF peft saved on transformers 5) rewritten with transformers 4's ViT names."""
    state = load_file(os.path.join(source, "adapter_model.safetensors"))
    for new, old in CLASSIC_VIT:
        state = {k.replace(new, old): v for k, v in state.items()}
    os.makedirs(target)
    save_file(state, os.path.join(target, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.load(open(os.path.join(source, "adapter_config.json")))
    if classic_targets:
        config["target_modules"] = ["query", "value"]
    json.dump(config, open(os.path.join(target, "adapter_config.json"), "w"))
    assert any(".attention.attention.query.lora_A" in k for k in state)


@pytest.mark.parametrize("classic_targets", [True, False], ids=["classic_targets", "new_targets"])
def test_vit_adapter_with_transformers_4_names_loads_as_transformers_5_loads_it(vit_dir, tmp_path,
                                                                                 classic_targets):
    torch.manual_seed(1)
    hf = peft.get_peft_model(transformers.ViTForImageClassification.from_pretrained(vit_dir).eval(),
                             peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **LORA["vit"]))
    hf.save_pretrained(tmp_path / "new")
    expected = _vit_logits(hf)
    old = str(tmp_path / "old")
    _classic_vit_adapter(str(tmp_path / "new"), old, classic_targets)
    if not classic_targets:  # transformers 5 renames such keys in load_adapter (HF peft on 5.23 refuses old targets)
        reference = transformers.ViTForImageClassification.from_pretrained(vit_dir).eval()
        reference.load_adapter(old)
        assert max_diff(_vit_logits(reference), expected) < 1e-6
    loaded = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(vit_dir), old)
    assert max_diff(_vit_logits(loaded), expected) < 1e-4
    assert loaded.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    model = ViTForImageClassification.from_pretrained(vit_dir)
    model.load_adapter(old)
    assert max_diff(_vit_logits(model), expected) < 1e-4
    auto = AutoModelForImageClassification.from_pretrained(old)
    assert max_diff(_vit_logits(auto), expected) < 1e-4


def test_classic_target_modules_target_what_hf_peft_targets_on_transformers_5(vit_dir, tmp_path):
    """The seed's image-classification guide: LoraConfig(target_modules=["query", "value"]) on a ViT."""
    hf = peft.get_peft_model(transformers.ViTForImageClassification.from_pretrained(vit_dir).eval(),
                             peft.LoraConfig(r=4, **LORA["vit"]))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="not found in the base model"):  # HF peft on transformers 5 refuses them
        peft.get_peft_model(transformers.ViTForImageClassification.from_pretrained(vit_dir),
                            peft.LoraConfig(r=4, target_modules=["query", "value"]))
    config = LoraConfig(r=4, init_lora_weights=False, target_modules=["query", "value"], modules_to_save=["classifier"])
    ours = get_peft_model(ViTForImageClassification.from_pretrained(vit_dir), config)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert config.target_modules == {"q_proj", "v_proj"}
    ours.save_pretrained(str(tmp_path / "ours"))
    assert adapter_shapes(tmp_path / "ours") == adapter_shapes(tmp_path / "hf")
    reference = peft.PeftModel.from_pretrained(transformers.ViTForImageClassification.from_pretrained(vit_dir).eval(),
                                               str(tmp_path / "ours"))
    assert max_diff(_vit_logits(ours), _vit_logits(reference)) < 1e-4

    integrated = ViTForImageClassification.from_pretrained(vit_dir)
    integrated.add_adapter(LoraConfig(r=4, target_modules=["attention.attention.query", "value"]))
    hf_integrated = transformers.ViTForImageClassification.from_pretrained(vit_dir)
    hf_integrated.add_adapter(peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert set(integrated.get_adapter_state_dict()) == set(hf_integrated.get_adapter_state_dict())
    assert integrated.peft_config["default"].target_modules == {"q_proj", "v_proj"}


def test_segformer_adapter_with_transformers_4_names(tmp_path):
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 2], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                          mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=4)
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "base")
    base = str(tmp_path / "base")
    torch.manual_seed(1)
    hf = peft.get_peft_model(transformers.SegformerForSemanticSegmentation.from_pretrained(base).eval(),
                             peft.LoraConfig(r=2, init_lora_weights=False, target_modules=["q_proj", "v_proj"]))
    pixels = np.random.default_rng(1).standard_normal((2, 3, 32, 40)).astype(np.float32)
    with torch.no_grad():
        expected = hf(torch.tensor(pixels)).logits.numpy()
    hf.save_pretrained(tmp_path / "new")
    state = load_file(str(tmp_path / "new" / "adapter_model.safetensors"))
    old = {re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.block.\1.\2.", k).replace(
        "attention.q_proj", "attention.self.query").replace("attention.v_proj", "attention.self.value"): v
        for k, v in state.items()}
    assert any(".encoder.block.1.1.attention.self.value.lora_B" in k for k in old)
    os.makedirs(tmp_path / "old")
    save_file(old, str(tmp_path / "old" / "adapter_model.safetensors"))
    json.dump({**json.load(open(tmp_path / "new" / "adapter_config.json")), "target_modules": ["query", "value"]},
              open(tmp_path / "old" / "adapter_config.json", "w"))
    ours = PeftModel.from_pretrained(SegformerForSemanticSegmentation.from_pretrained(base), str(tmp_path / "old"))
    assert max_diff(ours(Tensor(pixels))["logits"], expected) < 1e-4
    fresh = get_peft_model(SegformerForSemanticSegmentation.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["query", "value"]))
    assert fresh.get_nb_trainable_parameters()[0] == hf.get_nb_trainable_parameters()[0]
    integrated = SegformerForSemanticSegmentation.from_pretrained(base)
    integrated.add_adapter(LoraConfig(r=2, target_modules=["query", "value"]))
    assert {k: v.shape for k, v in integrated.get_adapter_state_dict().items()} == {
        k.removeprefix("base_model.model."): v.shape for k, v in state.items()}


def test_clear_errors_and_refused_loads_leave_the_model_unchanged(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    model = GPT2LMHeadModel.from_pretrained(path)
    base = ms_logits(model, IDS)
    for call in (model.active_adapters, model.disable_adapters, lambda: model.set_adapter("a")):
        with pytest.raises(ValueError, match="No adapter loaded. Please load an adapter first."):
            call()
    with pytest.raises(TypeError, match="adapter_config should be an instance of PeftConfig"):
        model.add_adapter({"r": 4})
    with pytest.raises(ValueError, match="does not support prompt learning"):
        model.add_adapter(PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    with pytest.raises(ValueError, match="Target modules"):
        model.add_adapter(LoraConfig(target_modules=["missing"]))
    assert not model._hf_peft_config_loaded and max_diff(ms_logits(model, IDS), base) == 0.0

    model.add_adapter(LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    with pytest.raises(ValueError, match="Adapter with name default already exists"):
        model.add_adapter(LoraConfig(r=2, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match=r"Adapter with name other not found. .*\['default'\]"):
        model.set_adapter("other")
    with pytest.raises(ValueError, match="Following adapter\\(s\\) could not be found: other"):
        model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="are not present and cannot be deleted: other"):
        model.delete_adapter("other")
    model.add_adapter(LoraConfig(r=2, target_modules=["c_fc"]), adapter_name="second")
    model.set_adapter(["default", "second"])
    with pytest.raises(ValueError, match="Multiple active adapters detected"):
        model.save_pretrained(str(tmp_path / "two"))
    model.set_adapter("default")
    with_adapter = ms_logits(model, IDS)

    model.save_pretrained(str(tmp_path / "default"))
    weights = load_file(str(tmp_path / "default" / "adapter_model.safetensors"))
    bad = str(tmp_path / "bad")
    os.makedirs(bad)
    save_file({k: v[:1] for k, v in weights.items()}, os.path.join(bad, "adapter_model.safetensors"))
    shutil.copy(tmp_path / "default" / "adapter_config.json", bad)
    with pytest.raises(ValueError, match="Shape mismatch"):
        model.load_adapter(bad, adapter_name="third")
    assert list(model.peft_config) == ["default", "second"] and max_diff(ms_logits(model, IDS), with_adapter) == 0.0
    fresh = GPT2LMHeadModel.from_pretrained(path)
    with pytest.raises(ValueError, match="Shape mismatch"):
        fresh.load_adapter(bad)
    assert not hasattr(fresh, "peft_config") and max_diff(ms_logits(fresh, IDS), base) == 0.0
    with pytest.raises(TypeError, match="unexpected keyword arguments: \\['cache_dirr'\\]"):
        fresh.load_adapter(bad, cache_dirr="x")


def test_hotswap_and_jit_training_of_an_integrated_adapter(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    folders = []
    for seed, alpha in ((1, 4), (2, 6)):
        torch.manual_seed(seed)
        hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"),
                                 peft.LoraConfig(r=2, lora_alpha=alpha, init_lora_weights=False,
                                                 target_modules=["c_attn"]))
        hf.save_pretrained(tmp_path / str(seed))
        folders.append((str(tmp_path / str(seed)), torch_logits(hf.eval(), IDS)))
    model = GPT2LMHeadModel.from_pretrained(path)
    model.enable_peft_hotswap(target_rank=2)
    model.load_adapter(folders[0][0])
    assert max_diff(ms_logits(model, IDS), folders[0][1]) < 1e-4
    params = {n: id(p) for n, p in model.parameters_and_names()}
    model.load_adapter(folders[1][0])  # same name: swapped in place
    assert {n: id(p) for n, p in model.parameters_and_names()} == params
    assert max_diff(ms_logits(model, IDS), folders[1][1]) < 1e-4

    runs = []
    labels = Tensor(IDS["input_ids"])
    for jit in (True, False):
        model = GPT2LMHeadModel.from_pretrained(path)
        model.add_adapter(LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
        set_peft_model_state_dict(model, load_file(os.path.join(folders[0][0], "adapter_model.safetensors")))
        model.add_adapter(LoraConfig(r=2, target_modules=["c_attn"]), adapter_name="other")
        model.set_adapter("default")
        model.set_train(False)
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), jit=jit)
        losses = [float(step(input_ids=labels, labels=labels)) for _ in range(3)]
        version = model.state_version
        model.disable_adapters()  # the compiled step follows: adapters off, nothing trainable changes the loss
        assert model.state_version != version
        off = float(step(input_ids=labels, labels=labels))
        runs.append((losses, off, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_off, jit_params), (py_losses, py_off, py_params) = runs
    assert jit_losses[-1] < jit_losses[0] and np.allclose(jit_losses, py_losses, atol=1e-5)
    assert abs(jit_off - py_off) < 1e-5 and max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5
