"""Crash-safe saving, strict loading and clear errors for bad configs and damaged files (no torch needed)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file, save_file

from mindpeft import (AdaLoraConfig, AdaptionPromptConfig, IA3Config, LoraConfig, PeftConfig, PeftModel,
                      PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model)
from mindpeft.models import GPT2Config, GPT2LMHeadModel
from mindpeft.utils.save_and_load import get_peft_model_state_dict

TINY = {"vocab_size": 96, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
LORA_A = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"


def _base():
    return GPT2LMHeadModel(GPT2Config(**TINY))


def _fill(model, seed):
    """Give every adapter parameter distinct seeded values (so versions are told apart)."""
    rng = np.random.default_rng(seed)
    for name, param in model.parameters_and_names():
        if "lora_" in name:
            param.set_data(Tensor(rng.standard_normal(param.shape).astype(np.float32)))
    return model


def _two_adapters(seed, r):
    """A LoRA model with adapters ``default`` (c_attn, saved at the root) and ``extra`` (c_fc, in ``extra/``)."""
    model = get_peft_model(_base(), LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r,
                                               target_modules=["c_attn"]))
    model.add_adapter("extra", LoraConfig(task_type="CAUSAL_LM", r=r, target_modules=["c_fc"]))
    return _fill(model, seed)


def _files(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def _temporaries(folder):
    parent, name = os.path.split(os.path.abspath(folder))
    return [e for e in os.listdir(parent) if e.startswith(f".{name}.mindpeft-")]


def _state(model):
    """Structure, Parameter names, trainable flags, values and modes of a Cell tree."""
    cells = [(n, type(c).__name__, c.training) for n, c in model.cells_and_names()]
    params = {n: (p.name, p.requires_grad, p.asnumpy().tobytes()) for n, p in model.parameters_and_names()}
    return cells, params


def _saved(tmp_path, seed=1, r=2):
    folder = str(tmp_path / f"adapter{seed}")
    _two_adapters(seed, r).save_pretrained(folder)
    return folder


# ----- crash safety: a save killed at any point leaves the complete old or the complete new adapter -----------
CHILD = r'''
import os, sys, time
import mindpeft.peft_model as peft_model
import mindpeft.utils.io as io
import mindpeft.utils.save_and_load as save_and_load
from mindpeft import PeftModel
from mindpeft.models import GPT2Config, GPT2LMHeadModel

ref_a, ref_b, target, pause_at, tiny = sys.argv[1:6]
calls = {}


def marker(label):
    if label == pause_at:
        print("PAUSED", label, flush=True)
        time.sleep(120)


def hook(module, name):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        marker(f"{name}:before:{calls[name]}")
        result = original(*args, **kwargs)
        marker(f"{name}:after:{calls[name]}")
        return result

    setattr(module, name, wrapper)


for module, name in ((save_and_load, "save_file"), (peft_model, "write_text"), (io, "_fsync_tree"),
                     (io, "_exchange")):
    hook(module, name)


def load(ref):
    model = PeftModel.from_pretrained(GPT2LMHeadModel(GPT2Config(**eval(tiny))), ref)
    model.load_adapter(os.path.join(ref, "extra"), "extra")
    return model


models = [load(ref_b), load(ref_a)]
print("READY", flush=True)
saves = 0
while pause_at == "random" or saves == 0:
    models[saves % 2].save_pretrained(target)
    saves += 1
print("DONE", flush=True)
'''


def _kill_child(script, args, kill_on, delay=0.0, timeout=90):
    """Run the child saver; SIGKILL it ``delay`` s after it prints a line starting with ``kill_on``."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "GLOG_v": "3"}
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith(kill_on):
                threading.Event().wait(delay)
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            pytest.fail(f"the child never printed {kill_on!r}:\n{proc.stderr.read()[-3000:]}")
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()  # reaped, so the next save sees its pid is gone and removes its temporary folder
    assert proc.returncode == -signal.SIGKILL


def _version(folder, refs):
    """Which reference folder ``folder`` equals byte for byte (every file, none more, none less)."""
    found = _files(folder)
    matches = [name for name, ref in refs.items() if _files(ref) == found]
    assert len(matches) == 1, f"{folder} is a mix of versions: {sorted(found)}"
    return matches[0]


