"""Token ids and labels checked against the model before they reach a compiled step.

In PyNative the models refuse ids outside the vocabulary and labels outside the classes themselves; a graph
compiled with ``mindspore.jit`` cannot look at values, and there a label of -1 silently trains the last class
(the loss gathers with wrap-around) while other bad values fail deep in a gather kernel. The Trainer checks every
row before training or evaluating, and the compiled steps check each batch, with these functions.
"""
import numpy as np

IGNORE_INDEX = -100
ID_COLUMNS = ("input_ids", "decoder_input_ids")
LABEL_COLUMNS = ("labels", "label", "label_ids")


def _head_kind(model):
    """``"classes"`` for sequence, token and image classification models, ``"tokens"`` for language models (causal,
    seq2seq, speech-to-text), ``None`` for others."""
    from ..models import auto

    def classes(*autos):
        return tuple(cls for a in autos for cls in a.mapping.values())

    if isinstance(model, classes(auto.AutoModelForSequenceClassification, auto.AutoModelForTokenClassification,
                                 auto.AutoModelForImageClassification)):
        return "classes"
    if isinstance(model, classes(auto.AutoModelForCausalLM, auto.AutoModelForSeq2SeqLM,
                                 auto.AutoModelForSpeechSeq2Seq)):
        return "tokens"
    return None


def value_limits(model, label_names=LABEL_COLUMNS):
    """``{column: (high, what, ignored)}`` for the columns of ``model``'s inputs whose values must lie in
    ``[0, high)`` (``ignored``: a value allowed besides, -100 for labels, else ``None``). ``model``: a mindpeft
    model or a PeftModel of one; models mindpeft does not know get no limits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    vocab = getattr(config, "vocab_size", None)
    limits = {}
    if isinstance(vocab, int) and vocab > 0:
        limits.update((name, (vocab, f"vocab_size={vocab}", None)) for name in ID_COLUMNS)
    kind = _head_kind(base)
    num_labels = getattr(config, "num_labels", None)
    if kind == "classes" and isinstance(num_labels, int) and num_labels > 1:  # 1 label: regression, any value
        label_limit = (num_labels, f"num_labels={num_labels} of {type(base).__name__}", IGNORE_INDEX)
    elif kind == "tokens" and "input_ids" in limits:
        label_limit = (vocab, f"vocab_size={vocab}", IGNORE_INDEX)
    else:
        return limits
    limits.update((name, label_limit) for name in label_names)
    return limits


def _numeric(value):
    """``value`` (a Tensor, array, list or number) as a numpy array; ``None`` for text and other objects."""
    array = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
    return array if array.dtype.kind in "iuf" else None


def value_problem(column, value, limits):
    """A sentence naming what is wrong with the values of ``column`` (``None`` when nothing is)."""
    if column not in limits:
        return None
    array = _numeric(value)
    if array is None or array.size == 0:
        return None
    high, what, ignored = limits[column]
    if array.dtype.kind == "f" and ignored is None:
        return f"{column} must be integer token ids, got {array.dtype} values"
    if array.dtype.kind == "f":
        fractional = np.unique(array[array != np.round(array)])
        if fractional.size:
            return (f"{column} must be whole-number indices, got {', '.join(str(v) for v in fractional[:10])} "
                    "(float labels of multi-label classification are not supported)")
    outside = (array < 0) | (array >= high)
    if ignored is not None:
        outside &= array != ignored
    if not outside.any():
        return None
    bad = [int(v) for v in np.unique(array[outside])]
    shown = ", ".join(str(v) for v in bad[:10]) + (f", ... ({len(bad)} distinct values)" if len(bad) > 10 else "")
    allowed = f" or {ignored} (ignored)" if ignored is not None else ""
    return f"{column} must be in [0, {high}){allowed} ({what}), got {shown}"


def check_batch(batch, limits):
    """Raise ``ValueError`` when a column of ``batch`` (a dict) holds a value outside its limits."""
    for column, value in batch.items():
        problem = value_problem(column, value, limits)
        if problem:
            raise ValueError(problem)


def check_rows(rows, limits, what):
    """Raise ``ValueError`` naming the row (counted from 0) of ``rows`` (dicts) whose column holds a value outside
    its limits; ``what`` names the data set ("training set")."""
    columns = [c for c in (rows[0] if rows else {}) if c in limits]
    for column in columns:
        values = [row.get(column) for row in rows]
        try:  # one check over the whole column when its rows stack (same lengths)
            if value_problem(column, np.stack([_numeric(v) for v in values]), limits) is None:
                continue
        except (TypeError, ValueError):
            pass
        for index, value in enumerate(values):
            problem = value_problem(column, value, limits) if value is not None else None
            if problem:
                raise ValueError(f"The {what} row {index}: {problem}")
