"""Identical layers compiled once: while ``mindpeft.training``'s steps compile, the blocks of a model's layer lists
(see :func:`~mindpeft.models.gradient_checkpointing.checkpointed_blocks`) that are the same in everything but their
parameters' values share one parsed graph, which MindSpore's front end inlines for each layer (the mechanism of
``mindspore.lazy_inline(policy="front")``, applied per instance and only for the compile). A step compiled by hand
gets the same when its first call runs inside ``with shared_layer_graphs(shared_graph_marks(model)):``.

Measured on MindSpore 2.10 CPU (LLaMA layers of TinyLlama's shape, LoRA on all projections, 4-bit, checkpointed):
compiling the step held about 121 MB of host memory a layer, kept to the step's end (parsing, differentiating and
recomputing 22 copies of a layer; mostly heap fragmentation, not the final graph). With one shared graph: about
13 MB a layer, compiled in less than half the time, with bit-identical gradients; the peak of an 8-layer step at
4 x 512 tokens fell from 2575 to 1852 MB.

A shared graph takes the first layer's attributes and constants, so two blocks share one only when their structure
(classes, sub-cell names), every attribute, every constant tensor (by content) and their parameters' names, shapes,
dtypes and ``requires_grad`` are equal; an attribute whose value cannot be compared (an arbitrary object) counts as
equal only when it is the same object. Layers that differ (LoRA on some layers only, per-layer ranks) get graphs
of their own.
"""
import hashlib
import numbers
import types
from contextlib import contextmanager
from enum import Enum

import numpy as np
from mindspore import Parameter, Tensor, nn
from mindspore.common.dtype import Type as DType
from mindspore.ops import Primitive

from .gradient_checkpointing import checkpointed_blocks

# MindSpore's own bookkeeping on every Cell (ids, creation times, hooks, caches), except what a graph depends on
_CELL_BOOKKEEPING = frozenset(vars(nn.Cell())) - {"training", "_params", "_buffers", "_primitives", "_scope",
                                                  "_func_graph_flags", "_recompute_cell", "_cells"}
_MARKER = "lazy_inline_"


def _describe(value):
    """A hashable description of an attribute's value, equal only for values a graph cannot tell apart."""
    if value is None or isinstance(value, (bool, str, bytes, numbers.Number, Enum)):
        return type(value).__name__, repr(value)
    if isinstance(value, Parameter):
        return "parameter", tuple(value.shape), str(value.dtype), bool(value.requires_grad)
    if isinstance(value, (Tensor, np.ndarray)):
        array = value.asnumpy() if isinstance(value, Tensor) else value
        return "tensor", array.shape, str(array.dtype), hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()
    if isinstance(value, (tuple, list, set, frozenset)):
        items = sorted(map(repr, map(_describe, value))) if isinstance(value, (set, frozenset)) else \
            [_describe(item) for item in value]
        return type(value).__name__, tuple(items)
    if isinstance(value, dict):
        return type(value).__name__, tuple((repr(k), _describe(v)) for k, v in value.items())
    if isinstance(value, Primitive):
        return "primitive", value.name, _describe(dict(sorted(value.attrs.items())))
    if isinstance(value, types.FunctionType):
        closure = tuple(cell.cell_contents for cell in value.__closure__ or ())
        return "function", value.__module__, value.__qualname__, _describe(closure), _describe(value.__defaults__)
    if isinstance(value, DType):
        return "dtype", str(value)
    return "object", type(value).__qualname__, id(value)


def structure_key(block):
    """What two blocks must have in common to share a compiled graph, as a digest (one of its own for a block whose
    attributes refer to themselves)."""
    try:
        return hashlib.sha1(repr(_block_parts(block)).encode()).hexdigest()
    except RecursionError:
        return f"unique-{id(block)}"


def _block_parts(block):
    parts = []
    for name, cell in block.cells_and_names():
        parts.append((name, type(cell).__module__, type(cell).__qualname__))
        for attribute, value in vars(cell).items():
            if attribute in _CELL_BOOKKEEPING:
                continue
            if attribute == "_cells":
                value = tuple(value)  # the sub-cells themselves are described in their own turn
            elif attribute == "_recompute_cell":
                value = value is not None  # MindSpore's recompute closure over this very cell
            parts.append((name, attribute, _describe(value)))
    return parts


def shared_graph_marks(model):
    """``[(block, mark)]`` for the blocks of ``model`` that have an identical twin: equal marks, one graph."""
    groups = {}
    for block in checkpointed_blocks(model):
        groups.setdefault(structure_key(block), []).append(block)  # the key covers the block's class
    return [(block, f"{_MARKER}{type(block).__name__}_{key}") for key, blocks in groups.items()
            if len(blocks) > 1 for block in blocks]


@contextmanager
def shared_layer_graphs(marks):
    """While a step compiles inside this context, the blocks of ``marks`` (see :func:`shared_graph_marks`) share
    their graphs; afterwards they are as before (a mark left behind would outlive a change of the block)."""
    attributes = ("_cell_init_args", "no_inline")
    saved = [(block, {a: block.__dict__[a] for a in attributes if a in block.__dict__}) for block, _ in marks]
    try:
        for block, mark in marks:
            object.__setattr__(block, "_cell_init_args", mark)
            object.__setattr__(block, "no_inline", False)
        yield
    finally:
        for block, before in saved:
            for attribute in attributes:
                block.__dict__.pop(attribute, None)
            block.__dict__.update(before)
