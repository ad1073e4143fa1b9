"""Gradient checkpointing: each repeated block of a model (decoder layer, encoder layer) keeps only its inputs in the
forward pass and recomputes its activations in the backward pass, with MindSpore's ``Cell.recompute``.

The blocks are found generically: the items of every layer list (an ``nn.CellList`` whose items share one class)
that holds no such list itself, so GPT-2's ``h``, BERT's ``encoder.layer``, T5's ``block`` (not the heterogeneous
``layer`` list inside each block) and SegFormer's per-stage ``blocks`` (not ``stages``; its decode head's
``linear_projections`` too, which costs one small matmul more in the backward).

Measured on MindSpore 2.10 CPU:

- PyNative honours it: the memory a LLaMA layer (hidden 512, 8 heads) keeps at 4 x 512 tokens falls from about
  107 MB to about 10 MB.
  MindSpore's reentrant recompute (``use_reentrant=True``) takes the block's trainable parameters when it is set
  up, so adapters injected afterwards (``gradient_checkpointing_enable()`` before ``get_peft_model``, as HF's
  recipes do) get zero gradients, silently: this is MindSpore's form of the trap transformers'
  ``enable_input_require_grads`` works around. Frozen embeddings (inputs that need no gradient) are no trap here.
  The non-reentrant recompute used here has neither problem.
- Under ``mindspore.jit`` the compiled graph recomputes too, and saves memory since the models' compiled kernels
  stopped keeping index maps (see ``tests/test_compiled_graphs.py``): a LLaMA layer (hidden 1024, 16 heads) at
  4 x 512 tokens keeps about 270 MB without and 88 MB with. Compiling the graph holds host memory per layer,
  more for recomputed ones (see :mod:`.layer_graphs`, which compiles identical layers once), and attention's
  softmax in a recomputed block is ``exp(log_softmax)`` (MindSpore's recompute does not reach a custom backward's
  saved output; see ``model_outputs.attention_softmax``).
- Dropout draws its mask from a seeded generator whose state cannot be saved and restored, so a recomputed block
  would draw new masks; in PyNative the draws of the forward pass are recorded and replayed in the recompute
  (the recorded draws cost memory of the size of each dropped-out tensor, only for dropout with ``p > 0``).
  Graph mode keeps the forward's masks by itself.
"""
import warnings
from collections import deque
from contextlib import contextmanager

from mindspore import nn

from ..utils.graph_state import bump_graph_version
from .layers import Dropout

_RECOMPUTE_PREFIX = "recompute_"


def _layer_lists(model):
    """The ``nn.CellList`` s of ``model`` whose items share one class."""
    return [cell for _, cell in model.cells_and_names()
            if isinstance(cell, nn.CellList) and len(cell) and len({type(item) for item in cell}) == 1]


def checkpointed_blocks(model):
    """The Cells gradient checkpointing recomputes: the items of the innermost layer lists of ``model``."""
    return [block for cells in _layer_lists(model) if not any(_layer_lists(item) for item in cells)
            for block in cells]


@contextmanager
def _swapped_draws(dropouts, draw):
    """Inside the block, each Dropout ``d`` draws its uniform noise with ``draw(d, original, shape)``."""
    originals = [(d, d.uniform) for d in dropouts]
    try:
        for d, original in originals:
            object.__setattr__(d, "uniform", lambda shape, d=d, original=original: draw(d, original, shape))
        yield
    finally:
        for d, original in originals:
            object.__setattr__(d, "uniform", original)


def _dropout_replay(block):
    """``context_fn`` for ``Cell.recompute``: the forward pass records each Dropout's noise, the recompute pass
    replays it, so both see the same masks."""

    def context_fn():
        dropouts = [c for _, c in block.cells_and_names() if isinstance(c, Dropout) and c.uniform is not None]
        tapes = {id(d): deque() for d in dropouts}

        def record(d, original, shape):
            noise = original(shape)
            tapes[id(d)].append(noise)
            return noise

        def replay(d, original, shape):
            return tapes[id(d)].popleft()

        return _swapped_draws(dropouts, record), _swapped_draws(dropouts, replay)

    return context_fn


def _reset_recompute(cell):
    """Undo ``cell.recompute()`` on ``cell`` and its sub-cells (MindSpore 2.10 has no public way back)."""
    cell._recompute_cell = None  # pylint: disable=protected-access
    cell.__dict__.pop("output_recompute", None)
    getattr(cell, "_func_graph_flags", {}).pop("output_recompute", None)
    for _, sub in cell.cells_and_names():
        sub._has_config_recompute = False  # pylint: disable=protected-access
        scope = sub._scope  # pylint: disable=protected-access
        if scope is not None and scope.startswith(_RECOMPUTE_PREFIX):
            sub._scope = scope[len(_RECOMPUTE_PREFIX):] or None  # pylint: disable=protected-access


def is_checkpointed(block):
    return getattr(block, "_recompute_cell", None) is not None


def enable_gradient_checkpointing(model, gradient_checkpointing_kwargs=None):
    """Recompute every block of ``model`` (see :func:`checkpointed_blocks`) in the backward pass.

    ``gradient_checkpointing_kwargs`` is transformers' argument; its ``use_reentrant`` is accepted and ignored
    (mindpeft always uses MindSpore's non-reentrant recompute, see the module notes). Functions compiled with
    ``mindspore.jit`` before the call keep their graphs: :class:`mindpeft.training.TrainStep` rebuilds its own.
    """
    kwargs = dict(gradient_checkpointing_kwargs or {})
    if kwargs.pop("use_reentrant", False):
        warnings.warn("use_reentrant=True is ignored: MindSpore's reentrant recompute gives zero gradients to "
                      "parameters made trainable after it is set up (adapters) and redraws dropout masks; "
                      "mindpeft uses the non-reentrant one")
    if kwargs:
        raise ValueError(f"Unsupported gradient_checkpointing_kwargs: {sorted(kwargs)}; mindpeft accepts "
                         "'use_reentrant' only")
    blocks = checkpointed_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no layer list (an nn.CellList of blocks of one class) to "
                         "checkpoint")
    for block in blocks:
        if is_checkpointed(block):
            _reset_recompute(block)
        # early_stop=True (stop the recompute once the saved tensors are rebuilt) breaks MindSpore 2.10's PyNative
        # executor when it stops inside a nested Cell ("Stack input_args_info_stack_ is empty").
        block.recompute(use_reentrant=False, early_stop=False, context_fn=_dropout_replay(block))
    bump_graph_version()


def disable_gradient_checkpointing(model):
    """Keep every block's activations again."""
    for block in checkpointed_blocks(model):
        if is_checkpointed(block):
            _reset_recompute(block)
    bump_graph_version()


def is_gradient_checkpointing(model):
    """Whether ``model``'s blocks are recomputed in the backward pass."""
    blocks = checkpointed_blocks(model)
    return bool(blocks) and all(is_checkpointed(block) for block in blocks)
