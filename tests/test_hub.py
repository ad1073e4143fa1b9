"""Hub ids resolve offline through the local Hugging Face cache; unknown names say where they were looked for."""
import os
import shutil

import huggingface_hub.constants
import pytest

from mindpeft import AutoPeftModelForCausalLM, AutoTokenizer, LoraConfig, PeftConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.utils.hub import NotFoundLocallyError, resolve_folder
from conftest import max_diff, ms_ids, rand_ids

TOKENIZER_DIR = os.path.join(os.path.dirname(__file__), "..", "tutorials", "data", "tiny-gpt2-reviews")


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
    assert model.peft_config["default"].base_model_name_or_path.endswith(os.path.join("snapshots", "0123abcd"))
    model.peft_config["default"].base_model_name_or_path = "org/tiny-gpt2"  # as saved on a machine with the hub
    ids = rand_ids((2, 6))
    expected = model(ms_ids(ids))["logits"].asnumpy()
    model.save_pretrained(str(tmp_path / "adapter"))
    _cache_repo(hub_cache, "org/tiny-lora", str(tmp_path / "adapter"))

    assert PeftConfig.from_pretrained("org/tiny-lora").r == 4
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("org/tiny-gpt2"), "org/tiny-lora")
    assert max_diff(loaded(ms_ids(ids))["logits"], expected) < 1e-6
    auto = AutoPeftModelForCausalLM.from_pretrained("org/tiny-lora")
    assert max_diff(auto(ms_ids(ids))["logits"], expected) < 1e-6

    tokenizer = AutoTokenizer.from_pretrained("org/tiny-tokenizer")
    local = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
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
