"""PeftMixedModel: LoRA, LoHa, LoKr and OFT adapters on one model against HF peft's PeftMixedModel: stacked layers,
numbers both ways, one folder per adapter, merging, jit training, errors."""
import copy
import os

import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor
from mindspore.experimental import optim

from mindpeft import (IA3Config, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig, PeftMixedModel, PromptTuningConfig,
                      get_peft_model)
from mindpeft.models import AutoModelForCausalLM
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import MsMLP, adapter_shapes as _shapes, max_diff, ms_logits, rand_ids, torch_logits, torch_model
from test_lycoris_conv import X as CONV_X, MsConvNet, TorchConvNet

# name: (HF config class, mindpeft config class, arguments); "oft" and "lokr" each target one layer, so lin0 carries
# three methods and lin1 three others.
ADAPTERS = {
    "lora": (peft.LoraConfig, LoraConfig, dict(target_modules=["lin0", "lin1"], r=4, lora_alpha=8,
                                               init_lora_weights=False)),
    "loha": (peft.LoHaConfig, LoHaConfig, dict(target_modules=["lin0", "lin1"], r=2, alpha=4, init_weights=False)),
    "lokr": (peft.LoKrConfig, LoKrConfig, dict(target_modules=["lin1"], r=2, alpha=4, init_weights=False)),
    "oft": (peft.OFTConfig, OFTConfig, dict(target_modules=["lin0"], r=0, oft_block_size=4, init_weights=False)),
}
X = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)


def _hf(name):
    return ADAPTERS[name][0](**copy.deepcopy(ADAPTERS[name][2]))


def _ours(name):
    return ADAPTERS[name][1](**copy.deepcopy(ADAPTERS[name][2]))


def _hf_out(model, x=X):
    with torch.no_grad():
        return model(torch.tensor(x)).numpy()


def _ms_out(model, x=X):
    return model(Tensor(x)).asnumpy()


def _close(actual, expected):
    return max_diff(actual, expected) < 1e-4 + 1e-5 * np.abs(expected).max()


def _load_all(cls, base, folders, names):
    """A mixed model (HF's or ours) with the adapters ``names`` loaded from ``folders`` in that order."""
    model = cls.from_pretrained(base, folders[names[0]], names[0])
    for name in names[1:]:
        model.load_adapter(folders[name], name)
    model.set_adapter(names)
    return model


def _chain(layer):
    chain = [layer]
    while isinstance(chain[-1], BaseTunerLayer):
        chain.append(chain[-1].base_layer)
    return [type(c).__module__.split(".")[-2] if isinstance(c, BaseTunerLayer) else type(c).__name__ for c in chain]


def test_adapters_made_by_hf_peft_stack_and_run_as_in_hf_mixed_model(torch_mlp, tmp_path):
    order = ["lora", "loha", "lokr", "oft"]
    folders = {}
    for seed, name in enumerate(order):
        torch.manual_seed(seed)
        folders[name] = str(tmp_path / name)
        peft.get_peft_model(copy.deepcopy(torch_mlp), _hf(name)).save_pretrained(folders[name])
    hf = _load_all(peft.PeftMixedModel, copy.deepcopy(torch_mlp), folders, order).eval()
    ours = _load_all(PeftMixedModel, MsMLP(torch_mlp), folders, order)
    ours.set_train(False)

    model = ours.get_base_model()  # the first adapter added sits innermost, as in HF peft
    assert _chain(model.lin0) == ["oft", "loha", "lora", "Linear"]
    assert _chain(model.lin1) == ["lokr", "loha", "lora", "Linear"]
    assert model.lin0.get_base_layer() is model.lin0.base_layer.base_layer.base_layer
    assert type(hf.base_model.model.lin0.base_layer.base_layer).__module__ == "peft.tuners.lora.layer"

    base = _hf_out(torch_mlp)
    for active in (order, ["lora"], ["loha", "oft"], ["lokr", "lora"]):
        hf.set_adapter(active)
        ours.set_adapter(active)
        expected = _hf_out(hf)
        assert max_diff(expected, base) > 1e-2
        assert _close(_ms_out(ours), expected), active
        assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
        assert ({p.name for p in ours.trainable_params()}
                == {n for n, p in hf.named_parameters() if p.requires_grad})
    hf.set_adapter(order)
    ours.set_adapter(order)
    expected = _hf_out(hf)
    merged = ours.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert _close(_ms_out(merged), expected)
    assert _close(_hf_out(hf.merge_and_unload()), expected)


