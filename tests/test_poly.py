"""Poly (Polytropon / Multi-Head Routing) against HF peft: numbers both ways with task_ids, files, T5, generation,
routing in train and eval mode, jit training, errors."""
import copy

import mindspore as ms
import numpy as np
import peft
import pytest
import torch
from mindspore import Tensor
from mindspore.experimental import optim

import mindpeft
from mindpeft import PeftModel, PolyConfig, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from mindpeft.models.modeling_utils import write_parameter
from mindpeft.training import TrainStep
from mindpeft.tuners.poly import PolyRouter
from mindpeft.tuners.tuners_utils import BaseTunerLayer
from conftest import adapter_shapes as _shapes, max_diff, ms_ids, MsMLP, rand_ids, torch_ids, torch_model

X = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
TASKS = np.array([0, 2, 1])
CASES = [  # plain Poly, and Multi-Head Routing (n_splits > 1)
    {"r": 2, "n_tasks": 3, "n_skills": 4, "n_splits": 1},
    {"r": 3, "n_tasks": 3, "n_skills": 2, "n_splits": 4},
]


def _hf_out(hf, x=X, tasks=TASKS):
    # HF peft's plain PeftModel.forward drops task_ids for a custom model; its PolyModel takes them.
    with torch.no_grad():
        return hf.base_model(torch.tensor(x), task_ids=torch.tensor(tasks)).numpy()


def _ms_out(model, x=X, tasks=TASKS):
    return model(Tensor(x), task_ids=Tensor(tasks, ms.int32)).asnumpy()


def _spread_hf_routers(hf):
    """Router logits of N(0, 1) instead of U(+-1e-3), so that tasks differ clearly."""
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("module_logits"):
                param.normal_()


def _spread_routers(model):
    for name, param in model.parameters_and_names():
        if name.endswith("module_logits"):
            write_parameter(param, np.random.standard_normal(param.shape))


def _close(a, b):
    return max_diff(a, b) < 1e-4 + 1e-5 * np.abs(b).max()


@pytest.mark.parametrize("kwargs", CASES)
def test_mlp_matches_hf_peft_both_ways(torch_mlp, tmp_path, kwargs):
    config = dict(target_modules=["lin0", "lin1"], init_weights=False, **kwargs)
    with torch.no_grad():
        base = torch_mlp(torch.tensor(X)).numpy()
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.PolyConfig(**config)).eval()
    _spread_hf_routers(hf)
    hf.save_pretrained(str(tmp_path / "hf"))
    expected = _hf_out(hf)
    assert max_diff(expected, base) > 1e-2
    assert max_diff(_hf_out(hf, tasks=np.array([1, 1, 1])), expected) > 1e-4  # the task changes the output

    loaded = PeftModel.from_pretrained(MsMLP(torch_mlp), str(tmp_path / "hf"))  # made by HF, loaded by mindpeft
    assert _close(_ms_out(loaded), expected)
    assert _close(_ms_out(loaded, tasks=np.array([1, 1, 1])), _hf_out(hf, tasks=np.array([1, 1, 1])))

    ours = get_peft_model(MsMLP(torch_mlp), PolyConfig(**config))
    ours.set_train(False)
    _spread_routers(ours)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # made by mindpeft, loaded by HF
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")
    assert "base_model.model.lin0.poly_router.module_logits" in _shapes(tmp_path / "ms")
    adapted = _ms_out(ours)
    back = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path / "ms")).eval()
    assert _close(_hf_out(back), adapted)

    with loaded.disable_adapter():  # no routing: task_ids are not needed
        assert max_diff(loaded(Tensor(X)), base) < 1e-5
    unloaded = loaded.unload()
    assert not any(isinstance(c, BaseTunerLayer) for _, c in unloaded.cells_and_names())
    assert max_diff(unloaded(Tensor(X)), base) < 1e-5


