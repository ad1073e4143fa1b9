"""AdaLoRA: HF peft's outputs, regularised loss, gradients, rank allocation and files."""
import numpy as np
import peft
import pytest
import torch
import mindspore as ms
from mindspore import Tensor, nn

from mindpeft import AdaLoraConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM
from mindpeft.training import TrainStep, model_loss
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model

CONFIG = dict(task_type="CAUSAL_LM", init_r=6, target_r=2, tinit=1, tfinal=2, total_step=8, lora_alpha=4,
              target_modules=["c_attn", "c_fc"])


def _pair(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"), peft.AdaLoraConfig(**CONFIG)).eval()
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), AdaLoraConfig(**CONFIG))
    ours.set_train(False)
    with torch.no_grad():  # trained-looking singular vectors and values, copied into mindpeft
        for _, p in hf.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    params = dict(ours.parameters_and_names())
    for name, p in hf.named_parameters():
        if "lora_" in name:
            params[name].set_data(Tensor(p.detach().numpy()))
    return path, hf, ours


def test_adalora_matches_hf_peft_loss_gradients_rank_allocation_and_files(tiny_model_dir, tmp_path):
    path, hf, ours = _pair(tiny_model_dir)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    ids = rand_ids((2, 7))
    expected = hf(input_ids=torch_ids(ids), labels=torch_ids(ids))
    got = ours(input_ids=ms_ids(ids), labels=ms_ids(ids))
    assert max_diff(got["logits"], expected.logits.detach()) < 1e-4
    assert abs(float(got["loss"]) - float(expected.loss)) < 1e-4  # includes the orthogonal regulariser
    expected.loss.backward()
    params = ours.trainable_params()
    _, grads = ms.value_and_grad(model_loss(ours), None, params)(input_ids=ms_ids(ids), labels=ms_ids(ids))
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters() if p.requires_grad}
    assert max(np.abs(g.asnumpy() - hf_grads[p.name]).max() for p, g in zip(params, grads)) < 1e-5

    for step in range(8):  # warm-up, cubic budget decrease, final masking
        hf.base_model.update_and_allocate(step)
        ours.base_model.update_and_allocate(step, grads)
    pattern = ours.peft_config["default"].rank_pattern
    assert pattern == hf.peft_config["default"].rank_pattern
    assert sum(sum(v) for v in pattern.values()) == 2 * len(pattern)  # target_r per layer on average
    e = ours.get_base_model().transformer.h[0].attn.c_attn.lora_E["default"].asnumpy().ravel()
    kept = pattern["transformer.h.0.attn.c_attn.lora_E.default"]
    assert not e[~np.array(kept)].any() and e[np.array(kept)].all()

    hf.save_pretrained(str(tmp_path / "hf"))
    with torch.no_grad():
        reference = hf(input_ids=torch_ids(ids)).logits.numpy()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), str(tmp_path / "hf"))
    assert loaded.get_base_model().transformer.h[0].attn.c_attn.lora_A["default"].shape == (sum(kept), 32)
    assert max_diff(loaded(input_ids=ms_ids(ids))["logits"], reference) < 1e-4
    greedy = hf.generate(input_ids=torch_ids(ids), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                         pad_token_id=0).numpy()
    np.testing.assert_array_equal(loaded.generate(input_ids=ms_ids(ids), max_new_tokens=3, eos_token_id=-1).asnumpy(),
                                  greedy)
    loaded.save_pretrained(str(tmp_path / "ms"))
    back = peft.PeftModel.from_pretrained(torch_model(path, "gpt2", "causal"), str(tmp_path / "ms")).eval()
    with torch.no_grad():
        assert max_diff(back(input_ids=torch_ids(ids)).logits, reference) < 1e-4


def test_adalora_jit_training_with_rank_allocation(tiny_model_dir):
    _, _, model = _pair(tiny_model_dir)
    ids = rand_ids((4, 8))
    batch = {"input_ids": ms_ids(ids), "labels": ms_ids(ids)}
    params = model.trainable_params()
    loss_py, grads_py = ms.value_and_grad(model_loss(model), None, params)(**batch)
    loss_jit, grads_jit = ms.jit(ms.value_and_grad(model_loss(model), None, params))(**batch)
    assert abs(float(loss_py) - float(loss_jit)) < 1e-5
    assert max(np.abs(a.asnumpy() - b.asnumpy()).max() for a, b in zip(grads_py, grads_jit)) < 1e-5
    step = TrainStep(model, nn.Adam(params, learning_rate=1e-2), return_grads=True)
    losses = []
    for i in range(8):
        loss, grads = step(**batch)
        model.base_model.update_and_allocate(i, grads)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    kept = [sum(v) for v in model.peft_config["default"].rank_pattern.values()]
    assert sum(kept) == 2 * len(kept)


@pytest.mark.parametrize("kwargs,message", [
    ({"total_step": None}, "total_step` is None"),
    ({"total_step": 10, "tinit": 6, "tfinal": 4}, "don't allow for a budgeting phase"),
    ({"total_step": 10, "orth_reg_weight": -1}, "orth_reg_weight` should be greater than or equal to 0"),
])
def test_adalora_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaLoraConfig(**kwargs)


def test_adalora_allows_one_trainable_adapter(tiny_model_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")),
                           AdaLoraConfig(**CONFIG))
    with pytest.raises(ValueError, match="supports only 1 trainable adapter"):
        model.add_adapter("second", AdaLoraConfig(**CONFIG))