def test_mixed_model_made_by_mindpeft_saves_folders_hf_peft_loads(torch_mlp, tmp_path):
    order = ["default", "lora", "oft", "lokr"]
    types = {"default": "loha", "lora": "lora", "oft": "oft", "lokr": "lokr"}
    ours = get_peft_model(MsMLP(torch_mlp), _ours("loha"), mixed=True)
    assert isinstance(ours, PeftMixedModel)
    for name in order[1:]:
        ours.add_adapter(name, _ours(types[name]))
    assert ours.active_adapters == ["default"]  # added adapters are not activated
    ours.set_adapter(order)
    ours.set_train(False)
    adapted = _ms_out(ours)
    assert max_diff(adapted, _hf_out(torch_mlp)) > 1e-2
    assert _chain(ours.get_base_model().lin0) == ["oft", "lora", "loha", "Linear"]

    ours.save_pretrained(str(tmp_path / "ms"))  # PeftModel's layout: "default" at the top, the others beside it
    assert sorted(os.listdir(tmp_path / "ms")) == ["adapter_config.json", "adapter_model.safetensors", "lokr", "lora",
                                                   "oft"]
    folders = {name: str(tmp_path / "ms" / ("" if name == "default" else name)) for name in order}
    for name in order:  # each folder is the single-method adapter HF peft saves for that config
        peft.get_peft_model(copy.deepcopy(torch_mlp), _hf(types[name])).save_pretrained(str(tmp_path / f"hf_{name}"))
        assert _shapes(folders[name]) == _shapes(tmp_path / f"hf_{name}")

    hf = _load_all(peft.PeftMixedModel, copy.deepcopy(torch_mlp), folders, order).eval()
    assert _close(_hf_out(hf), adapted)
    back = _load_all(PeftMixedModel, MsMLP(torch_mlp), folders, order)  # and back into mindpeft
    back.set_train(False)
    assert _close(_ms_out(back), adapted)

    ours.set_adapter("lora")  # a folder of the mixed model is a plain adapter for HF's PeftModel too
    single = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), folders["lora"]).eval()
    assert _close(_hf_out(single), _ms_out(ours))


def test_merge_unmerge_disable_and_delete(torch_mlp):
    ours = get_peft_model(MsMLP(torch_mlp), _ours("lora"), adapter_name="lora", mixed=True)
    ours.add_adapter("oft", _ours("oft"))
    ours.add_adapter("loha", _ours("loha"))
    ours.set_adapter(["lora", "oft", "loha"])
    ours.set_train(False)
    adapted = _ms_out(ours)
    weights = {n: p.asnumpy().copy() for n, p in ours.parameters_and_names()}
    ours.merge_adapter()  # innermost first: the OFT rotation turns the weight that holds LoRA's update
    assert _close(_ms_out(ours), adapted)
    with pytest.raises(ValueError, match=r"Cannot delete adapter\(s\) \['oft'\] while they are merged"):
        ours.delete_adapter("oft")
    ours.unmerge_adapter()
    assert all(np.allclose(p.asnumpy(), weights[n], atol=1e-5) for n, p in ours.parameters_and_names())
    with ours.disable_adapter():
        assert max_diff(_ms_out(ours), _hf_out(torch_mlp)) < 1e-5
    ours.set_adapter(["lora", "loha"])
    without_oft = _ms_out(ours)
    ours.set_adapter(["lora", "oft", "loha"])
    ours.delete_adapter("oft")
    assert ours.active_adapters == ["lora", "loha"] and list(ours.peft_config) == ["lora", "loha"]
    assert _close(_ms_out(ours), without_oft)
    assert not any("oft" in n for n, _ in ours.parameters_and_names())


def test_conv_layers_mix_lora_loha_lokr_as_hf(tmp_path):
    torch.manual_seed(3)
    torch_net = TorchConvNet().eval()
    configs = {"lora": (peft.LoraConfig, LoraConfig, dict(target_modules=["c0", "c2", "d1"], r=4, lora_alpha=8,
                                                          init_lora_weights=False)),
               "loha": (peft.LoHaConfig, LoHaConfig, dict(target_modules=["c0", "d1"], r=2, alpha=24,
                                                          use_effective_conv2d=True, init_weights=False)),
               "lokr": (peft.LoKrConfig, LoKrConfig, dict(target_modules=["c0", "c2"], r=1, alpha=3,
                                                          use_effective_conv2d=True, init_weights=False))}
    ours = get_peft_model(MsConvNet(torch_net), configs["lora"][1](**configs["lora"][2]), "lora", mixed=True)
    for name in ("loha", "lokr"):
        ours.add_adapter(name, configs[name][1](**configs[name][2]))
    ours.set_adapter(list(configs))
    ours.set_train(False)
    adapted = ours(Tensor(CONV_X)).asnumpy()
    ours.save_pretrained(str(tmp_path))
    folders = {name: str(tmp_path / name) for name in configs}
    hf = _load_all(peft.PeftMixedModel, copy.deepcopy(torch_net), folders, list(configs)).eval()
    with torch.no_grad():
        assert _close(hf(torch.tensor(CONV_X)).numpy(), adapted)
    merged = ours.merge_and_unload()
    assert _close(merged(Tensor(CONV_X)).asnumpy(), adapted)


