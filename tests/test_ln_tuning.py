"""LN tuning against HF peft (numbers, files, merging, training), and the registry of PEFT methods."""
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import peft
import pytest
import torch
from mindspore import Parameter, Tensor, nn
from mindspore.experimental import optim
from safetensors.numpy import load_file

import mindpeft
from mindpeft import LNTuningConfig, PeftConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from mindpeft.training import TrainStep
from mindpeft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, ParameterDict
from mindpeft.utils.peft_types import PeftType
from mindpeft.utils.registry import (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING,
                                     PEFT_TYPE_TO_TUNER_MAPPING, register_peft_method)
from conftest import max_diff, ms_ids, ms_logits, rand_ids, torch_logits, torch_model

AUTO = {"causal": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification}
# HF peft has no default target_modules for BERT: its LayerNorms are all called "LayerNorm".
CASES = [("gpt2", "causal", "CAUSAL_LM", {}), ("bert", "seq_cls", "SEQ_CLS", {"target_modules": ["LayerNorm"]})]
INPUTS = {"input_ids": rand_ids((2, 7))}


def _perturb_hf(model):
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))


def _perturb(model, seed):
    """Move every trainable parameter of a mindpeft model away from its initial (base model) value."""
    rng = np.random.default_rng(seed)
    for param in model.trainable_params():
        noise = 0.3 * rng.standard_normal(param.shape).astype(np.float32)
        param.set_data(Tensor(param.asnumpy() + noise))


def _file_shapes(folder):
    return {k: v.shape for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}


@pytest.mark.parametrize("family,head,task,extra", CASES)
def test_ln_tuning_matches_hf_peft_both_ways(tiny_model_dir, tmp_path, family, head, task, extra):
    path = tiny_model_dir(family, head)
    hf = peft.get_peft_model(torch_model(path, family, head), peft.LNTuningConfig(task_type=task, **extra)).eval()
    ours = get_peft_model(AUTO[head].from_pretrained(path), LNTuningConfig(task_type=task, **extra))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    base = ms_logits(ours, INPUTS)
    assert max_diff(base, torch_logits(hf, INPUTS)) < 1e-4  # the copies start as the base layers

    _perturb_hf(hf)  # made by HF peft, loaded by mindpeft
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = torch_logits(hf, INPUTS)
    loaded = PeftModel.from_pretrained(AUTO[head].from_pretrained(path), str(tmp_path / "hf"))
    assert max_diff(ms_logits(loaded, INPUTS), expected) < 1e-4

    _perturb(ours, seed=1)  # made by mindpeft, loaded by HF peft
    ours.save_pretrained(str(tmp_path / "ms"))
    shapes = _file_shapes(tmp_path / "ms")
    assert shapes == _file_shapes(tmp_path / "hf")
    assert any(k.endswith(".ln_tuning_layers.weight") for k in shapes)
    back = peft.PeftModel.from_pretrained(torch_model(path, family, head), str(tmp_path / "ms")).eval()
    adapted = ms_logits(ours, INPUTS)
    assert max_diff(adapted, base) > 1e-2
    assert max_diff(torch_logits(back, INPUTS), adapted) < 1e-4

    before = {n: p.asnumpy().copy() for n, p in loaded.parameters_and_names()}
    loaded.merge_adapter()
    assert max_diff(ms_logits(loaded, INPUTS), expected) < 1e-4
    loaded.unmerge_adapter()
    assert all(np.array_equal(p.asnumpy(), before[n]) for n, p in loaded.parameters_and_names())
    assert max_diff(ms_logits(loaded, INPUTS), expected) < 1e-4
    merged = loaded.merge_and_unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in merged.cells_and_names())
    assert max_diff(ms_logits(merged, INPUTS), expected) < 1e-4


