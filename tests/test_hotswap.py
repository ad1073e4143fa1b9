"""Hot-swapping LoRA adapters: compiled forward steps serve the new adapter without compiling again,
with the numbers of a freshly loaded model, for other ranks (padded) and alphas; refused swaps say why."""
import mindspore as ms
import mindspore.graph.api as graph_api
import numpy as np
import peft
import pytest
import torch

from mindpeft import LoraConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.training import ForwardStep
from mindpeft.utils.graph_state import graph_version
from mindpeft.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap
from conftest import max_diff, ms_ids, torch_ids, torch_model

IDS = np.array([[5, 9, 3, 11, 40, 7, 5], [8, 11, 12, 13, 9, 40, 2]])
# Other ranks and alphas, rank patterns, rsLoRA off; "small" adapts c_attn only (its wte update must become zero).
ADAPTERS = {
    "first": dict(r=4, lora_alpha=8, target_modules=["c_attn", "wte"]),
    "second": dict(r=8, lora_alpha=3, target_modules=["c_attn", "wte"], rank_pattern={"h.1.attn.c_attn": 2}),
    "small": dict(r=2, lora_alpha=16, target_modules=["c_attn"]),
}


def compiles():
    """How many graphs MindSpore has compiled in this process (its compile cache of jit phases)."""
    return len(graph_api.ms_compile_cache)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """HF peft adapters for the tiny GPT-2 (non-zero LoRA B), and the folder of the base model."""
    path = tiny_model_dir("gpt2", "causal")
    folders = {}
    for seed, (name, kwargs) in enumerate(ADAPTERS.items()):
        torch.manual_seed(seed)
        model = peft.get_peft_model(torch_model(path, "gpt2", "causal"),
                                    peft.LoraConfig(init_lora_weights=False, **kwargs))
        folders[name] = str(tmp_path_factory.mktemp(name))
        model.save_pretrained(folders[name])
    return path, folders


def _fresh_logits(path, folder):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), folder)
    model.set_train(False)
    return model(input_ids=ms_ids(IDS))["logits"].asnumpy()


def test_compiled_forward_serves_swapped_adapters_without_recompiling(adapters):
    path, folders = adapters
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), folders["first"])
    model.set_train(False)
    prepare_model_for_compiled_hotswap(model, target_rank=8)
    assert model.base_model.model.transformer.h[0].attn.c_attn.lora_A["default"].weight.shape == (8, 32)

    @ms.jit
    def forward(input_ids):
        return model(input_ids=input_ids)["logits"]

    step = ForwardStep(model)
    first = forward(ms_ids(IDS)).asnumpy()
    assert max_diff(step(input_ids=ms_ids(IDS))["logits"], first) < 1e-5
    assert max_diff(first, _fresh_logits(path, folders["first"])) < 1e-5
    with torch.no_grad():
        hf = peft.PeftModel.from_pretrained(torch_model(path, "gpt2", "causal"), folders["second"]).eval()
        hf_second = hf(torch_ids(IDS)).logits.numpy()
    compiled = compiles()

    for name in ("second", "small", "first"):
        versions = (graph_version(), model.state_version)
        hotswap_adapter(model, folders[name], adapter_name="default")
        # what generate's cached decode step and ForwardStep are keyed by does not move
        assert (graph_version(), model.state_version) == versions
        out = forward(ms_ids(IDS)).asnumpy()
        assert max_diff(out, _fresh_logits(path, folders[name])) < 1e-5
        assert max_diff(step(input_ids=ms_ids(IDS))["logits"], out) < 1e-5
        if name == "second":
            assert max_diff(out, hf_second) < 1e-4 + 1e-5 * np.abs(hf_second).max()
            assert max_diff(out, first) > 1e-2
        compiled_fresh = compiles()  # the fresh model compiled nothing: it ran in PyNative
        assert compiled_fresh == compiled, f"hot-swapping {name} recompiled"
    assert max_diff(forward(ms_ids(IDS)), first) < 1e-5
    forward(ms_ids(IDS[:, :5]))  # the counter does see a compile: another input shape
    assert compiles() == compiled + 1


def test_other_alpha_needs_no_preparation_and_saving_keeps_the_swap(adapters, tmp_path):
    path, folders = adapters
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), folders["second"])
    model.set_train(False)
    torch.manual_seed(7)  # same rank as "second" (and its rank pattern), other alpha
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"), peft.LoraConfig(
        init_lora_weights=False, **{**ADAPTERS["second"], "lora_alpha": 13}))
    hf.save_pretrained(str(tmp_path / "alpha"))
    hotswap_adapter(model, str(tmp_path / "alpha"), adapter_name="default")
    out = model(input_ids=ms_ids(IDS))["logits"].asnumpy()
    assert max_diff(out, _fresh_logits(path, str(tmp_path / "alpha"))) < 1e-5
    model.save_pretrained(str(tmp_path / "saved"))  # the old config with lora_B rescaled: the new adapter's output
    assert max_diff(_fresh_logits(path, str(tmp_path / "saved")), out) < 1e-5


def test_refused_swaps(adapters, tmp_path):
    path, folders = adapters
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), folders["first"])
    before = {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}
    with pytest.raises(ValueError, match="Incompatible shapes found for LoRA weights .*prepare_model_for_compiled"):
        hotswap_adapter(model, folders["second"], adapter_name="default")  # rank 8 > 4, not prepared
    rslora = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(
        target_modules=["c_attn"], use_rslora=True))
    rslora.save_pretrained(str(tmp_path / "rslora"))
    with pytest.raises(ValueError, match="Configs are incompatible: for use_rslora, False != True"):
        hotswap_adapter(model, str(tmp_path / "rslora"), adapter_name="default")
    other = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(target_modules=["c_fc"], r=4))
    other.save_pretrained(str(tmp_path / "other"))
    with pytest.raises(RuntimeError, match="unexpected keys found: base_model.model.transformer.h.0.mlp.c_fc"):
        hotswap_adapter(model, str(tmp_path / "other"), adapter_name="default")
    assert all(np.array_equal(p.asnumpy(), before[n]) for n, p in model.parameters_and_names())  # nothing written
    model.merge_adapter()
    with pytest.raises(ValueError, match="because it is currently merged"):
        hotswap_adapter(model, folders["small"], adapter_name="default")
    model.unmerge_adapter()
    with pytest.raises(ValueError, match=r"target rank 2, but the original rank is larger \(4\)"):
        prepare_model_for_compiled_hotswap(model, target_rank=2)
    with pytest.raises(ValueError, match="No adapter layers found"):
        prepare_model_for_compiled_hotswap(AutoModelForCausalLM.from_pretrained(path), target_rank=8)