def test_tiny_llama_matches_hf_mixed_model(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama", "causal")
    inputs = {"input_ids": rand_ids((2, 7))}
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path),  # default targets: q_proj, v_proj
                          LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False), "lora", mixed=True)
    ours.add_adapter("loha", LoHaConfig(task_type="CAUSAL_LM", r=2, alpha=8, init_weights=False,
                                        target_modules=["v_proj", "o_proj"]))
    ours.set_adapter(["lora", "loha"])
    ours.set_train(False)
    adapted = ms_logits(ours, inputs)
    ours.save_pretrained(str(tmp_path))
    folders = {name: str(tmp_path / name) for name in ("lora", "loha")}
    hf = _load_all(peft.PeftMixedModel, torch_model(path, "llama", "causal"), folders, ["lora", "loha"]).eval()
    assert max_diff(torch_logits(hf, inputs), adapted) < 1e-4


def test_jit_steps_lower_the_loss_and_equal_pynative(torch_mlp):
    batch = {"x": Tensor(X), "y": Tensor(np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32))}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsMLP(torch_mlp), LoraConfig(target_modules=["lin0", "lin1"], r=2), "lora", mixed=True)
        model.add_adapter("loha", LoHaConfig(target_modules=["lin0"], r=2))
        model.add_adapter("lokr", LoKrConfig(target_modules=["lin1"], r=2))
        model.set_adapter(["lora", "loha", "lokr"])
        model.set_train(False)

        def loss_fn(x, y):
            return ((model(x) - y) ** 2).mean()

        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=loss_fn, jit=jit)
        losses = [float(step(**batch)) for _ in range(4)]
        assert losses[-1] < losses[0] - 1e-3
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


def test_bad_uses(torch_mlp, tmp_path):
    compatible = r"Compatible types are: \(<PeftType.LORA: 'LORA'>, <PeftType.LOHA: 'LOHA'>"
    with pytest.raises(ValueError, match=r"The provided `peft_type` 'PROMPT_TUNING' is not compatible with the "
                                         r"`PeftMixedModel`. " + compatible):
        get_peft_model(MsMLP(torch_mlp), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2), mixed=True)
    ours = get_peft_model(MsMLP(torch_mlp), _ours("lora"), adapter_name="lora", mixed=True)
    with pytest.raises(ValueError, match="The provided `peft_type` 'IA3' is not compatible"):
        ours.add_adapter("ia3", IA3Config(target_modules=["lin0"], feedforward_modules=[]))
    assert list(ours.peft_config) == ["lora"]
    with pytest.raises(ValueError, match="Adapter with name 'lora' already exists."):
        ours.add_adapter("lora", _ours("loha"))
    with pytest.raises(ValueError, match=r"Adapter\(s\) \['nope'\] not found, available adapters: \['lora'\]"):
        ours.set_adapter(["lora", "nope"])
    with pytest.raises(ValueError, match="supports only 1 adapter with bias"):
        ours.add_adapter("oft", OFTConfig(target_modules=["lin0"], oft_block_size=4, r=0, bias="all"))
        ours.add_adapter("lora2", LoraConfig(target_modules=["lin1"], bias="lora_only"))
    with pytest.raises(ValueError, match="cannot stack a DoRA adapter"):
        ours.add_adapter("dora", LoraConfig(target_modules=["lin0"], use_dora=True))
    with pytest.raises(NotImplementedError, match="Weighted adapters are not supported for MixedModel"):
        ours.add_weighted_adapter(["lora"], [1.0], "w")
    with pytest.raises(TypeError, match="get_layer_status is not supported for PeftMixedModel"):
        ours.get_layer_status()

    peft.get_peft_model(copy.deepcopy(torch_mlp), peft.IA3Config(target_modules=["lin0"], feedforward_modules=[])
                        ).save_pretrained(str(tmp_path / "ia3"))
    with pytest.raises(ValueError, match="The provided `peft_type` 'IA3' is not compatible"):
        PeftMixedModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path / "ia3"))
    with pytest.raises(ValueError, match="The provided `peft_type` 'IA3' is not compatible"):
        ours.load_adapter(str(tmp_path / "ia3"), "ia3")
    assert sorted(ours.peft_config) == ["lora", "oft"]
