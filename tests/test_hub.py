"""Hub ids resolve offline through the local Hugging Face cache; unknown names say where they were looked for."""
import json
import os
import shutil
import subprocess
import sys

import huggingface_hub.constants
import numpy as np
import peft as hf_peft
import pytest

from mindpeft import (AutoPeftModel, AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM, AutoTokenizer, LoraConfig,
                      PeftConfig, PeftModel, PromptTuningConfig, get_peft_model)
from mindpeft.models import AutoModelForCausalLM, LlamaForCausalLM
from mindpeft.quantization import BitsAndBytesConfig, replace_lora_weights_loftq
from mindpeft.utils.hub import NotFoundLocallyError, resolve_folder
from conftest import max_diff, ms_ids, rand_ids

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOKENIZER_DIR = os.path.join(ROOT, "tutorials", "data", "tiny-gpt2-reviews")


def _cache_repo(cache, repo_id, files_from, revision="0123abcd"):
    """Lay out ``files_from`` as the cached snapshot of ``repo_id`` (HF_HUB_CACHE layout: refs/main -> snapshot)."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", revision)
    shutil.copytree(files_from, snapshot)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return str(cache)


def test_models_tokenizers_and_adapters_load_by_hub_id_from_the_cache(tiny_model_dir, hub_cache, tmp_path):
    base_dir = tiny_model_dir("gpt2", "causal")
    _cache_repo(hub_cache, "org/tiny-gpt2", base_dir)
    _cache_repo(hub_cache, "org/tiny-tokenizer", TOKENIZER_DIR)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained("org/tiny-gpt2"),
                           LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    # the hub id, not the snapshot folder, as transformers + HF peft record it: the adapter loads on other machines
    assert model.get_base_model().name_or_path == "org/tiny-gpt2"
    ids = rand_ids((2, 6))
    expected = model(ms_ids(ids))["logits"].asnumpy()
    model.save_pretrained(str(tmp_path / "adapter"))
    with open(tmp_path / "adapter" / "adapter_config.json", encoding="utf-8") as f:
        assert json.load(f)["base_model_name_or_path"] == "org/tiny-gpt2"
    _cache_repo(hub_cache, "org/tiny-lora", str(tmp_path / "adapter"))

    assert PeftConfig.from_pretrained("org/tiny-lora").r == 4
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("org/tiny-gpt2"), "org/tiny-lora")
    assert max_diff(loaded(ms_ids(ids))["logits"], expected) < 1e-6
    auto = AutoPeftModelForCausalLM.from_pretrained("org/tiny-lora")
    assert max_diff(auto(ms_ids(ids))["logits"], expected) < 1e-6

    tokenizer = AutoTokenizer.from_pretrained("org/tiny-tokenizer")
    local = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    assert tokenizer.name_or_path == "org/tiny-tokenizer"
    text = ["a wonderful and charming film", "dull"]
    assert tokenizer(text, padding=True)["input_ids"] == local(text, padding=True)["input_ids"]


def test_a_local_folder_wins_over_the_cache(hub_cache, tmp_path):
    _cache_repo(hub_cache, "org/thing", TOKENIZER_DIR)
    local = tmp_path / "org" / "thing"
    local.mkdir(parents=True)
    assert resolve_folder("org/thing") == "org/thing"


@pytest.mark.parametrize("name", ["org/not-downloaded", "bigscience/mt0-large"])
def test_a_name_in_neither_place_says_where_it_looked(hub_cache, name):
    for load in (AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained, PeftConfig.from_pretrained):
        with pytest.raises(NotFoundLocallyError) as info:
            load(name)
        message = str(info.value)
        assert name in message and hub_cache in message and "HF_HUB_CACHE" in message
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_a_path_that_is_not_a_hub_id_is_reported_as_a_missing_folder(hub_cache):
    with pytest.raises(NotFoundLocallyError, match="does not exist as a local folder"):
        resolve_folder("./no/such/dir/here")


CHILD = """
from mindpeft import AutoTokenizer, PeftConfig
from mindpeft.models import AutoModelForCausalLM
print(type(AutoModelForCausalLM.from_pretrained("org/tiny-gpt2")).__name__,
      AutoTokenizer.from_pretrained("org/tiny-tokenizer")("dull film")["input_ids"])