def _assert_loads_as(folder, ref):
    """mindpeft loads ``folder`` with the exact tensors and configs of the reference folder ``ref``."""
    for sub in ("", "extra"):
        loaded = PeftModel.from_pretrained(_base(), os.path.join(folder, sub))
        expected = load_file(os.path.join(ref, sub, WEIGHTS))
        got = get_peft_model_state_dict(loaded, "default")
        assert sorted(got) == sorted(expected)
        assert all(np.array_equal(got[k], expected[k]) for k in expected)
        assert (PeftConfig.from_pretrained(os.path.join(folder, sub)).to_dict()
                == PeftConfig.from_pretrained(os.path.join(ref, sub)).to_dict())


def test_save_killed_at_any_point_leaves_old_or_new_adapter(tmp_path):
    refs = {"A": str(tmp_path / "ref_a"), "B": str(tmp_path / "ref_b")}
    _two_adapters(seed=1, r=2).save_pretrained(refs["A"])
    _two_adapters(seed=2, r=4).save_pretrained(refs["B"])
    assert _files(refs["A"]).keys() == {CONFIG, WEIGHTS, f"extra/{CONFIG}", f"extra/{WEIGHTS}"}
    target = str(tmp_path / "target")
    script = str(tmp_path / "child.py")
    with open(script, "w") as f:
        f.write(CHILD)

    # Killed while saving B over A: before the exchange the folder is still A, after it B.
    for pause_at, expected in [("save_file:after:1", "A"),   # between the root's weights and config
                               ("write_text:after:1", "A"),  # root complete, extra/ not yet written
                               ("_exchange:before:1", "A"),  # everything written and fsynced
                               ("_exchange:after:1", "B")]:  # swapped, the old folder not yet removed
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(refs["A"], target)
        _kill_child(script, [refs["A"], refs["B"], target, pause_at, repr(TINY)], "PAUSED")
        assert _version(target, refs) == expected, pause_at
        assert _temporaries(target), "the killed save left its temporary folder (removed by the next save)"
    _assert_loads_as(target, refs["B"])

    # Killed at random times while saving B and A in turn.
    rng = random.Random(0)
    for _ in range(2):
        _kill_child(script, [refs["A"], refs["B"], target, "random", repr(TINY)], "READY",
                    delay=rng.uniform(0.05, 0.5))
        _assert_loads_as(target, refs[_version(target, refs)])

    model = PeftModel.from_pretrained(_base(), refs["A"])
    model.load_adapter(os.path.join(refs["A"], "extra"), "extra")
    model.save_pretrained(target)
    assert _version(target, refs) == "A"
    assert _temporaries(target) == []


