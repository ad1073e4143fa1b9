"""Clear errors instead of deep kernel failures or silent garbage: config validation before allocation, checkpoint
and config mismatches, input and label checks (values in PyNative, shapes under mindspore.jit too)."""
import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor
from mindspore.experimental.optim import AdamW
from safetensors.numpy import load_file, save_file

from mindpeft import (LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model,
                      models)
from mindpeft.models.configuration_utils import ConfigError
from mindpeft.models.model_outputs import cross_entropy
from mindpeft.training import TrainStep
from conftest import TINY_CONFIGS, max_diff, ms_ids, rand_ids, torch_ids, torch_model


def _copy_model(src, dst, config_edit=None, weights_edit=None):
    """A copy of the model folder ``src`` at ``dst`` with its config dict and/or weights dict edited in place."""
    os.makedirs(dst, exist_ok=True)
    config = json.load(open(os.path.join(src, "config.json")))
    if config_edit:
        config_edit(config)
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    if weights_edit:
        weights = load_file(os.path.join(src, "model.safetensors"))
        weights_edit(weights)
        save_file(weights, os.path.join(dst, "model.safetensors"))
    else:
        shutil.copy(os.path.join(src, "model.safetensors"), os.path.join(dst, "model.safetensors"))
    return str(dst)


def _never_built(monkeypatch, *classes):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} was built from an invalid config")

    for cls in classes:
        monkeypatch.setattr(cls, "__init__", refuse)


# ----- config validation ----------------------------------------------------------------------------------------


def test_config_with_another_architectures_keys_fails_before_building(tiny_model_dir, tmp_path, monkeypatch):
    path = _copy_model(tiny_model_dir("gpt2", "causal"), tmp_path / "m",
                       config_edit=lambda c: c.update(model_type="llama"))
    _never_built(monkeypatch, models.LlamaForCausalLM, models.LlamaModel)
    with pytest.raises(ConfigError) as err:
        models.AutoModelForCausalLM.from_pretrained(path)
    message = str(err.value)
    assert os.path.join(path, "config.json") in message
    assert "model_type 'llama'" in message
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"):
        assert key in message.split("(a llama")[0]
    assert "fit model_type 'gpt2'" in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(ConfigError, match=r"LlamaConfig cannot read a config whose model_type is 'gpt2'"):
        models.LlamaForCausalLM.from_pretrained(tiny_model_dir("gpt2", "causal"))
    with pytest.raises(ConfigError, match=r"config\.json: invalid config for model_type 'llama'"):
        models.AutoConfig.from_pretrained(path)


@pytest.mark.parametrize("family,edit,expected", [
    ("gpt2", {"n_head": 5}, "n_embd=32 is not divisible by n_head=5"),
    ("gpt2", {"n_layer": 0}, "n_layer=0 must be a positive integer"),
    ("gpt2", {"vocab_size": "96"}, "vocab_size='96' must be a positive integer"),
    ("bert", {"num_attention_heads": 3}, "hidden_size=32 is not divisible by num_attention_heads=3"),
    ("bert", {"intermediate_size": -1}, "intermediate_size=-1 must be a positive integer"),
    ("llama", {"num_key_value_heads": 3}, "num_attention_heads=4 is not divisible by num_key_value_heads=3"),
    ("llama", {"head_dim": 7}, "head_dim=7 must be even"),
    ("llama", {"num_hidden_layers": True}, "num_hidden_layers=True must be a positive integer"),
    ("t5", {"relative_attention_max_distance": 4}, "relative_attention_max_distance=4 must exceed"),
    ("t5", {"d_kv": 0}, "d_kv=0 must be a positive integer"),
])
def test_bad_config_values_name_file_type_and_key(tiny_model_dir, tmp_path, monkeypatch, family, edit, expected):
    head = {"gpt2": "causal", "llama": "causal", "bert": "seq_cls", "t5": "seq2seq"}[family]
    path = _copy_model(tiny_model_dir(family, head), tmp_path / "m", config_edit=lambda c: c.update(edit))
    cls = {"gpt2": models.GPT2LMHeadModel, "llama": models.LlamaForCausalLM,
           "bert": models.BertForSequenceClassification, "t5": models.T5ForConditionalGeneration}[family]
    _never_built(monkeypatch, cls)
    with pytest.raises(ConfigError) as err:
        cls.from_pretrained(path)
    assert expected in str(err.value)
    assert f"model_type '{family}'" in str(err.value) and "config.json" in str(err.value)


