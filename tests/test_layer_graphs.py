"""Identical layers share one compiled graph in mindpeft.training's steps (mindpeft.models.layer_graphs): which blocks
share (structure, attributes, constants and parameter shapes equal), the same gradients as the graph compiled
without sharing, layers that differ kept apart, and nothing left on the blocks after the step."""
import warnings

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor

from mindpeft import LoraConfig, get_peft_model, models, set_seed
from mindpeft.models.layer_graphs import shared_graph_marks, shared_layer_graphs, structure_key
from mindpeft.optimizers import AdamW
from mindpeft.training import TrainStep
from mindpeft.training.train_step import value_and_grad

IDS = Tensor(np.random.default_rng(0).integers(3, 60, (2, 9)), ms.int32)


def _llama(layers=4, **lora):
    set_seed(0)
    model = models.LlamaForCausalLM(models.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=layers, num_attention_heads=4,
                                                       num_key_value_heads=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                      init_lora_weights=False, **lora))
    peft_model.set_train(True)
    return model, peft_model


def _hand_compiled_gradients(peft_model, marks=()):
    """Loss and gradients of the model's step compiled by hand, sharing the layer graphs of ``marks`` only."""
    def loss_fn(input_ids, labels):
        return peft_model(input_ids=input_ids, labels=labels)["loss"]

    with shared_layer_graphs(marks):
        loss, grads = ms.jit(value_and_grad(loss_fn, peft_model.trainable_params()))(input_ids=IDS, labels=IDS)
    return float(loss), [g.asnumpy() for g in grads]


def _step_gradients(peft_model):
    step = TrainStep(peft_model, AdamW(peft_model.trainable_params(), lr=0.0), return_grads=True)
    loss, grads = step(input_ids=IDS, labels=IDS)
    return step, float(loss), [g.asnumpy() for g in grads]


def _groups(model):
    marks = dict((id(block), mark) for block, mark in shared_graph_marks(model))
    return [marks.get(id(layer)) for layer in model.model.layers]


def test_identical_layers_share_one_graph_and_give_the_same_gradients():
    for checkpointing in (False, True):
        model, peft_model = _llama()
        if checkpointing:
            peft_model.gradient_checkpointing_enable()
        groups = _groups(model)
        assert groups[0] is not None and len(set(groups)) == 1  # the four layers: one graph
        expected_loss, expected = _hand_compiled_gradients(peft_model)
        step, loss, grads = _step_gradients(peft_model)
        assert len(step._shared_graphs) == 4  # pylint: disable=protected-access
        assert loss == expected_loss and len(grads) == len(expected) == 4 * 3 * 2
        for g, e in zip(grads, expected):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
            assert np.abs(e).max() > 0
        for layer in model.model.layers:  # the marks live only while the step compiles
            assert "_cell_init_args" not in layer.__dict__ and "no_inline" not in layer.__dict__
        by_hand = _hand_compiled_gradients(peft_model, shared_graph_marks(peft_model))  # a step of one's own
        assert by_hand[0] == expected_loss
        assert all(np.array_equal(g, e) for g, e in zip(by_hand[1], grads))


def test_layers_that_differ_get_graphs_of_their_own():
    """LoRA on some layers only, another rank on one layer: those layers compile apart, gradients as unshared."""
    model, peft_model = _llama(layers_to_transform=[0, 1, 2], rank_pattern={"layers.2.self_attn.q_proj": 2})
    peft_model.gradient_checkpointing_enable()
    groups = _groups(model)
    assert groups[0] == groups[1] and groups[0] is not None
    assert groups[2] is None and groups[3] is None  # one of a kind each: compiled as before
    expected_loss, expected = _hand_compiled_gradients(peft_model)
    _, loss, grads = _step_gradients(peft_model)
    assert abs(loss - expected_loss) < 1e-6
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def test_what_keeps_two_blocks_apart():
    """Parameter values do not (graphs take them as inputs); attributes, constant tensors, parameter shapes and
    ``requires_grad``, train mode and dropout streams do."""
    model, _ = _llama(layers=2)
    first, second = model.model.layers
    assert structure_key(first) == structure_key(second)
    second.mlp.down_proj.weight.set_data(Tensor(np.ones(second.mlp.down_proj.weight.shape, np.float32)))
    assert structure_key(first) == structure_key(second)

    changes = [
        lambda layer: setattr(layer.self_attn, "scale", 0.5),
        lambda layer: setattr(layer.self_attn, "extra", Tensor(np.arange(3, dtype=np.float32))),
        lambda layer: layer.input_layernorm.weight.set_data(Tensor(np.ones(7, np.float32))),
        lambda layer: setattr(layer.post_attention_layernorm.weight, "requires_grad", True),  # frozen by PEFT
        lambda layer: layer.set_train(not layer.training),
        lambda layer: setattr(layer.mlp, "marker", object()),
    ]
    for change in changes:
        model, _ = _llama(layers=2)
        first, second = model.model.layers
        change(second)
        assert structure_key(first) != structure_key(second), change
    model, _ = _llama(layers=2)
    first, second = model.model.layers
    first.self_attn.extra, second.self_attn.extra = (Tensor(np.arange(3, dtype=np.float32)) for _ in range(2))
    assert structure_key(first) == structure_key(second)  # equal constants by content
    second.self_attn.extra = Parameter(Tensor(np.zeros(3, np.float32)), name="extra")
    assert structure_key(first) != structure_key(second)
    loop = {}
    loop["itself"] = first.mlp.loop = second.mlp.loop = loop  # cannot be described: shares with nothing
    assert structure_key(first) != structure_key(second)


def test_blocks_with_dropout_compile_apart():
    """Each Dropout draws from a stream of its own: a shared graph would give every layer the same masks."""
    model, _ = _llama(layers=2, lora_dropout=0.1)
    assert shared_graph_marks(model) == []
