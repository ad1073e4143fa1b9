"""``ModelOutput``: transformers' output semantics in PyNative, plain dicts (exact gradients) inside compiled graphs.

Uses a self-contained toy Cell, not mindpeft's models.
"""
import copy
import dataclasses
import pickle

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from transformers import modeling_outputs as hf_outputs

from mindpeft.models import model_outputs as mo
from mindpeft.models.model_outputs import (CausalLMOutputWithPast, ModelOutput, ModelOutputMixin, to_model_output)

_rng = np.random.default_rng(0)
W0 = _rng.standard_normal((4, 3)).astype(np.float32)
B0 = _rng.standard_normal(3).astype(np.float32)
X = Tensor(_rng.standard_normal((5, 4)).astype(np.float32))
Y = Tensor(_rng.integers(0, 3, (5,)).astype(np.int32))
PAST = (Tensor(np.ones((1, 2), np.float32)),)


def _cross_entropy(logits, labels):
    picked = ops.gather_elements(ops.log_softmax(logits, -1), 1, labels.view(-1, 1)).view(-1)
    return -picked.mean()


class _Head(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(W0), name="w")
        self.b = Parameter(Tensor(B0), name="b")

    def construct(self, input_ids, labels=None, use_cache=False):
        logits = ops.matmul(input_ids, self.w) + self.b
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = _cross_entropy(logits, labels)
        if use_cache:
            out["past_key_values"] = PAST
        return out


class ToyLM(ModelOutputMixin, _Head):
    """``construct`` returns a plain dict; calling the Cell returns a ModelOutput."""


class ToyLMDict(_Head):
    """The plain-dict reference."""


_KEEP = []  # MindSpore caches parsed Cells by class name and id(): keep compiled Cells alive


def _model(cls):
    model = cls()
    _KEEP.append(model)
    return model


def _numpy(grads):
    return [g.asnumpy() for g in grads]


def _assert_same(got, ref, atol=0.0):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert np.abs(a).max() > 0
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def _dict_reference(jit):
    """Loss and gradients of the plain-dict model read by key, in PyNative or under ``ms.jit``."""
    model = _model(ToyLMDict)

    def forward_fn(**batch):
        return model(**batch)["loss"]

    grad_fn = ms.value_and_grad(forward_fn, None, model.trainable_params())
    fn = ms.jit(grad_fn) if jit else grad_fn
    loss, grads = fn(input_ids=X, labels=Y)
    return loss.asnumpy(), _numpy(grads)


# ----- semantics against transformers -----------------------------------------------------------------------------
def test_field_lists_match_transformers():
    for name in ("BaseModelOutput", "BaseModelOutputWithPast", "BaseModelOutputWithPastAndCrossAttentions",
                 "BaseModelOutputWithPoolingAndCrossAttentions", "CausalLMOutputWithPast",
                 "CausalLMOutputWithCrossAttentions", "SequenceClassifierOutput", "SequenceClassifierOutputWithPast",
                 "TokenClassifierOutput", "MaskedLMOutput", "QuestionAnsweringModelOutput", "Seq2SeqModelOutput",
                 "Seq2SeqLMOutput"):
        ours = getattr(mo, name)
        assert issubclass(ours, ModelOutput) and issubclass(ours, dict)
        assert ours._fields == tuple(f.name for f in dataclasses.fields(getattr(hf_outputs, name))), name


@pytest.mark.parametrize("labels, use_cache", [(Y, True), (Y, False), (None, True), (None, False)])
def test_semantics_match_transformers(labels, use_cache):
    out = _model(ToyLM)(input_ids=X, labels=labels, use_cache=use_cache)
    assert type(out) is CausalLMOutputWithPast
    hf = hf_outputs.CausalLMOutputWithPast(loss=out.loss, logits=out.logits, past_key_values=out.past_key_values)

    assert list(out.keys()) == list(hf.keys())  # transformers' field order, None fields skipped
    assert len(out) == len(hf) and list(out) == list(hf)
    assert [id(v) for v in out.values()] == [id(v) for v in hf.values()]
    assert [(k, id(v)) for k, v in out.items()] == [(k, id(v)) for k, v in hf.items()]
    assert [id(v) for v in out.to_tuple()] == [id(v) for v in hf.to_tuple()]
    for i in range(-len(hf), len(hf)):
        assert out[i] is hf[i]
    for s in (slice(None, 2), slice(1, None), slice(None, None, -1)):
        assert [id(v) for v in out[s]] == [id(v) for v in hf[s]]
    for name in ("loss", "logits", "past_key_values", "hidden_states", "attentions"):
        assert getattr(out, name) is getattr(hf, name)
        assert (name in out) == (name in hf)
        if name in hf:
            assert out[name] is hf[name]
        else:
            with pytest.raises(KeyError):
                out[name]
    assert out[0] is (out.loss if labels is not None else out.logits)
    with pytest.raises(IndexError):
        out[len(hf)]
    with pytest.raises(AttributeError):
        out.not_a_field
    assert isinstance(out, dict) and out.get("loss") is hf.get("loss")