def test_configs_written_by_transformers_still_load(tmp_path):
    for family, make in TINY_CONFIGS.items():
        for i, config in enumerate([make(), type(make())()]):  # the tiny test config and the class defaults
            folder = tmp_path / f"{family}{i}"
            config.save_pretrained(folder)
            loaded = models.AutoConfig.from_pretrained(str(folder))
            assert loaded.model_type == family
            assert loaded.vocab_size == config.vocab_size


def test_configs_built_in_python_are_validated_too():
    with pytest.raises(ConfigError, match="n_embd=30 is not divisible by n_head=4"):
        models.GPT2Config(n_embd=30, n_head=4)
    assert models.GPT2Config(n_embd=32, n_head=4, n_layer=1).n_layer == 1


# ----- checkpoint / config mismatches -----------------------------------------------------------------------------


def test_missing_backbone_weight_raises_naming_it(tiny_model_dir, tmp_path):
    src = tiny_model_dir("gpt2", "causal")
    path = _copy_model(src, tmp_path / "m", weights_edit=lambda w: w.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(ValueError, match=r"does not match GPT2LMHeadModel: missing 1 weight\(s\): "
                                         r"transformer\.h\.1\.mlp\.c_fc\.weight") as err:
        models.GPT2LMHeadModel.from_pretrained(path)
    assert path in str(err.value)
    with pytest.warns(UserWarning, match="newly initialized"):  # strict=False: warn only
        models.GPT2LMHeadModel.from_pretrained(path, strict=False)


def test_missing_head_is_newly_initialised_with_transformers_warning(tiny_model_dir):
    path = tiny_model_dir("gpt2", "causal")
    with pytest.warns(UserWarning, match=r"Some weights of GPT2ForSequenceClassification were not initialized from "
                                         r"the model checkpoint at .* newly initialized: \['score.weight'\]\n"
                                         r"You should probably TRAIN this model"):
        models.GPT2ForSequenceClassification.from_pretrained(path)
    with pytest.raises(ValueError, match=r"missing 1 weight\(s\): score\.weight"):
        models.GPT2ForSequenceClassification.from_pretrained(path, strict=True)


def test_unused_checkpoint_weights_warn(tiny_model_dir):
    with pytest.warns(UserWarning, match=r"were not used when initializing BertModel: \['classifier\.\w+', "
                                         r"'classifier\.\w+'\]"):
        models.BertModel.from_pretrained(tiny_model_dir("bert", "seq_cls"))


@pytest.mark.parametrize("n_layer,expected", [
    (1, r"has more layers than the config of GPT2LMHeadModel: transformer\.h: the checkpoint has 2 layers, the "
        r"config \(n_layer=1\) 1"),
    (3, r"missing 12 weight\(s\): transformer\.h\.2\.ln_1\.weight, .*; transformer\.h: the checkpoint has 2 layers, "
        r"the config \(n_layer=3\) 3"),
])
def test_layer_count_disagreeing_with_config_raises(tiny_model_dir, tmp_path, n_layer, expected):
    path = _copy_model(tiny_model_dir("gpt2", "causal"), tmp_path / "m",
                       config_edit=lambda c: c.update(n_layer=n_layer))
    with pytest.raises(ValueError, match=expected):
        models.GPT2LMHeadModel.from_pretrained(path)


def test_t5_decoder_layer_count_checked(tiny_model_dir, tmp_path):
    path = _copy_model(tiny_model_dir("t5", "seq2seq"), tmp_path / "m",
                       config_edit=lambda c: c.update(num_decoder_layers=1))
    with pytest.raises(ValueError, match=r"decoder\.block: the checkpoint has 2 layers, the config "
                                         r"\(num_decoder_layers=1\) 1"):
        models.T5ForConditionalGeneration.from_pretrained(path)


# ----- input checks -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir):
    return models.GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal"))


@pytest.mark.parametrize("ids,kwargs,expected", [
    ([[5, 96, 3, 200]], {}, r"input_ids must be in \[0, 96\) \(vocab_size=96\), got 96, 200"),
    ([[5, -1]], {}, r"input_ids must be in \[0, 96\) \(vocab_size=96\), got -1"),
    ([5, 6, 7], {}, r"input_ids must be 2-D \(batch_size, sequence_length\), got shape \(3,\); add a batch "
                    r"dimension, e.g. input_ids\[None\]"),
    (np.zeros((0, 4)), {}, r"input_ids is empty \(shape \(0, 4\)\)"),
    (np.zeros((2, 0)), {}, r"input_ids is empty \(shape \(2, 0\)\)"),
    (np.ones((1, 65)), {}, r"input_ids has 65 tokens but the model has 64 position embeddings \(n_positions=64\)"),
    (np.ones((2, 5)), {"attention_mask": np.ones((2, 4))},
     r"attention_mask has shape \(2, 4\) but input_ids has shape \(2, 5\): expected \(2, 5\)"),
    (np.ones((2, 5)), {"position_ids": [[0, 1, 2, 3, 64]]}, r"position_ids must be in \[0, 64\)"),
])
def test_gpt2_input_errors(gpt2, ids, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        gpt2(ms_ids(ids), **{k: ms_ids(v) for k, v in kwargs.items()})


def test_mask_may_cover_past_positions(gpt2):
    ids = rand_ids((2, 6))
    out = gpt2(ms_ids(ids[:, :4]), use_cache=True)
    step = gpt2(ms_ids(ids[:, 4:]), attention_mask=ms_ids(np.ones((2, 6))), past_key_values=out["past_key_values"])
    assert max_diff(step["logits"], gpt2(ms_ids(ids))["logits"][:, 4:]) < 1e-5
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 2\) .* expected \(2, 6\) \(4 past/prefix "
                                         r"\+ 2 input positions\)"):
        gpt2(ms_ids(ids[:, 4:]), attention_mask=ms_ids(np.ones((2, 2))), past_key_values=out["past_key_values"])
    with pytest.raises(ValueError, match=r"input_ids has 61 tokens \+ 4 past/prefix but the model has 64"):
        gpt2(ms_ids(np.ones((2, 61))), past_key_values=out["past_key_values"])


def test_generate_checks_its_inputs(gpt2):
    with pytest.raises(ValueError, match=r"add a batch dimension, e.g. input_ids\[None\]"):
        gpt2.generate(ms_ids([4, 5, 6]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 2\)"):
        gpt2.generate(ms_ids([[4, 5, 6]]), attention_mask=ms_ids([[1, 1]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"position_ids must be in \[0, 64\) .*generate fewer tokens"):
        gpt2.generate(ms_ids(rand_ids((1, 60))), max_new_tokens=8, eos_token_id=-1)


def test_bert_and_roberta_input_errors(tiny_model_dir):
    bert = models.BertForSequenceClassification.from_pretrained(tiny_model_dir("bert", "seq_cls"))
    with pytest.raises(ValueError, match=r"input_ids has 65 tokens but the model has 64 position embeddings "
                                         r"\(max_position_embeddings=64\)"):
        bert(ms_ids(rand_ids((1, 65))))
    with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, 2\) \(type_vocab_size=2\), got 2"):
        bert(ms_ids(rand_ids((1, 4))), token_type_ids=ms_ids([[0, 1, 2, 0]]))
    with pytest.raises(ValueError, match=r"token_type_ids has shape \(1, 3\)"):
        bert(ms_ids(rand_ids((1, 4))), token_type_ids=ms_ids([[0, 1, 1]]))
    path = tiny_model_dir("roberta", "seq_cls")  # 66 positions numbered from pad_token_id + 1 = 2: 64 tokens fit
    roberta = models.RobertaForSequenceClassification.from_pretrained(path)
    with pytest.raises(ValueError, match=r"input_ids has 65 non-padding tokens .* at most 64 tokens fit"):
        roberta(ms_ids(rand_ids((1, 65))))
    ids = rand_ids((2, 66))
    ids[:, -2:] = 1  # 64 real tokens and 2 pads: fits, as in transformers
    mask = (ids != 1).astype(np.int64)
    with torch.no_grad():
        expected = torch_model(path, "roberta", "seq_cls")(torch_ids(ids), attention_mask=torch_ids(mask)).logits
    assert max_diff(roberta(ms_ids(ids), attention_mask=ms_ids(mask))["logits"], expected) < 1e-4
    with pytest.raises(ValueError, match=r"inputs_embeds has 65 tokens but the model has 66 position embeddings"):
        roberta(inputs_embeds=Tensor(np.zeros((1, 65, 32), np.float32)))


def test_llama_runs_past_max_position_embeddings_like_transformers(tiny_model_dir):
    path = tiny_model_dir("llama", "causal")  # max_position_embeddings=64: rotary positions have no table
    ids = rand_ids((1, 70))
    with torch.no_grad():
        expected = torch_model(path, "llama", "causal")(torch_ids(ids)).logits
    model = models.LlamaForCausalLM.from_pretrained(path)
    assert max_diff(model(ms_ids(ids))["logits"], expected) < 1e-4
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 96\)"):
        model(ms_ids([[1, 99]]))


def test_t5_input_errors(tiny_model_dir):
    t5 = models.T5ForConditionalGeneration.from_pretrained(tiny_model_dir("t5", "seq2seq"))
    ids = ms_ids(rand_ids((2, 5)))
    with pytest.raises(ValueError, match="T5 needs decoder_input_ids, decoder_inputs_embeds or labels"):
        t5(ids)
    with pytest.raises(ValueError, match=r"decoder_input_ids must be in \[0, 96\) \(vocab_size=96\), got 100"):
        t5(ids, decoder_input_ids=ms_ids([[0, 100], [0, 1]]))
    with pytest.raises(ValueError, match=r"decoder_input_ids must be 2-D"):
        t5(ids, decoder_input_ids=ms_ids([0, 1]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\) but input_ids has shape \(2, 5\)"):
        t5(ids, attention_mask=ms_ids(np.ones((2, 4))), decoder_input_ids=ms_ids([[0, 1], [0, 1]]))
    encoded = t5.get_encoder()(ids)["last_hidden_state"]
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\) but the encoder output has 2 sequences "
                                         r"of 5 positions"):
        t5(encoder_outputs=encoded, attention_mask=ms_ids(np.ones((2, 3))), decoder_input_ids=ms_ids([[0], [0]]))
    with pytest.raises(ValueError, match=r"labels have shape \(2, 3\) but the tokens scored have shape \(2, 2\)"):
        t5(ids, decoder_input_ids=ms_ids([[0, 1], [0, 1]]), labels=ms_ids(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"add a batch dimension"):
        t5.generate(ms_ids([4, 5, 6]), max_new_tokens=2)


# ----- labels -----------------------------------------------------------------------------------------------------


def test_cross_entropy_rejects_labels_out_of_range():
    logits = Tensor(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or -100 \(ignored\), got -5, -1"):
        cross_entropy(logits, ms_ids([0, -1, -100, -5]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or -100 \(ignored\), got 3, 7"):
        cross_entropy(logits, ms_ids([0, 3, 7, 2]))
    with pytest.raises(ValueError, match=r"labels of shape \(3,\) hold 3 labels but there are 4 rows"):
        cross_entropy(logits, ms_ids([0, 1, 2]))
    assert abs(float(cross_entropy(logits, ms_ids([0, 1, -100, 2]))) - np.log(3)) < 1e-5
    with pytest.raises(ValueError, match=r"labels must be whole-number class indices, got 0.5, 1.5"):
        cross_entropy(logits, Tensor(np.array([0.0, 0.5, 1.5, 2.0], np.float32)))
    assert abs(float(cross_entropy(logits, Tensor(np.array([0.0, 1.0, 2.0, 2.0], np.float32)))) - np.log(3)) < 1e-5


def test_float_input_ids_are_refused(tiny_model_dir):
    model = models.GPT2LMHeadModel.from_pretrained(tiny_model_dir("gpt2", "causal"))
    with pytest.raises(ValueError, match=r"input_ids must be integer ids, got a Float32 tensor"):
        model(Tensor(np.ones((1, 4), np.float32)))


def test_head_label_errors(tiny_model_dir):
    seq = models.BertForSequenceClassification.from_pretrained(tiny_model_dir("bert", "seq_cls"))  # 3 labels
    ids = ms_ids(rand_ids((2, 5)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or -100 \(ignored\), got -1, 3"):
        seq(ids, labels=ms_ids([-1, 3]))
    with pytest.raises(ValueError, match=r"labels have shape \(3,\) but the batch has 2 sequences"):
        seq(ids, labels=ms_ids([0, 1, 2]))
    tok = models.BertForTokenClassification.from_pretrained(tiny_model_dir("bert", "token_cls"))
    with pytest.raises(ValueError, match=r"labels have shape \(2, 4\) but the tokens scored have shape \(2, 5\)"):
        tok(ids, labels=ms_ids(np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"got 5"):
        tok(ids, labels=ms_ids([[0, 1, 2, -100, 5], [0, 0, 0, 0, 0]]))


# ----- under mindspore.jit: shapes checked, value checks skipped ------------------------------------------------


def test_checks_under_jit(gpt2):
    ids, labels = rand_ids((2, 6)), rand_ids((2, 6), seed=1)

    @ms.jit
    def loss_fn(input_ids, labels):
        return gpt2(input_ids, labels=labels)["loss"]

    eager = float(gpt2(ms_ids(ids), labels=ms_ids(labels))["loss"])
    assert abs(float(loss_fn(ms_ids(ids), ms_ids(labels))) - eager) < 1e-5
    with pytest.raises(ValueError, match=r"labels have shape \(2, 5\) but the input tokens have shape \(2, 6\)"):
        loss_fn(ms_ids(ids), ms_ids(labels[:, :5]))
    with pytest.raises(ValueError, match=r"input_ids must be 2-D"):
        loss_fn(ms_ids(ids[0]), ms_ids(labels[0]))


# ----- prompt learning: the inputs are checked before the virtual tokens are added --------------------------------


@pytest.mark.parametrize("make", [
    lambda: (models.GPT2LMHeadModel, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)),
    lambda: (models.GPT2LMHeadModel, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)),
    lambda: (models.BertForSequenceClassification, PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=3)),
])
def test_prompt_learning_input_errors(tiny_model_dir, make):
    cls, config = make()
    family, head = ("gpt2", "causal") if cls is models.GPT2LMHeadModel else ("bert", "seq_cls")
    model = get_peft_model(cls.from_pretrained(tiny_model_dir(family, head)), config)
    ids = rand_ids((2, 5))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 96\) \(vocab_size=96\), got 200"):
        model(ms_ids([[4, 200]]))  # was: For 'Gather', the 'input_indices' should be in the range [0, 96)
    with pytest.raises(ValueError, match=r"input_ids must be 2-D .* add a batch dimension"):
        model(ms_ids(ids[0]))  # was: For primitive[Concat], element rank must be same
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\) but input_ids has shape \(2, 5\)"):
        model(ms_ids(ids), attention_mask=ms_ids(np.ones((2, 4))))  # was: shapes counting the virtual tokens
    assert model(ms_ids(ids), attention_mask=ms_ids(np.ones((2, 5))))["logits"].shape[0] == 2


# ----- training steps: values checked before a compiled step, a refused PyNative step leaves training usable ------


def _classifier(tiny_model_dir):
    np.random.seed(0)
    config = LoraConfig(task_type="SEQ_CLS", r=2, init_lora_weights=False)
    return get_peft_model(models.BertForSequenceClassification.from_pretrained(tiny_model_dir("bert", "seq_cls")),
                          config)


def _trainable(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


@pytest.mark.parametrize("jit", [False, True])
def test_a_refused_training_step_changes_nothing(tiny_model_dir, jit):
    """Compiled, the values are checked before the graph runs (a graph cannot: a label of -1 trained the last class).
    In PyNative the model's own check raises inside value_and_grad, which used to leave MindSpore's gradient
    recording open: later steps failed ("For LayerNormGrad, the index 7 is out of range") and so did building a
    model ("A leaf tensor that requires grad is being used in an inplace operator")."""
    model = _classifier(tiny_model_dir)
    model.set_train(False)  # no dropout: the step's loss is the forward's
    step = TrainStep(model, AdamW(model.trainable_params(), lr=1e-2), jit=jit)
    ids = ms_ids(rand_ids((2, 5)))
    expected = float(model(ids, labels=ms_ids([2, 0]))["loss"])
    weights = _trainable(model)
    for labels in ([-1, 0], [0, 3]):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or -100 \(ignored\).*got (-1|3)"):
            step(input_ids=ids, labels=ms_ids(labels))
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 96\)"):
        step(input_ids=ms_ids([[4, 96]]), labels=ms_ids([0]))
    assert all(np.array_equal(value, weights[name]) for name, value in _trainable(model).items())
    assert abs(float(step(input_ids=ids, labels=ms_ids([2, 0]))) - expected) < 1e-5
    assert any(not np.array_equal(value, weights[name]) for name, value in _trainable(model).items())
    _classifier(tiny_model_dir)  # weights can still be written in place