# ----- saving: configs serialise first, the folder is replaced whole ----------------------------------------
def test_numpy_scalars_ranges_and_tuples_are_stored_as_json_types(tmp_path):
    config = LoraConfig(task_type="CAUSAL_LM", r=np.int64(4), lora_alpha=np.int64(16), lora_dropout=np.float32(0.25),
                        target_modules=("c_attn",), layers_to_transform=range(2), fan_in_fan_out=np.bool_(True),
                        rank_pattern={"c_attn": np.int32(2)}, modules_to_save="lm_head")
    assert type(config.r) is int and type(config.lora_alpha) is int and type(config.lora_dropout) is float
    assert config.fan_in_fan_out is True and config.layers_to_transform == [0, 1]
    assert config.target_modules == {"c_attn"} and type(config.rank_pattern["c_attn"]) is int
    assert config.modules_to_save == ["lm_head"]  # one module name, never split into letters
    (tmp_path / "notes.txt").write_text("kept")
    config.save_pretrained(str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "kept"
    data = json.load(open(tmp_path / CONFIG))
    assert data["lora_alpha"] == 16 and type(data["lora_alpha"]) is int and data["r"] == 4
    assert data["lora_dropout"] == 0.25 and data["layers_to_transform"] == [0, 1]
    assert data["target_modules"] == ["c_attn"] and data["rank_pattern"] == {"c_attn": 2}
    assert PeftConfig.from_pretrained(str(tmp_path)).to_dict() == config.to_dict()
    assert PromptTuningConfig(num_virtual_tokens=np.int64(3)).num_virtual_tokens.__class__ is int


def test_unserialisable_config_fails_before_anything_is_written(tmp_path):
    folder = _saved(tmp_path)
    before = _files(folder)
    model = _two_adapters(seed=5, r=2)
    model.peft_config["extra"].base_model_name_or_path = object()  # set after validation, found when saving
    with pytest.raises(TypeError, match=r"Adapter 'extra' config .*'base_model_name_or_path'.*object"):
        model.save_pretrained(folder)
    assert _files(folder) == before and _temporaries(folder) == []
    model.peft_config["extra"].base_model_name_or_path = None
    model.peft_config["default"].lora_alpha = float("nan")
    with pytest.raises(ValueError, match="'lora_alpha'"):
        model.save_pretrained(folder)
    assert _files(folder) == before


def test_save_replaces_read_only_files_and_keeps_other_adapters(tmp_path):
    folder = _saved(tmp_path, seed=1)
    for name in (CONFIG, WEIGHTS):
        os.chmod(os.path.join(folder, name), 0o444)
    extra_before = {k: v for k, v in _files(folder).items() if k.startswith("extra")}
    model = _two_adapters(seed=7, r=2)
    model.save_pretrained(folder, selected_adapters="default")  # a str is one adapter name
    assert not os.path.isdir(os.path.join(folder, "d"))
    assert {k: v for k, v in _files(folder).items() if k.startswith("extra")} == extra_before
    expected = get_peft_model_state_dict(model, "default")
    loaded = load_file(os.path.join(folder, WEIGHTS))
    assert all(np.array_equal(loaded[k], expected[k]) for k in expected) and loaded.keys() == expected.keys()
    assert _temporaries(folder) == []


def test_saving_into_the_working_directory_keeps_it_usable(tmp_path, monkeypatch):
    folder = _saved(tmp_path)
    monkeypatch.chdir(os.path.join(folder, "extra"))
    _two_adapters(seed=3, r=2).save_pretrained("..")
    assert os.getcwd() == os.path.join(os.path.realpath(folder), "extra") and os.path.isfile(CONFIG)
    assert _temporaries(folder) == []


def test_saving_without_adapters_raises(tmp_path):
    model = _two_adapters(seed=1, r=2)
    with pytest.raises(ValueError, match=r"invalid `selected_adapters`.*got \[\]"):
        model.save_pretrained(str(tmp_path / "a"), selected_adapters=[])
    model.delete_adapter("extra")
    model.delete_adapter("default")
    with pytest.raises(ValueError, match="holds no adapter"):
        model.save_pretrained(str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a")


def test_model_save_is_atomic_and_model_files_load(tmp_path):
    model = _base()
    folder = str(tmp_path / "model")
    model.save_pretrained(folder)
    before = _files(folder)
    assert set(before) == {"config.json", "model.safetensors"}
    model.config.activation_function = object()
    with pytest.raises(TypeError, match="'activation_function'"):
        model.save_pretrained(folder)
    assert _files(folder) == before and _temporaries(folder) == []
    loaded = GPT2LMHeadModel.from_pretrained(folder)
    assert np.array_equal(loaded.transformer.wte.weight.asnumpy(), model.transformer.wte.weight.asnumpy())


# ----- configs: types checked up front, naming the field ------------------------------------------------------
@pytest.mark.parametrize("make,field", [
    (lambda: LoraConfig(lora_alpha="16"), "lora_alpha"),
    (lambda: LoraConfig(lora_alpha=True), "lora_alpha"),
    (lambda: LoraConfig(lora_alpha=float("nan")), "lora_alpha"),
    (lambda: LoraConfig(lora_dropout=float("nan")), "lora_dropout"),
    (lambda: LoraConfig(r="8"), "`r`"),
    (lambda: LoraConfig(target_modules=123), "target_modules"),
    (lambda: LoraConfig(target_modules=["c_attn", 5]), "target_modules"),
    (lambda: LoraConfig(exclude_modules=7), "exclude_modules"),
    (lambda: LoraConfig(target_modules=["c_attn"], layers_to_transform="0"), "layers_to_transform"),
    (lambda: LoraConfig(target_modules=["c_attn"], layers_to_transform=[0, 1.5]), "layers_to_transform"),
    (lambda: LoraConfig(target_modules=["c_attn"], layers_to_transform=[0], layers_pattern=3), "layers_pattern"),
    (lambda: LoraConfig(modules_to_save=[1]), "modules_to_save"),
    (lambda: LoraConfig(rank_pattern={"c_attn": "4"}), "rank_pattern"),
    (lambda: LoraConfig(alpha_pattern={"c_attn": float("inf")}), "alpha_pattern"),
    (lambda: LoraConfig(fan_in_fan_out="yes"), "fan_in_fan_out"),
    (lambda: LoraConfig(inference_mode="false"), "inference_mode"),
    (lambda: LoraConfig(base_model_name_or_path=3), "base_model_name_or_path"),
    (lambda: IA3Config(feedforward_modules=5), "feedforward_modules"),
    (lambda: AdaLoraConfig(total_step=10, beta1="0.5"), "beta1"),
    (lambda: AdaLoraConfig(total_step=10.5), "total_step"),
    (lambda: AdaLoraConfig(total_step=10, rank_pattern={"x": [1, 0]}), "rank_pattern"),
    (lambda: PromptTuningConfig(num_virtual_tokens=4, token_dim="32"), "token_dim"),
    (lambda: PromptTuningConfig(num_virtual_tokens=4.0), "num_virtual_tokens"),
    (lambda: PrefixTuningConfig(num_virtual_tokens=4, prefix_projection="no"), "prefix_projection"),
    (lambda: PromptEncoderConfig(num_virtual_tokens=4, encoder_dropout=float("nan")), "encoder_dropout"),
    (lambda: PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=0), "encoder_hidden_size"),
    (lambda: AdaptionPromptConfig(adapter_len=4, adapter_layers=np.float32(1)), "adapter_layers"),
])
def test_bad_config_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_bad_value_in_adapter_config_json_names_field_and_file(tmp_path):
    folder = _saved(tmp_path)
    file = os.path.join(folder, CONFIG)
    data = json.load(open(file))
    base = _base()
    before = _state(base)
    with open(file, "w") as f:
        f.write(json.dumps({**data, "lora_alpha": float("nan")}))  # json writes NaN
    with pytest.raises(ValueError, match=rf"{file}: lora_alpha must be a finite int or float, got nan"):
        PeftModel.from_pretrained(base, folder)
    assert _state(base) == before


# ----- loading: exact match with the config, nothing half-loaded ---------------------------------------------
def _rewrite_weights(folder, change):
    file = os.path.join(folder, WEIGHTS)
    weights = load_file(file)
    change(weights)
    save_file(weights, file)
    return file


def test_missing_adapter_tensor_raises_unless_strict_false(tmp_path):
    folder = _saved(tmp_path)
    saved = load_file(os.path.join(folder, WEIGHTS))
    _rewrite_weights(folder, lambda w: w.pop(LORA_A))
    base = _base()
    before = _state(base)
    with pytest.raises(ValueError, match=r"lacks weights its config promises: \['base_model.model.transformer.h.0"
                                         r".attn.c_attn.lora_A.default.weight'\].*strict=False"):
        PeftModel.from_pretrained(base, folder)
    assert _state(base) == before
    with pytest.warns(UserWarning, match="lacks weights its config promises"):
        model = PeftModel.from_pretrained(base, folder, strict=False)
    loaded = get_peft_model_state_dict(model)
    assert loaded.keys() == saved.keys() and not np.array_equal(loaded[LORA_A], saved[LORA_A])
    assert all(np.array_equal(loaded[k], saved[k]) for k in saved if k != LORA_A)


def test_unknown_and_base_model_tensors_are_refused(tmp_path):
    folder = _saved(tmp_path)
    unknown = "base_model.model.transformer.h.0.attn.c_attn.lora_C.weight"
    _rewrite_weights(folder, lambda w: w.update({unknown: np.ones((2, 2), np.float32)}))
    base = _base()
    before = _state(base)
    with pytest.raises(ValueError, match=rf"match no parameter of the model.*{unknown}"):
        PeftModel.from_pretrained(base, folder)
    assert _state(base) == before

    wte = "base_model.model.transformer.wte.weight"
    _rewrite_weights(folder, lambda w: (w.pop(unknown), w.update({wte: np.full((96, 32), 7.0, np.float32)})))
    with pytest.raises(ValueError, match=rf"base model weights that adapter 'default' does not own.*{wte}"):
        PeftModel.from_pretrained(base, folder)
    assert _state(base) == before
    original = base.transformer.wte.weight.asnumpy().copy()
    with pytest.warns(UserWarning, match="does not own"):
        model = PeftModel.from_pretrained(base, folder, strict=False)
    assert np.array_equal(model.get_base_model().transformer.wte.weight.asnumpy(), original)  # never overwritten


def test_non_finite_tensor_is_refused_naming_key_and_file(tmp_path):
    folder = _saved(tmp_path)

    def poison(weights):
        weights[LORA_A][0, 0] = np.inf

    file = _rewrite_weights(folder, poison)
    base = _base()
    before = _state(base)
    with pytest.raises(ValueError, match=rf"{file} holds NaN or infinite values in \['{LORA_A}'\]"):
        PeftModel.from_pretrained(base, folder)
    assert _state(base) == before


def test_load_adapter_refuses_existing_name_and_rolls_back_a_failed_load(tmp_path):
    folder = _saved(tmp_path)
    model = PeftModel.from_pretrained(_base(), folder)
    before = _state(model)
    with pytest.raises(ValueError, match="Adapter 'default' already exists"):
        model.load_adapter(folder, "default")
    assert _state(model) == before and list(model.peft_config) == ["default"]

    # "extra" targets c_fc (new layers) and shares nothing with c_attn: a failed load must undo both
    extra = os.path.join(folder, "extra")
    shape_cut = "base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"
    _rewrite_weights(extra, lambda w: w.update({shape_cut: w[shape_cut][:, :1]}))
    with pytest.raises(ValueError, match=rf"Shape mismatch for '{shape_cut}'"):
        model.load_adapter(extra, "other")
    assert _state(model) == before and list(model.peft_config) == ["default"]
    model.add_adapter("both", LoraConfig(r=2, target_modules=["c_attn", "c_fc"]))
    before = _state(model)
    with pytest.raises(ValueError, match="Shape mismatch"):
        model.load_adapter(extra, "other")
    assert _state(model) == before and list(model.peft_config) == ["default", "both"]


def test_prompt_adapter_failed_load_is_rolled_back(tmp_path):
    model = get_peft_model(_base(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.save_pretrained(str(tmp_path / "p"))
    _rewrite_weights(str(tmp_path / "p"), lambda w: w.update(prompt_embeddings=w["prompt_embeddings"][:3]))
    before = _state(model)
    with pytest.raises(ValueError, match=r"Shape mismatch for 'prompt_embeddings': checkpoint has \(3, 32\)"):
        model.load_adapter(str(tmp_path / "p"), "other")
    assert _state(model) == before and list(model.peft_config) == ["default"]


# ----- damaged files name the file and the problem -------------------------------------------------------------
def _damage(file, change):
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(change(data))


@pytest.mark.parametrize("change,problem", [
    (lambda data: b"", "header too small"),
    (lambda data: data[:-10], "incomplete metadata"),
    (lambda data: b"\xff" * 64, "header too large"),
])
def test_damaged_weights_files_name_the_file(tmp_path, change, problem):
    folder = _saved(tmp_path)
    file = os.path.join(folder, WEIGHTS)
    _damage(file, change)
    base = _base()
    before = _state(base)
    with pytest.raises(ValueError, match=rf"{file} is not a readable safetensors file.*{problem}"):
        PeftModel.from_pretrained(base, folder)
    assert _state(base) == before
    model_dir = str(tmp_path / "model")
    base.save_pretrained(model_dir)
    _damage(os.path.join(model_dir, "model.safetensors"), change)
    with pytest.raises(ValueError, match=rf"{model_dir}/model.safetensors is not a readable safetensors file"):
        GPT2LMHeadModel.from_pretrained(model_dir)


@pytest.mark.parametrize("text,problem", [
    ('{"peft_type": "LORA",', "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, found list"),
    ('{"r": 4}', "has no 'peft_type'"),
])
def test_damaged_config_files_name_the_file(tmp_path, text, problem):
    folder = _saved(tmp_path)
    file = os.path.join(folder, CONFIG)
    with open(file, "w") as f:
        f.write(text)
    with pytest.raises(ValueError, match=rf"{file}.*{problem}"):
        PeftModel.from_pretrained(_base(), folder)
    if problem != "has no 'peft_type'":
        model_dir = str(tmp_path / "model")
        _base().save_pretrained(model_dir)
        with open(os.path.join(model_dir, "config.json"), "w") as f:
            f.write(text)
        with pytest.raises(ValueError, match=rf"{model_dir}/config.json.*{problem}"):
            GPT2LMHeadModel.from_pretrained(model_dir)


def test_tokenizer_save_that_fails_leaves_the_folder_as_it_was(tmp_path):
    from mindpeft.models import Tokenizer

    tokenizer = Tokenizer.from_pretrained(os.path.join(REPO, "tutorials", "data", "tiny-gpt2-reviews"))
    folder = str(tmp_path / "tok")
    tokenizer.save_pretrained(folder)
    before = _files(folder)
    tokenizer.model_max_length = object()  # tokenizer_config.json cannot hold it
    with pytest.raises(TypeError, match="'model_max_length': Object of type object is not JSON serializable"):
        tokenizer.save_pretrained(folder)
    assert _files(folder) == before and _temporaries(folder) == []