def test_mutation_like_transformers():
    out = to_model_output({"logits": X})
    hf = hf_outputs.CausalLMOutputWithPast(logits=X)
    for target in (out, hf):
        for call in (lambda: target.pop("logits"), lambda: target.update(loss=X),
                     lambda: target.setdefault("loss", X)):
            with pytest.raises(Exception, match="You cannot use"):
                call()
        with pytest.raises(Exception, match="You cannot use"):
            del target["logits"]
        target.loss = Y  # setting a field adds the entry (at the end, like transformers)
        target["hidden_states"] = (X,)
    assert list(out.keys()) == list(hf.keys()) == ["logits", "loss", "hidden_states"]
    assert out.loss is hf.loss is Y and out[1] is hf[1] is Y and out.hidden_states[0] is hf.hidden_states[0] is X


def test_copy_and_pickle():
    out = to_model_output({"logits": X, "loss": Y})
    for other in (copy.copy(out), copy.deepcopy(out), pickle.loads(pickle.dumps(out))):
        assert type(other) is CausalLMOutputWithPast and list(other.keys()) == ["loss", "logits"]
        np.testing.assert_array_equal(other.logits.asnumpy(), X.asnumpy())


def test_to_model_output_classes():
    assert type(to_model_output({"start_logits": X, "end_logits": X})).__name__ == "QuestionAnsweringModelOutput"
    assert type(to_model_output({"last_hidden_state": X, "pooler_output": X})).__name__ == \
        "BaseModelOutputWithPoolingAndCrossAttentions"
    assert type(to_model_output({"logits": X, "encoder_last_hidden_state": X})).__name__ == "Seq2SeqLMOutput"
    seq2seq = to_model_output({"logits": X, "loss": Y, "encoder_last_hidden_state": X, "past_key_values": PAST})
    assert list(seq2seq.keys()) == ["loss", "logits", "past_key_values", "encoder_last_hidden_state"]
    other = to_model_output({"b": X, "a": Y})
    assert type(other) is ModelOutput and list(other.keys()) == ["b", "a"] and other.a is Y and other[0] is X
    assert to_model_output((X, Y))[1] is Y  # tuples and ModelOutputs pass through
    assert to_model_output(other) is other
    assert type(to_model_output({"logits": X}, mo.SequenceClassifierOutput)).__name__ == "SequenceClassifierOutput"


# ----- gradients ----------------------------------------------------------------------------------------------------
def test_tutorial_forward_fn_gradients_pynative():
    """The mindnlp tutorial's ``outputs = model(**batch); loss = outputs.loss`` (also key and index)."""
    ref_loss, ref = _dict_reference(jit=False)
    model = _model(ToyLM)
    for read in (lambda o: o.loss, lambda o: o["loss"], lambda o: o[0], lambda o: o.to_tuple()[0]):
        def forward_fn(**batch):
            outputs = model(**batch)
            return read(outputs)

        grad_fn = ms.value_and_grad(forward_fn, None, model.trainable_params())
        loss, grads = grad_fn(input_ids=X, labels=Y)
        assert loss.asnumpy() == ref_loss
        _assert_same(_numpy(grads), ref)