def test_default_init_is_the_identity_with_hf_shapes(torch_mlp):
    config = dict(target_modules=["lin0", "lin1"], n_tasks=2, n_splits=2)
    ours = get_peft_model(MsMLP(torch_mlp), PolyConfig(**config))
    hf = peft.get_peft_model(copy.deepcopy(torch_mlp), peft.PolyConfig(**config))
    with torch.no_grad():
        assert max_diff(_ms_out(ours, tasks=np.array([0, 1, 1])), torch_mlp(torch.tensor(X))) < 1e-5
    assert ({n: tuple(p.shape) for n, p in ours.parameters_and_names()}
            == {n: tuple(p.shape) for n, p in hf.named_parameters()})
    for name, param in ours.parameters_and_names():  # HF peft's init: A ~ U(+-1/sqrt(in/splits)), B 0, logits 1e-3
        values = param.asnumpy()
        if "poly_lora_A" in name:
            bound = 1 / np.sqrt(values.shape[2])
            assert np.abs(values).max() <= bound and np.abs(values).max() > 0.8 * bound
        elif "poly_lora_B" in name:
            assert not values.any()
        elif "module_logits" in name:
            assert 0 < np.abs(values).max() <= 1e-3


def test_two_adapters_switch_and_load_in_hf_peft(torch_mlp, tmp_path):
    ours = get_peft_model(MsMLP(torch_mlp), PolyConfig(target_modules=["lin0", "lin1"], init_weights=False,
                                                       n_tasks=3))
    ours.add_adapter("other", PolyConfig(target_modules=["lin1"], init_weights=False, n_tasks=4, n_skills=2, r=1))
    ours.set_train(False)
    _spread_routers(ours)
    first = _ms_out(ours)
    ours.set_adapter("other")
    second = _ms_out(ours, tasks=np.array([3, 0, 1]))
    assert max_diff(first, second) > 1e-3
    ours.save_pretrained(str(tmp_path))
    hf = peft.PeftModel.from_pretrained(copy.deepcopy(torch_mlp), str(tmp_path)).eval()
    hf.load_adapter(str(tmp_path / "other"), adapter_name="other")
    assert _close(_hf_out(hf), first)
    hf.set_adapter("other")
    assert _close(_hf_out(hf, tasks=np.array([3, 0, 1])), second)


def _t5_inputs():
    return {"input_ids": rand_ids((2, 7)), "decoder_input_ids": rand_ids((2, 4), seed=1)}


def test_t5_matches_hf_peft_both_ways_and_generates(tiny_model_dir, tmp_path):
    path = tiny_model_dir("t5", "seq2seq")
    config = dict(task_type="SEQ_2_SEQ_LM", init_weights=False, r=2, n_tasks=2, n_skills=3)  # default targets q, v
    hf = peft.get_peft_model(torch_model(path, "t5", "seq2seq"), peft.PolyConfig(**config)).eval()
    _spread_hf_routers(hf)
    ours = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(path), PolyConfig(**config))
    ours.set_train(False)
    _spread_routers(ours)
    assert ours.peft_config["default"].target_modules == {"q", "v"}
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    hf.save_pretrained(str(tmp_path / "hf"))
    ours.save_pretrained(str(tmp_path / "ms"))
    assert _shapes(tmp_path / "ms") == _shapes(tmp_path / "hf")

    inputs, tasks = _t5_inputs(), np.array([1, 0])
    with torch.no_grad():
        expected = hf(**{k: torch_ids(v) for k, v in inputs.items()}, task_ids=torch_ids(tasks)).logits.numpy()
    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(path), str(tmp_path / "hf"))
    got = loaded(**{k: ms_ids(v) for k, v in inputs.items()}, task_ids=ms_ids(tasks))["logits"].asnumpy()
    assert _close(got, expected)
    adapted = ours(**{k: ms_ids(v) for k, v in inputs.items()}, task_ids=ms_ids(tasks))["logits"].asnumpy()
    back = peft.PeftModel.from_pretrained(torch_model(path, "t5", "seq2seq"), str(tmp_path / "ms")).eval()
    with torch.no_grad():
        assert _close(back(**{k: torch_ids(v) for k, v in inputs.items()}, task_ids=torch_ids(tasks)).logits, adapted)

    # Greedy decoding: every step routed by the task ids, as HF peft's full forward at each step.
    ids, dec = inputs["input_ids"], torch.zeros((2, 1), dtype=torch.long)
    with torch.no_grad():
        for _ in range(4):
            logits = hf(input_ids=torch_ids(ids), decoder_input_ids=dec, task_ids=torch_ids(tasks)).logits
            dec = torch.cat([dec, logits[:, -1].argmax(-1, keepdim=True)], 1)
    got = loaded.generate(input_ids=ms_ids(ids), task_ids=ms_ids(tasks), max_new_tokens=4, eos_token_id=-1)
    np.testing.assert_array_equal(got.asnumpy(), dec.numpy())