try:
    PeftConfig.from_pretrained("org/not-downloaded")
except FileNotFoundError as err:
    print(err)
"""


@pytest.mark.parametrize("variable", ["HF_HOME", "HF_HUB_CACHE"])
def test_the_cache_the_environment_names(tiny_model_dir, tmp_path, variable):
    """HF_HOME (the hub cache is its hub/ folder) or HF_HUB_CACHE, set before Python starts, as users set them."""
    home = tmp_path / "hf-home"
    cache = str(home / "hub")
    os.makedirs(cache)
    _cache_repo(cache, "org/tiny-gpt2", tiny_model_dir("gpt2", "causal"))
    _cache_repo(cache, "org/tiny-tokenizer", TOKENIZER_DIR)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({variable: str(home) if variable == "HF_HOME" else cache, "GLOG_v": "3",
                "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)})
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    expected_ids = AutoTokenizer.from_pretrained(TOKENIZER_DIR)("dull film")["input_ids"]
    first, error = run.stdout.splitlines()[:2]
    assert first == f"GPT2LMHeadModel {expected_ids}"
    assert "'org/not-downloaded'" in error and f"local Hugging Face cache ({cache}" in error


def test_auto_peft_model_classes_check_the_task_type_like_hf_peft(tiny_model_dir, hub_cache, tmp_path):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                           LoraConfig(task_type="CAUSAL_LM", r=2))
    model.save_pretrained(str(tmp_path / "adapter"))
    _cache_repo(hub_cache, "org/causal-lora", str(tmp_path / "adapter"))
    for ours, theirs, message in (
            (AutoPeftModel, hf_peft.AutoPeftModel, "Cannot use `AutoPeftModel` with a task type"),
            (AutoPeftModelForSeq2SeqLM, hf_peft.AutoPeftModelForSeq2SeqLM,
             "Expected target PEFT class: PeftModelForCausalLM, but you have asked for: PeftModelForSeq2SeqLM")):
        with pytest.raises(ValueError, match=message):
            theirs.from_pretrained(str(tmp_path / "adapter"))
        for name in (str(tmp_path / "adapter"), "org/causal-lora"):
            with pytest.raises(ValueError, match=message) as info:
                ours.from_pretrained(name)
            assert "AutoPeftModelForCausalLM" in str(info.value)  # the class to use instead


def test_prompt_tuning_text_init_and_loftq_read_hub_ids(tiny_model_dir, hub_cache):
    """PromptTuningConfig(tokenizer_name_or_path=<hub id>), as in the seed's prompt-tuning guide, and LoftQ reading
    the float weights of a base model loaded by hub id (HF peft looks both up in the cache)."""
    _cache_repo(hub_cache, "org/tiny-tokenizer", TOKENIZER_DIR)
    gpt2 = tiny_model_dir("gpt2", "causal")

    def text_init(tokenizer):
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prompt_tuning_init="TEXT",
                                    prompt_tuning_init_text="a wonderful and charming film",
                                    tokenizer_name_or_path=tokenizer)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(gpt2), config)
        return [p.asnumpy() for p in model.trainable_params()]

    by_id, by_folder = text_init("org/tiny-tokenizer"), text_init(TOKENIZER_DIR)
    assert len(by_id) == len(by_folder) == 1
    np.testing.assert_array_equal(by_id[0], by_folder[0])

    _cache_repo(hub_cache, "org/tiny-llama", tiny_model_dir("llama", "causal"))
    quantized = LlamaForCausalLM.from_pretrained("org/tiny-llama", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4"))
    model = get_peft_model(quantized, LoraConfig(r=2, target_modules=["q_proj"]))
    b_before = [p.asnumpy().copy() for p in model.trainable_params() if "lora_B" in p.name]
    replace_lora_weights_loftq(model)  # the float weights: the snapshot of "org/tiny-llama"
    b_after = [p.asnumpy() for p in model.trainable_params() if "lora_B" in p.name]
    assert not any(b.any() for b in b_before) and all(b.any() for b in b_after)
