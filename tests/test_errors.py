"""Bad input fails loudly with a message that names the problem."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mindpeft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from mindpeft.models import GPT2LMHeadModel


@pytest.fixture
def gpt2(tiny_model_dir):
    return GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal"))


@pytest.fixture
def saved_adapter(tiny_model_dir, tmp_path):
    model = get_peft_model(GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal")),
                           LoraConfig(task_type="CAUSAL_LM", r=4))
    model.save_pretrained(str(tmp_path / "adapter"))
    return str(tmp_path / "adapter")


def test_target_module_not_found(gpt2):
    with pytest.raises(ValueError, match=r"Target modules \{'q_proj'\} not found in the base model"):
        get_peft_model(gpt2, LoraConfig(target_modules=["q_proj"]))


@pytest.mark.parametrize("r", [0, -2, 1.5])
def test_rank_must_be_positive_integer(r):
    with pytest.raises(ValueError, match="`r` should be a positive integer"):
        LoraConfig(r=r)


def test_unknown_task_type():
    with pytest.raises(ValueError, match="Unknown task_type 'TRANSLATION'"):
        LoraConfig(task_type="TRANSLATION")
    assert LoraConfig(task_type="SEQ_CLS").task_type is TaskType.SEQ_CLS


@pytest.mark.parametrize("kwargs,message", [
    ({"bias": "some"}, "bias must be 'none', 'all' or 'lora_only'"),
    ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\)"),
    ({"use_dora": True, "lora_bias": True}, "DoRA"),
    ({"init_lora_weights": "eva"}, "not supported by mindpeft"),
    ({"layers_pattern": "h"}, "layers_to_transform` must also be specified"),
])
def test_invalid_lora_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**kwargs)


def test_unsupported_target_layer_and_missing_modules_to_save(gpt2):
    with pytest.raises(ValueError, match="LayerNorm is not supported"):
        get_peft_model(gpt2, LoraConfig(target_modules=["ln_f"]))
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] not found"):
        get_peft_model(gpt2, LoraConfig(target_modules=["c_attn"], modules_to_save=["head"]))


def test_adapter_dir_missing_or_incomplete(gpt2, tmp_path, saved_adapter):
    with pytest.raises(ValueError, match="does not exist"):
        PeftModel.from_pretrained(gpt2, str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="Can't find 'adapter_config.json'"):
        PeftModel.from_pretrained(gpt2, str(tmp_path / "empty"))
    os.remove(os.path.join(saved_adapter, "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="no adapter_model.safetensors"):
        PeftModel.from_pretrained(gpt2, saved_adapter)


def test_adapter_shape_mismatch_and_foreign_keys(tiny_model_dir, saved_adapter):
    file = os.path.join(saved_adapter, "adapter_model.safetensors")
    weights = load_file(file)
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"
    save_file({**weights, key: np.zeros((4, 7), np.float32)}, file)
    with pytest.raises(ValueError, match=r"Shape mismatch for .*c_attn.lora_A.weight.*\(4, 7\).*\(4, 32\)"):
        PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal")),
                                  saved_adapter)
    save_file({**weights, "base_model.model.model.layers.0.q_proj.lora_A.weight": np.zeros((4, 32), np.float32)},
              file)
    with pytest.raises(ValueError, match="match no parameter of the model"):
        PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal")),
                                  saved_adapter)


def test_adapter_config_with_unsupported_features(saved_adapter):
    file = os.path.join(saved_adapter, "adapter_config.json")
    config = json.load(open(file))
    json.dump({**config, "use_dora": False, "megatron_config": None, "lora_bias": False}, open(file, "w"))
    assert PeftConfig.from_pretrained(saved_adapter).r == 4  # HF's neutral extra keys are accepted
    json.dump({**config, "layer_replication": [[0, 2]]}, open(file, "w"))
    with pytest.raises(ValueError, match="options mindpeft does not support.*layer_replication"):
        PeftConfig.from_pretrained(saved_adapter)
    json.dump({**config, "peft_type": "SHIRA"}, open(file, "w"))
    with pytest.raises(ValueError, match="Unknown or unsupported peft_type 'SHIRA'"):
        PeftConfig.from_pretrained(saved_adapter)


def test_unknown_adapter_names(gpt2):
    model = get_peft_model(gpt2, LoraConfig(task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match="Adapter 'nope' not found; available adapters: \\['default'\\]"):
        model.set_adapter("nope")
    with pytest.raises(ValueError, match="Adapter 'nope' does not exist"):
        model.delete_adapter("nope")
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("default", LoraConfig())
    with pytest.raises(ValueError, match="Adapter missing does not exist"):
        model.add_weighted_adapter(["default", "missing"], [1.0, 1.0], "mix")
    with pytest.raises(ValueError, match="invalid `selected_adapters`"):
        model.save_pretrained("/tmp/unused", selected_adapters=["nope"])


def test_a_string_of_module_or_adapter_names_is_one_name(gpt2, tmp_path):
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] not found"):  # never ['h', 'e', 'a', 'd']
        get_peft_model(gpt2, LoraConfig(target_modules=["c_attn"], modules_to_save="head"))
    model = get_peft_model(gpt2, LoraConfig(task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match=r"got \['nope'\]"):
        model.save_pretrained(str(tmp_path / "a"), selected_adapters="nope")
    assert not (tmp_path / "a").exists()