def test_router_eval_is_sigmoid_and_training_a_seeded_relaxed_bernoulli():
    mindpeft.set_seed(0)  # our draws must not depend on which tests ran before (the graph seed is process-wide)
    config = PolyConfig(n_tasks=2, n_skills=2, n_splits=1)
    router = PolyRouter(config)
    logits = np.array([[2.0, -1.0], [0.0, 0.5]], np.float32)
    write_parameter(router.module_logits, logits)
    tasks = Tensor(np.array([0, 1] * 2000), ms.int32)
    router.set_train(False)
    probs = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(router(tasks).asnumpy()[:2, 0], probs / probs.sum(-1, keepdims=True), atol=1e-6)

    # Training: s / sum(s) with s ~ RelaxedBernoulli(temperature=1, logits): the quantiles of our draws match
    # those of torch's sampler (HF peft's) for the same logits.
    router.set_train(True)
    ours = router(tasks).asnumpy().reshape(2000, 2, 2)
    dist = torch.distributions.RelaxedBernoulli(torch.tensor(1.0), logits=torch.tensor(logits).expand(2000, 2, 2))
    sample = dist.rsample().numpy()
    theirs = sample / (sample.sum(-1, keepdims=True) + 1e-12)
    for quantile in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert np.abs(np.quantile(ours[:, :, 0], quantile, axis=0)
                      - np.quantile(theirs[:, :, 0], quantile, axis=0)).max() < 0.03
    assert max_diff(router(tasks), ours.reshape(-1, 1, 2)) > 1e-3  # a new draw every call

    draws = []
    for _ in range(2):  # the same seed, the same draws
        mindpeft.set_seed(7)
        again = PolyRouter(config)
        again.set_train(True)
        draws.append(again(tasks).asnumpy())
    np.testing.assert_array_equal(*draws)


def _mse(model):
    def loss_fn(x, y, task_ids):
        return ((model(x, task_ids=task_ids) - y) ** 2).mean()

    return loss_fn


def test_jit_steps_lower_the_loss_and_equal_pynative(torch_mlp):
    y = Tensor(np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32))
    task_batches = [np.array([0, 2, 1]), np.array([1, 1, 0]), np.array([2, 0, 2])]  # other tasks every step
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(MsMLP(torch_mlp), PolyConfig(target_modules=["lin0", "lin1"], n_tasks=3, n_splits=2))
        model.set_train(False)  # deterministic routing: the two runs must agree
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model), jit=jit)
        losses = [float(step(x=Tensor(X), y=y, task_ids=Tensor(task_batches[i % 3], ms.int32))) for i in range(9)]
        assert losses[-3] < losses[0] - 1e-3 and losses[-1] < losses[2]
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        outputs = [_ms_out(model, tasks=t) for t in task_batches]  # each batch read with its own task ids
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()], outputs))
    (jit_losses, jit_params, jit_out), (py_losses, py_params, py_out) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-5
    assert max(max_diff(a, b) for a, b in zip(jit_out, py_out)) < 1e-5


