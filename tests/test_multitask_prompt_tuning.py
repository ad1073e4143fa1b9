"""Multitask prompt tuning against HF peft: numbers both ways with task_ids, files, source initialisations,
generation, jit training, errors."""
import numpy as np
import peft
import pytest
import torch
from mindspore.experimental import optim
from safetensors.numpy import load_file

import mindpeft
from mindpeft import MultitaskPromptTuningConfig, PeftModel, get_peft_model
from mindpeft.models import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
from mindpeft.training import TrainStep
from conftest import max_diff, ms_ids, rand_ids, torch_ids, torch_model

AUTO = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "seq_cls": AutoModelForSequenceClassification}
TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "seq_cls": "SEQ_CLS"}
FILE = "adapter_model.safetensors"
TASKS = np.array([2, 0])


def _config(lib, head, **kwargs):
    return lib.MultitaskPromptTuningConfig(task_type=TASK_TYPES[head], num_virtual_tokens=4, num_tasks=3,
                                           num_ranks=2, **kwargs)


def _inputs(head):
    ids = rand_ids((2, 7))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if head == "seq2seq":  # HF peft's forward builds the decoder inputs (led by prompts) from the labels
        inputs["labels"] = rand_ids((2, 4), seed=1)
    return inputs


def _hf_logits(model, inputs, tasks=TASKS):
    with torch.no_grad():
        return model(**{k: torch_ids(v) for k, v in inputs.items()}, task_ids=torch_ids(tasks)).logits.numpy()


def _ms_logits(model, inputs, tasks=TASKS):
    return model(**{k: ms_ids(v) for k, v in inputs.items()}, task_ids=ms_ids(tasks))["logits"].asnumpy()


def _close(a, b):
    return max_diff(a, b) < 1e-4 + 1e-5 * np.abs(b).max()


@pytest.mark.parametrize("family,head", [("gpt2", "causal"), ("llama", "causal"), ("t5", "seq2seq"),
                                         ("bert", "seq_cls")])
def test_matches_hf_peft_both_ways_with_hf_files(tiny_model_dir, tmp_path, family, head):
    path = tiny_model_dir(family, head)
    hf = peft.get_peft_model(torch_model(path, family, head), _config(peft, head)).eval()
    with torch.no_grad():  # task factors of N(0, 1), so that tasks differ clearly
        hf.prompt_encoder.default.prefix_task_cols.normal_()
        hf.prompt_encoder.default.prefix_task_rows.normal_()
    hf.save_pretrained(str(tmp_path / "hf"))
    inputs = _inputs(head)
    expected = _hf_logits(hf, inputs)
    assert max_diff(_hf_logits(hf, inputs, tasks=np.array([1, 1])), expected) > 1e-3

    loaded = PeftModel.from_pretrained(AUTO[head].from_pretrained(path), str(tmp_path / "hf"))  # HF -> mindpeft
    assert _close(_ms_logits(loaded, inputs), expected)
    assert _close(_ms_logits(loaded, inputs, np.array([1, 1])), _hf_logits(hf, inputs, np.array([1, 1])))

    ours = get_peft_model(AUTO[head].from_pretrained(path), _config(mindpeft, head))
    ours.set_train(False)
    assert ours.get_nb_trainable_parameters() == hf.get_nb_trainable_parameters()
    assert {p.name for p in ours.trainable_params()} == {n for n, p in hf.named_parameters() if p.requires_grad}
    ours.save_pretrained(str(tmp_path / "ms"))  # mindpeft -> HF
    shapes = {k: v.shape for k, v in load_file(str(tmp_path / "ms" / FILE)).items()}
    assert shapes == {k: v.shape for k, v in load_file(str(tmp_path / "hf" / FILE)).items()}
    assert set(shapes) >= {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    adapted = _ms_logits(ours, inputs)
    back = peft.PeftModel.from_pretrained(torch_model(path, family, head), str(tmp_path / "ms")).eval()
    assert _close(_hf_logits(back, inputs), adapted)


@pytest.mark.parametrize("init", ["EXACT_SOURCE_TASK", "AVERAGE_SOURCE_TASKS", "ONLY_SOURCE_SHARED"])
def test_target_prompt_starts_from_a_source_adapter_as_in_hf_peft(tiny_model_dir, tmp_path, init):
    path = tiny_model_dir("gpt2", "causal")
    source = peft.get_peft_model(torch_model(path, "gpt2", "causal"), _config(peft, "causal"))
    source.save_pretrained(str(tmp_path))
    kwargs = dict(task_type="CAUSAL_LM", num_virtual_tokens=4, num_ranks=2, num_tasks=1, prompt_tuning_init=init,
                  prompt_tuning_init_task=2, prompt_tuning_init_state_dict_path=str(tmp_path / FILE))
    hf = peft.get_peft_model(torch_model(path, "gpt2", "causal"), peft.MultitaskPromptTuningConfig(**kwargs))
    ours = get_peft_model(AutoModelForCausalLM.from_pretrained(path), MultitaskPromptTuningConfig(**kwargs))
    theirs = {n: p.detach().numpy() for n, p in hf.named_parameters() if n.startswith("prompt_encoder.")}
    mine = {n: p.asnumpy() for n, p in ours.parameters_and_names() if n.startswith("prompt_encoder.")}
    assert set(mine) == set(theirs)
    shared = "prompt_encoder.default.embedding.weight"
    np.testing.assert_array_equal(mine[shared], load_file(str(tmp_path / FILE))["prompt_embeddings"])
    for name in theirs:
        if init != "ONLY_SOURCE_SHARED" or name == shared:  # ONLY_SOURCE_SHARED draws fresh task factors
            np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-6, atol=1e-7, err_msg=name)
    folder = MultitaskPromptTuningConfig(**{**kwargs, "prompt_tuning_init_state_dict_path": str(tmp_path)})
    from_folder = get_peft_model(AutoModelForCausalLM.from_pretrained(path), folder)  # the adapter's folder works too
    np.testing.assert_array_equal(from_folder.prompt_encoder["default"].embedding.weight.asnumpy(), mine[shared])