def test_jit_train_step_gradients():
    """``@ms.jit`` on the train step (the whole step compiled) and on forward_fn: the graph sees the plain dict."""
    ref_loss, ref = _dict_reference(jit=True)
    _, ref_pynative = _dict_reference(jit=False)
    model = _model(ToyLM)

    def forward_fn(**batch):
        outputs = model(**batch)
        return outputs["loss"]

    grad_fn = ms.value_and_grad(forward_fn, None, model.trainable_params())
    optimizer = nn.SGD(model.trainable_params(), learning_rate=0.0)

    @ms.jit
    def train_step(**batch):
        loss, grads = grad_fn(**batch)
        return ops.depend(loss, optimizer(grads)), grads

    loss, grads = train_step(input_ids=X, labels=Y)
    assert loss.asnumpy() == ref_loss
    _assert_same(_numpy(grads), ref)
    _assert_same(_numpy(grads), ref_pynative, atol=1e-7)

    jitted_forward = ms.value_and_grad(ms.jit(forward_fn), None, model.trainable_params())
    loss, grads = jitted_forward(input_ids=X, labels=Y)
    _assert_same(_numpy(grads), ref_pynative, atol=1e-7)


def test_whole_output_through_value_and_grad():
    """Returning the outputs themselves (``has_aux`` or the whole object) keeps exact gradients."""
    _, ref = _dict_reference(jit=False)
    model, model_dict = _model(ToyLM), _model(ToyLMDict)

    def forward_aux(input_ids, labels):
        outputs = model(input_ids=input_ids, labels=labels)
        return outputs.loss, outputs

    (loss, outputs), grads = ms.value_and_grad(forward_aux, None, model.trainable_params(), has_aux=True)(X, Y)
    assert type(outputs) is CausalLMOutputWithPast and outputs.loss is not None
    _assert_same(_numpy(grads), ref)

    def whole(model_):
        def fn(input_ids, labels):
            return model_(input_ids=input_ids, labels=labels)
        return fn

    params = model.trainable_params()
    value, grads = ms.value_and_grad(whole(model), None, params)(X, Y)
    _, dict_grads = ms.value_and_grad(whole(model_dict), None, model_dict.trainable_params())(X, Y)
    assert type(value) is CausalLMOutputWithPast
    _assert_same(_numpy(grads), _numpy(dict_grads))

    # Compiled, the step returns the plain dict (to_model_output converts it) with the same gradients.
    value, grads = ms.jit(ms.value_and_grad(whole(model), None, params))(X, Y)
    assert type(value) is dict and type(to_model_output(value)) is CausalLMOutputWithPast
    _assert_same(_numpy(grads), _numpy(dict_grads), atol=1e-7)

    # has_aux compiled (positional arguments: has_aux with **kwargs trips a MindSpore 2.10 compile bug)
    def aux_graph(input_ids, labels):
        outputs = model(input_ids=input_ids, labels=labels)
        return outputs["loss"], outputs

    aux_graph_grad = ms.value_and_grad(aux_graph, None, params, has_aux=True)
    (loss, outputs), grads = ms.jit(aux_graph_grad)(X, Y)
    assert type(outputs) is dict
    _assert_same(_numpy(grads), ref, atol=1e-7)


# ----- what graph mode cannot do: loud errors, never zero gradients ----------------------------------------------
def test_model_output_built_inside_a_graph_raises():
    class BuildsOutputInConstruct(_Head):
        def construct(self, input_ids, labels=None):
            logits = ops.matmul(input_ids, self.w) + self.b
            return CausalLMOutputWithPast(logits=logits, loss=_cross_entropy(logits, labels))

    model = _model(BuildsOutputInConstruct)

    def forward_fn(input_ids, labels):
        return model(input_ids, labels)["loss"]

    grad_fn = ms.value_and_grad(forward_fn, None, model.trainable_params())
    _, grads = grad_fn(X, Y)  # PyNative is fine
    _assert_same(_numpy(grads), _dict_reference(jit=False)[1])
    with pytest.raises(TypeError, match="cannot be created inside mindspore.jit"):
        ms.jit(grad_fn)(X, Y)


def test_attribute_and_index_access_inside_a_graph_fail_to_compile():
    """Graph mode has no attribute or integer access on dicts: a compile error (read by key there)."""
    model = _model(ToyLM)

    def by_attribute(input_ids, labels):
        return model(input_ids=input_ids, labels=labels).loss

    def by_index(input_ids, labels):
        return model(input_ids=input_ids, labels=labels)[0]

    with pytest.raises(AttributeError, match="has no attribute 'loss'"):
        ms.jit(ms.value_and_grad(by_attribute, None, model.trainable_params()))(X, Y)
    with pytest.raises(ValueError, match="key 0 does not exist"):
        ms.jit(ms.value_and_grad(by_index, None, model.trainable_params()))(X, Y)