def test_training_mode_routing_repeats_under_a_seed(torch_mlp):
    y = Tensor(np.zeros((3, 5, 8), np.float32))
    runs = []
    for _ in range(2):
        mindpeft.set_seed(3)
        model = get_peft_model(MsMLP(torch_mlp), PolyConfig(target_modules=["lin0", "lin1"], n_tasks=3,
                                                            init_weights=False))
        model.set_train(True)  # relaxed Bernoulli routing
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model))
        runs.append([float(step(x=Tensor(X), y=y, task_ids=Tensor(TASKS, ms.int32))) for _ in range(4)])
    assert runs[0] == runs[1]


def test_t5_jit_steps_equal_pynative_with_other_tasks_every_step(tiny_model_dir):
    path = tiny_model_dir("t5", "seq2seq")
    batch = {"input_ids": ms_ids(rand_ids((4, 6))), "labels": ms_ids(rand_ids((4, 3), seed=2))}
    task_batches = [ms_ids([0, 1, 1, 0]), ms_ids([1, 1, 0, 0]), ms_ids([0, 0, 0, 1])]
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(path),
                               PolyConfig(task_type="SEQ_2_SEQ_LM", n_tasks=2, init_weights=False))
        _spread_routers(model)
        model.set_train(False)  # deterministic routing: the two runs must agree
        before = [float(model(**batch, task_ids=t)["loss"]) for t in task_batches]
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=2e-2), jit=jit)
        losses = [float(step(**batch, task_ids=t)) for t in task_batches]  # each step stores its own task ids
        after = [float(model(**batch, task_ids=t)["loss"]) for t in task_batches]
        assert sum(after) < sum(before) - 0.01
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    # AdamW's normalised steps magnify float noise in near-zero gradients: 1e-4, not 1e-5, on the weights.
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-4


def test_bad_configs_and_inputs_raise_clear_errors(torch_mlp, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="r must be a positive integer, got 0"):
        PolyConfig(r=0)
    with pytest.raises(ValueError, match="n_tasks must be a positive integer, got 0"):
        PolyConfig(n_tasks=0)
    with pytest.raises(ValueError, match="n_skills must be a positive integer"):
        PolyConfig(n_skills=1.5)
    with pytest.raises(ValueError, match="Unsupported poly_type: 'mhr'"):
        PolyConfig(poly_type="mhr")
    with pytest.raises(ValueError, match="init_weights must be True or False"):
        PolyConfig(init_weights="gaussian")
    with pytest.raises(ValueError, match=r"n_splits \(3\) must divide the layer's in_features \(16\)"):
        get_peft_model(MsMLP(torch_mlp), PolyConfig(target_modules=["lin0"], n_splits=3))
    with pytest.raises(TypeError, match="of type Conv1D is not supported"):
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                       PolyConfig(task_type="CAUSAL_LM"))

    model = get_peft_model(MsMLP(torch_mlp), PolyConfig(target_modules=["lin0", "lin1"], n_tasks=3))
    with pytest.raises(ValueError, match="task_ids should not be None."):
        model(Tensor(X))
    with pytest.raises(ValueError, match="Only 3 tasks available. Found task id = 3"):
        _ms_out(model, tasks=np.array([0, 3, 1]))
    with pytest.raises(ValueError, match="Task ids must be non-negative. Found task id = -1"):
        _ms_out(model, tasks=np.array([0, -1, 1]))
    step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=1e-2), loss_fn=_mse(model))
    y = Tensor(np.zeros((3, 5, 8), np.float32))
    with pytest.raises(ValueError, match="Only 3 tasks available. Found task id = 5"):  # checked in graph mode too
        step(x=Tensor(X), y=y, task_ids=Tensor(np.array([5, 0, 0]), ms.int32))
    with pytest.raises(ValueError, match="Poly adapters cannot be merged"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="Poly adapters cannot be merged"):
        model.merge_adapter()
    with pytest.raises(ValueError, match="task_ids should not be None."):
        get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir("t5", "seq2seq")),
                       PolyConfig(task_type="SEQ_2_SEQ_LM")).generate(input_ids=ms_ids(rand_ids((1, 4))))