@pytest.mark.parametrize("family,head", [("gpt2", "causal"), ("t5", "seq2seq")])
def test_generate_with_task_ids_matches_hf_peft(tiny_model_dir, tmp_path, family, head):
    path = tiny_model_dir(family, head)
    hf = peft.get_peft_model(torch_model(path, family, head), _config(peft, head)).eval()
    with torch.no_grad():
        hf.prompt_encoder.default.prefix_task_rows.normal_()
    hf.save_pretrained(str(tmp_path))
    ours = PeftModel.from_pretrained(AUTO[head].from_pretrained(path), str(tmp_path))
    ids = rand_ids((2, 6))
    seq = torch_ids(ids)
    with torch.no_grad():
        if head == "seq2seq":  # HF peft's generate (its forward, with decoder prompts, is for training)
            expected = hf.generate(input_ids=seq, task_ids=torch_ids(TASKS), max_new_tokens=5, do_sample=False,
                                   eos_token_id=-1).numpy()
        else:  # greedy, HF peft's full forward at every step
            for _ in range(5):
                logits = hf(input_ids=seq, task_ids=torch_ids(TASKS)).logits
                seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
            expected = seq.numpy()
    got = ours.generate(input_ids=ms_ids(ids), task_ids=ms_ids(TASKS), max_new_tokens=5, eos_token_id=-1)
    np.testing.assert_array_equal(got.asnumpy(), expected)


def test_jit_steps_lower_the_loss_and_equal_pynative(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    ids = rand_ids((3, 8))
    task_batches = [ms_ids([0, 2, 1]), ms_ids([1, 1, 0]), ms_ids([2, 0, 2])]  # other tasks every step
    batch = {"input_ids": ms_ids(ids), "labels": ms_ids(ids)}
    runs = []
    for jit in (True, False):
        np.random.seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), _config(mindpeft, "causal"))
        model.set_train(False)  # no dropout: the two runs must agree
        frozen = {n: p.asnumpy().copy() for n, p in model.parameters_and_names() if not p.requires_grad}
        before = [float(model(**batch, task_ids=t)["loss"]) for t in task_batches]
        step = TrainStep(model, optim.AdamW(model.trainable_params(), lr=5e-2), jit=jit)
        losses = [float(step(**batch, task_ids=t)) for t in task_batches * 2]
        assert sum(float(model(**batch, task_ids=t)["loss"]) for t in task_batches) < sum(before) - 0.01
        assert all(np.array_equal(p.asnumpy(), frozen[n]) for n, p in model.parameters_and_names() if n in frozen)
        runs.append((losses, [p.asnumpy() for p in model.trainable_params()]))
    (jit_losses, jit_params), (py_losses, py_params) = runs
    assert np.allclose(jit_losses, py_losses, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(jit_params, py_params)) < 1e-4