def test_ln_tuning_multiple_adapters_match_hf_peft(tiny_model_dir, tmp_path):
    path = tiny_model_dir("gpt2", "causal")
    base = ms_logits(AutoModelForCausalLM.from_pretrained(path), INPUTS)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LNTuningConfig(task_type="CAUSAL_LM"))
    model.set_train(False)
    _perturb(model, seed=1)
    first = ms_logits(model, INPUTS)
    model.add_adapter("b", LNTuningConfig(task_type="CAUSAL_LM"))
    assert model.active_adapter == "default" and max_diff(ms_logits(model, INPUTS), first) == 0.0
    model.set_adapter("b")
    assert max_diff(ms_logits(model, INPUTS), base) < 1e-6  # a new adapter copies the unmodified base layers
    _perturb(model, seed=2)  # only b's copies are trainable now
    second = ms_logits(model, INPUTS)
    with model.disable_adapter():
        assert max_diff(ms_logits(model, INPUTS), base) < 1e-6
    with pytest.raises(ValueError, match="LN tuning runs one adapter at a time"):
        model.base_model.set_adapter(["default", "b"])
    with pytest.raises(ValueError, match="does not allow merging more than one adapter"):
        model.merge_adapter(["default", "b"])
    model.save_pretrained(str(tmp_path))

    hf = peft.PeftModel.from_pretrained(torch_model(path, "gpt2", "causal"), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "b"), adapter_name="b")
    assert max_diff(torch_logits(hf, INPUTS), first) < 1e-4
    hf.set_adapter("b")
    assert max_diff(torch_logits(hf, INPUTS), second) < 1e-4

    model.merge_adapter()
    assert max_diff(ms_logits(model, INPUTS), second) < 1e-4
    model.add_adapter("c", LNTuningConfig(task_type="CAUSAL_LM"))  # copies of the unmerged base layers
    model.set_adapter("c")
    assert max_diff(ms_logits(model, INPUTS), base) < 1e-6
    model.delete_adapter("c")
    model.set_adapter("b")
    model.merge_adapter()  # switching adapters unmerges b first
    with pytest.warns(UserWarning, match="Unmerging the model first"):
        model.set_adapter("default")
    assert max_diff(ms_logits(model, INPUTS), first) < 1e-4
    model.delete_adapter("b")
    assert list(model.peft_config) == ["default"] and max_diff(ms_logits(model, INPUTS), first) < 1e-4
    assert max_diff(ms_logits(model.unload(), INPUTS), base) < 1e-6


def test_ln_tuning_jit_steps_lower_the_loss_and_equal_pynative(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    batch = {"input_ids": ms_ids(rand_ids((4, 8))), "labels": ms_ids(rand_ids((4, 8)))}
    runs = []
    for jit in (True, False):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LNTuningConfig(task_type="CAUSAL_LM"))
        model.set_train(False)  # no dropout: the two runs must agree
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), jit=jit)
        losses = [float(step(**batch)) for _ in range(5)]
        assert losses[-1] < losses[0] - 0.01
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5


def test_ln_tuning_bad_configs(tiny_model_dir):
    with pytest.raises(ValueError, match="target_modules must be a string or a list of strings"):
        LNTuningConfig(target_modules=3)
    with pytest.raises(ValueError, match="Please specify `target_modules` in `peft_config`: no default for "
                                         "model_type 'bert'"):
        get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir("bert", "seq_cls")),
                       LNTuningConfig(task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match=r"Target modules \{'layernorm'\} not found in the base model"):
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                       LNTuningConfig(target_modules=["layernorm"]))


# ----- the registry: a method defined outside mindpeft ---------------------------------------------------------
@dataclass
class ScaleConfig(PeftConfig):
    """A learned scale per output feature of the targeted ``nn.Dense`` layers."""

    target_modules: Optional[list] = field(default=None)
    modules_to_save: Optional[list] = field(default=None)

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType("TEST_SCALE")


