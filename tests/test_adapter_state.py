"""Adapter state changes that used to go silently wrong: nested disabling, deleting merged adapters, wrapping twice."""
import warnings

import numpy as np
import pytest

from mindpeft import LoraConfig, PrefixTuningConfig, get_peft_model
from mindpeft.models import GPT2LMHeadModel
from conftest import max_diff, ms_ids, rand_ids


def _base(tiny_model_dir):
    return GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal"))


def _lora(base, name="default", seed=0):
    np.random.seed(seed)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False)
    return get_peft_model(base, config, adapter_name=name)


def _logits(model, ids):
    return model(ms_ids(ids))["logits"].asnumpy()


def _base_weights(model):
    return {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if "lora_" not in n}


@pytest.mark.parametrize("merged", [False, True])
def test_nested_disable_adapter_keeps_adapters_off_until_the_outer_block_ends(tiny_model_dir, merged):
    base = _base(tiny_model_dir)
    ids = rand_ids((2, 6))
    plain = _logits(base, ids)
    model = _lora(base)
    adapted = _logits(model, ids)
    assert max_diff(adapted, plain) > 1e-3
    if merged:
        model.merge_adapter()
    with model.disable_adapter():
        with model.disable_adapter():
            assert max_diff(_logits(model, ids), plain) < 1e-5
        assert max_diff(_logits(model, ids), plain) < 1e-5  # was: adapters back on here
    assert max_diff(_logits(model, ids), adapted) < 1e-5


def test_disable_adapter_block_restores_adapters_that_were_already_off(tiny_model_dir):
    base = _base(tiny_model_dir)
    ids = rand_ids((1, 5))
    plain = _logits(base, ids)
    model = _lora(base)
    model.base_model.disable_adapter_layers()
    with model.disable_adapter():
        pass
    assert max_diff(_logits(model, ids), plain) < 1e-5


def test_nested_disable_adapter_for_prompt_learning(tiny_model_dir):
    base = _base(tiny_model_dir)
    ids = rand_ids((1, 5))
    plain = _logits(base, ids)
    model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with model.disable_adapter():
        with model.disable_adapter():
            pass
        assert model._prompts_disabled
        assert max_diff(_logits(model, ids), plain) < 1e-5
    assert not model._prompts_disabled


def test_delete_merged_adapter_removes_its_delta_from_the_base_weights(tiny_model_dir):
    base = _base(tiny_model_dir)
    before = {n: p.asnumpy().copy() for n, p in base.parameters_and_names()}
    ids = rand_ids((2, 6))
    plain = _logits(base, ids)
    model = _lora(base, "a", seed=1)
    model.add_adapter("b", LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    model.set_adapter("b")
    only_b = _logits(model, ids)
    model.base_model.merge_adapter(["a", "b"])
    model.delete_adapter("a")
    # b stays merged, a's delta is gone from the base weights.
    assert max_diff(_logits(model, ids), only_b) < 1e-5
    model.delete_adapter("b")
    assert max_diff(_logits(model, ids), plain) < 1e-5
    after = _base_weights(model.base_model.model)
    for name, value in after.items():
        original = name.replace(".base_layer.", ".")
        assert np.abs(value - before[original]).max() < 1e-6, name


def test_get_peft_model_twice_refuses_to_reinitialise_the_adapter(tiny_model_dir):
    base = _base(tiny_model_dir)
    model = _lora(base)
    ids = rand_ids((1, 5))
    trained = _logits(model, ids)
    weights = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if "lora_" in n}
    with pytest.raises(ValueError, match="already holds an adapter named 'default'"):
        _lora(base, seed=5)
    assert max_diff(_logits(model, ids), trained) == 0
    for name, param in model.parameters_and_names():
        if "lora_" in name:
            assert np.array_equal(param.asnumpy(), weights[name])


def test_get_peft_model_twice_with_another_name_warns_as_hf_peft(tiny_model_dir):
    base = _base(tiny_model_dir)
    _lora(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _lora(base, name="second")
    assert any("modify a model with PEFT for a second time" in str(w.message) for w in caught)


def test_weights_written_after_a_compile_are_seen_by_the_compiled_function(tiny_model_dir):
    """``Parameter.set_data`` swaps storage that compiled graphs keep reading; mindpeft writes in place."""
    import mindspore as ms
    from mindpeft.utils.save_and_load import get_peft_model_state_dict, set_peft_model_state_dict

    model = _lora(_base(tiny_model_dir))
    ids = ms_ids(rand_ids((2, 6)))

    @ms.jit
    def logits(ids):
        return model(ids)["logits"]

    before = logits(ids).asnumpy()
    state = {k: v * 3.0 for k, v in get_peft_model_state_dict(model).items()}
    set_peft_model_state_dict(model, state)
    after_load = model(ids)["logits"].asnumpy()
    assert max_diff(after_load, before) > 1e-3
    assert max_diff(logits(ids), after_load) < 1e-6


def test_adalora_masking_during_compiled_training_reaches_the_compiled_step(tiny_model_dir):
    import mindspore as ms
    from mindpeft import AdaLoraConfig

    np.random.seed(0)
    config = AdaLoraConfig(task_type="CAUSAL_LM", init_r=4, target_r=2, total_step=10, init_lora_weights=False)
    model = get_peft_model(_base(tiny_model_dir), config)
    ids = ms_ids(rand_ids((2, 6)))

    @ms.jit
    def logits(ids):
        return model(ids)["logits"]

    logits(ids)
    pattern = {name: [True, False, True, False] for name, _ in model.parameters_and_names() if "lora_E" in name}
    model.base_model.rankallocator.mask_using_rank_pattern(model, pattern)
    for name, param in model.parameters_and_names():
        if "lora_E" in name:
            assert np.all(param.asnumpy()[[1, 3]] == 0)
    assert max_diff(logits(ids), model(ids)["logits"]) < 1e-6


def _structure(model):
    cells = [(n, type(c).__name__, c.training) for n, c in model.cells_and_names()]
    return cells, {n: (p.name, p.requires_grad) for n, p in model.parameters_and_names()}


def test_refused_get_peft_model_and_add_adapter_leave_the_model_unchanged(tiny_model_dir):
    """c_attn is adapted before the bad module is reached: the refusal must undo that (it used to leave the base
    model holding the adapter, so the next get_peft_model refused to wrap it again)."""
    base = _base(tiny_model_dir)
    before = _structure(base)
    for config, message in [(LoraConfig(target_modules=["c_attn"], modules_to_save="head"), r"\['head'\] not found"),
                            (LoraConfig(target_modules=["c_attn", "ln_f"]), "LayerNorm is not supported")]:
        with pytest.raises(ValueError, match=message):
            get_peft_model(base, config)
        assert _structure(base) == before
    model = _lora(base)
    before = _structure(model)
    with pytest.raises(ValueError, match=r"\['head'\] not found"):
        model.add_adapter("other", LoraConfig(target_modules=["c_attn", "c_fc"], modules_to_save=["head"]))
    assert _structure(model) == before and list(model.peft_config) == ["default"]
    model.add_adapter("other", LoraConfig(target_modules=["c_fc"]))
    assert list(model.peft_config) == ["default", "other"]
    mixed = get_peft_model(_base(tiny_model_dir), LoraConfig(target_modules=["c_attn"]), mixed=True)
    before = _structure(mixed)
    with pytest.raises(ValueError, match="LayerNorm is not supported"):
        mixed.add_adapter("other", LoraConfig(target_modules=["c_fc", "ln_f"]))
    assert _structure(mixed) == before and list(mixed.peft_config) == ["default"]