def test_text_init_copies_word_embeddings(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "great": 3, "movie": 4}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, prompt_tuning_init="TEXT",
                                         prompt_tuning_init_text="great movie", tokenizer_name_or_path=str(tmp_path))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal")), config)
    table = model.get_base_model().transformer.wte.weight.asnumpy()
    np.testing.assert_array_equal(model.prompt_encoder["default"].embedding.weight.asnumpy(), table[[3, 4, 3]])


def test_bad_configs_and_inputs_raise_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="prompt_tuning_init must be one of .* got 'SOURCE_TASK'"):
        MultitaskPromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="SOURCE_TASK")
    with pytest.raises(ValueError, match="num_ranks must be a positive integer, got 0"):
        MultitaskPromptTuningConfig(num_virtual_tokens=2, num_ranks=0)
    with pytest.raises(ValueError, match="num_tasks must be a positive integer"):
        MultitaskPromptTuningConfig(num_virtual_tokens=2, num_tasks="2")
    with pytest.raises(ValueError, match="tokenizer_name_or_path can't be None"):
        MultitaskPromptTuningConfig(num_virtual_tokens=2, prompt_tuning_init="TEXT", prompt_tuning_init_text="x")

    path = tiny_model_dir("gpt2", "causal")
    source = get_peft_model(AutoModelForCausalLM.from_pretrained(path), _config(mindpeft, "causal"))
    source.save_pretrained(str(tmp_path / "source"))
    (tmp_path / "source.bin").write_bytes(b"not read")

    def target(**kwargs):
        config = dict(task_type="CAUSAL_LM", num_virtual_tokens=4, num_ranks=2, prompt_tuning_init="EXACT_SOURCE_TASK",
                      prompt_tuning_init_state_dict_path=str(tmp_path / "source" / FILE))
        get_peft_model(AutoModelForCausalLM.from_pretrained(path), MultitaskPromptTuningConfig(**{**config, **kwargs}))

    with pytest.raises(ValueError, match="prompt_tuning_init_state_dict_path needs to be specified with "
                                         "EXACT_SOURCE_TASK init method"):
        target(prompt_tuning_init_state_dict_path=None)
    with pytest.raises(ValueError, match=r"prompt_tuning_init_state_dict_path '.*missing.safetensors': no such file"):
        target(prompt_tuning_init_state_dict_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"source.bin': mindpeft reads .safetensors files only"):
        target(prompt_tuning_init_state_dict_path=str(tmp_path / "source.bin"))
    with pytest.raises(ValueError, match=r"prefix_task_cols: source \(1, 4, 2\), model \(2, 4, 2\).*set num_tasks=1"):
        target(num_tasks=2)
    with pytest.raises(ValueError, match="prompt_tuning_init_task=3, but the source adapter has 3 tasks"):
        target(prompt_tuning_init_task=3)
    with pytest.raises(ValueError, match=r"prompt_embeddings: source \(4, 32\), model \(2, 32\)"):
        target(num_virtual_tokens=2)

    with pytest.raises(ValueError, match="task_ids cannot be None"):
        source(input_ids=ms_ids(rand_ids((2, 5))))
    with pytest.raises(ValueError, match="Only 3 tasks available. Found task ids from 0 to 3"):
        source(input_ids=ms_ids(rand_ids((2, 5))), task_ids=ms_ids([0, 3]))
    with pytest.raises(ValueError, match="task_ids cannot be None"):
        source.generate(input_ids=ms_ids(rand_ids((2, 5))), max_new_tokens=2)
