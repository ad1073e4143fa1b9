"""Sharded checkpoints in transformers' format (``model-00001-of-0000N.safetensors`` and
``model.safetensors.index.json``): loaded shard by shard, one tensor at a time, and saved with ``max_shard_size``,
atomically."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import split_torch_state_dict_into_shards

from mindpeft import models
from mindpeft.models import modeling_utils
from mindpeft.models.modeling_utils import parse_shard_size, split_into_shards
from conftest import max_diff, ms_logits, rand_ids, torch_logits, torch_model

IDS = {"input_ids": rand_ids((2, 9))}


def _parameters(model):
    return {name: p.asnumpy() for name, p in model.parameters_and_names()}


def test_transformers_sharded_checkpoint_loads(tmp_path, tiny_model_dir):
    path = tiny_model_dir("llama", "causal")
    reference = torch_model(path, "llama", "causal")
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert len(shards) > 2 and "model.safetensors" not in shards
    model = models.LlamaForCausalLM.from_pretrained(tmp_path)
    single = models.LlamaForCausalLM.from_pretrained(path)
    expected = _parameters(single)
    assert {k: v.tolist() for k, v in _parameters(model).items()} == {k: v.tolist() for k, v in expected.items()}
    assert max_diff(ms_logits(model, IDS), torch_logits(reference, IDS)) < 1e-4


def test_sharded_save_loads_in_transformers(tmp_path, tiny_model_dir):
    path = tiny_model_dir("llama", "causal")
    model = models.LlamaForCausalLM.from_pretrained(path)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert len(files) > 2 and not (tmp_path / "model.safetensors").exists()
    weights = _parameters(model)
    assert sorted(index["weight_map"]) == sorted(weights)
    assert index["metadata"] == {"total_size": sum(v.nbytes for v in weights.values()),
                                 "total_parameters": sum(v.size for v in weights.values())}
    for name in files:
        assert os.path.getsize(tmp_path / name) < 20_000 + 1_000  # the limit plus the file's header
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    reference = torch_model(path, "llama", "causal")
    assert max_diff(torch_logits(reloaded, IDS), torch_logits(reference, IDS)) == 0
    assert max_diff(ms_logits(models.LlamaForCausalLM.from_pretrained(tmp_path), IDS), ms_logits(model, IDS)) == 0


def test_shards_as_huggingface_hub_splits_them():
    """The same shards as huggingface_hub's splitter (which transformers uses) for the same tensors."""
    rng = np.random.default_rng(0)
    tensors = {f"w{i}": np.zeros(int(n), np.float32) for i, n in enumerate(rng.integers(1, 3000, 40))}
    tensors["big"] = np.zeros(5000, np.float32)  # over the limit: a shard of its own
    split = split_torch_state_dict_into_shards({k: torch.from_numpy(v) for k, v in tensors.items()},
                                               max_shard_size="10KB")
    assert split.is_sharded
    assert split_into_shards(tensors, parse_shard_size("10KB")) == list(split.filename_to_tensors.values())


@pytest.mark.parametrize("size,expected", [(1000, 1000), ("5GB", 5 * 10 ** 9), ("200MB", 2 * 10 ** 8),
                                           ("1.5KB", 1500), ("2MiB", 2 * 2 ** 20), (" 10 kb ", 10_000)])
def test_shard_sizes(size, expected):
    assert parse_shard_size(size) == expected


@pytest.mark.parametrize("size", ["5 parsecs", "", 0, -5, "GB", True, None])
def test_bad_shard_sizes(tmp_path, size):
    model = models.LlamaForCausalLM(models.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8,
                                                       num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match=f"max_shard_size={size!r} is not a size"):
        model.save_pretrained(tmp_path / "out", max_shard_size=size)
    assert not (tmp_path / "out").exists()


def test_resaving_replaces_weight_files_and_keeps_others(tmp_path, tiny_model_dir, monkeypatch):
    """A save replaces the weight files of the one before (no stale shard, index or single file stays to be read
    instead), keeps the user's files, and a save that fails leaves the folder as it was."""
    model = models.LlamaForCausalLM.from_pretrained(tiny_model_dir("llama", "causal"))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    (tmp_path / "notes.txt").write_text("mine")
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "notes.txt"]
    model.save_pretrained(tmp_path, max_shard_size="30KB")
    names = sorted(os.listdir(tmp_path))
    assert "model.safetensors" not in names and "notes.txt" in names and "model.safetensors.index.json" in names
    before = {name: (tmp_path / name).read_bytes() for name in names}

    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(tensors, path, metadata=metadata)

    save_file = modeling_utils.save_file
    monkeypatch.setattr(modeling_utils, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path, max_shard_size="10KB")
    assert {name: (tmp_path / name).read_bytes() for name in sorted(os.listdir(tmp_path))} == before


def test_broken_sharded_checkpoints(tmp_path, tiny_model_dir):
    model = models.LlamaForCausalLM.from_pretrained(tiny_model_dir("llama", "causal"))
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    last = sorted(set(index["weight_map"].values()))[-1]

    (tmp_path / last).rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=f"names the shard '{last}', which is not in"):
        models.LlamaForCausalLM.from_pretrained(tmp_path)
    (tmp_path / last).write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match=f"{last} is not a readable safetensors file"):
        models.LlamaForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "moved").rename(tmp_path / last)

    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = last
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="maps 1 key.* to shards that lack them: \\['model.layers.9"):
        models.LlamaForCausalLM.from_pretrained(tmp_path)
    index_path.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="has no 'weight_map' object"):
        models.LlamaForCausalLM.from_pretrained(tmp_path)
    index_path.unlink()
    with pytest.raises(FileNotFoundError, match="No model.safetensors \\(or sharded model.safetensors.index.json\\)"):
        models.LlamaForCausalLM.from_pretrained(tmp_path)


# ----- peak memory of loading, measured in fresh processes -----------------------------------------------------------
_BIG = dict(vocab_size=4000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=16)


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "GLOG_v": "3"}, cwd=os.path.dirname(__file__))
    return json.loads(out.stdout.strip().splitlines()[-1])


_MEASURE = """
import json
from mindpeft import models
def read(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 2 ** 20
config = models.LlamaConfig.from_pretrained({path!r})
before = read("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
model = models.LlamaForCausalLM.from_pretrained({path!r})
size = sum(p.asnumpy().nbytes for p in model.get_parameters()) / 2 ** 30
print(json.dumps({{"peak_gb": read("VmHWM") - before, "model_gb": size}}))
"""


def test_sharded_load_peak_memory_near_model_size(tmp_path):
    """A ~340 MB model in 100 MB shards: loading it peaks at about what building the model alone takes (measured:
    1.19x the model's bytes, against 2.15x when the whole checkpoint was read first), well under model + shards."""
    path = str(tmp_path / "big")
    _run(f"import json, numpy as np; from mindpeft import models; np.random.seed(0); "
         f"models.LlamaForCausalLM(models.LlamaConfig(**{_BIG!r})).save_pretrained({path!r}, max_shard_size='100MB'); "
         "print('{}')")
    shards = [f for f in os.listdir(path) if f.startswith("model-")]
    assert len(shards) == 4
    measured = _run(_MEASURE.format(path=path))
    assert 0.3 < measured["model_gb"] < 0.35
    assert measured["peak_gb"] < 1.35 * measured["model_gb"], measured