class ScaleLayer(nn.Cell, BaseTunerLayer):
    adapter_layer_names = ("scale_vector",)

    def __init__(self, base_layer, adapter_name):
        super().__init__()
        self._init_tuner_layer(base_layer)
        self.scale_vector = ParameterDict()
        self.update_layer(adapter_name)

    def update_layer(self, adapter_name):
        self.scale_vector[adapter_name] = Parameter(Tensor(np.ones(self.base_layer.out_channels, np.float32)))
        self.set_adapter(self.active_adapters or (adapter_name,))

    def construct(self, x):
        out = self.base_layer(x)
        for name in self._active_in_layer:
            out = out * getattr(self.scale_vector, name)
        return out


class ScaleModel(BaseTuner):
    prefix = "scale_"

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        setattr(parent, target_name, ScaleLayer(target, adapter_name))

    def _mark_only_adapters_as_trainable(self, model):
        for name, param in model.parameters_and_names():
            param.requires_grad = self.prefix in name


class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = nn.Dense(4, 3, weight_init="ones", bias_init="zeros")

    def construct(self, x):
        return self.proj(x)


@pytest.fixture
def scale_method():
    register_peft_method(name="test_scale", config_cls=ScaleConfig, model_cls=ScaleModel)
    yield
    for mapping in (PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING):
        del mapping["TEST_SCALE"]


def test_a_method_registered_outside_mindpeft_works_end_to_end(scale_method, tmp_path):
    assert mindpeft.PEFT_TYPE_TO_CONFIG_MAPPING["TEST_SCALE"] is ScaleConfig
    assert PEFT_TYPE_TO_PREFIX_MAPPING["TEST_SCALE"] == "scale_"
    config = PeftConfig.from_peft_type(peft_type="TEST_SCALE", target_modules=["proj"])
    assert type(config) is ScaleConfig and config.peft_type == "TEST_SCALE"
    model = get_peft_model(Net(), config)
    assert isinstance(model.base_model, ScaleModel)
    assert [p.name for p in model.trainable_params()] == ["base_model.model.proj.scale_vector.default"]
    x = Tensor(np.ones((2, 4), np.float32))
    model.trainable_params()[0].set_data(Tensor(np.array([1.0, 2.0, 3.0], np.float32)))
    np.testing.assert_allclose(model(x).asnumpy(), [[4.0, 8.0, 12.0]] * 2)
    model.save_pretrained(str(tmp_path))
    assert type(PeftConfig.from_pretrained(str(tmp_path))) is ScaleConfig
    loaded = PeftModel.from_pretrained(Net(), str(tmp_path))
    np.testing.assert_allclose(loaded(x).asnumpy(), [[4.0, 8.0, 12.0]] * 2)

    with pytest.raises(KeyError, match="There is already a PEFT method called 'test_scale'"):
        register_peft_method(name="test_scale", config_cls=ScaleConfig, model_cls=ScaleModel)
    with pytest.raises(ValueError, match="in lower case without a '_' suffix"):
        register_peft_method(name="Other", config_cls=ScaleConfig, model_cls=ScaleModel)
    with pytest.raises(ValueError, match="Inconsistent prefixes found: 'other_' and 'scale_'"):
        register_peft_method(name="other", config_cls=ScaleConfig, model_cls=ScaleModel, prefix="other_")


def test_unregistered_peft_types_are_refused():
    with pytest.raises(ValueError, match=r"Unknown or unsupported peft_type 'TEST_SCALE'; supported: \['ADALORA'"):
        PeftConfig.from_peft_type(peft_type="TEST_SCALE")
    with pytest.raises(ValueError, match="is not a valid PeftType"):
        PeftType("NOT_A_METHOD")


def test_config_mapping_and_peft_model_import_no_tuner():
    """The registry breaks the old import circle config -> mapping -> peft_model -> tuners -> config."""
    package_dir = os.path.dirname(mindpeft.__file__)
    code = textwrap.dedent(f"""
        import sys, types
        package = types.ModuleType("mindpeft")  # skip mindpeft/__init__.py, which imports every tuner
        package.__path__ = [{package_dir!r}]
        sys.modules["mindpeft"] = package
        import mindpeft.config, mindpeft.mapping, mindpeft.peft_model
        print(sorted(name for name in sys.modules if name.startswith("mindpeft.tuners")))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
