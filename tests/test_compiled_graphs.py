"""What compiled training steps keep on CPU: no kernel of a LoRA step (plain or gradient-checkpointed) is a
broadcasting binary op or a ``Transpose`` over activations.

Measured on MindSpore 2.10 CPU: such kernels keep int64 index maps of their output's size for the compiled graph's
life (a broadcasting multiply two, 16 bytes an element; a transpose one), on every layer and again for every
recomputed one, outside MindSpore's memory pool. The graphs are read from MindSpore's own dump
(``MS_DEV_SAVE_GRAPHS``) of a child process.
"""
import math
import os
import re
import subprocess
import sys

import pytest

BINARY_OPS = {"Add", "Sub", "Mul", "Div", "RealDiv", "Maximum", "Minimum", "Select", "Pow", "SquaredDifference",
              "Less", "LessEqual", "Greater", "GreaterEqual", "Equal", "NotEqual", "AddExt", "SubExt"}
NODE = re.compile(r"\s+%\d+\(.*?\) = PrimFunc_(\w+)\(")
TENSOR = re.compile(r"Tensor\[\w+\], \(([\d, ]*)\)")
SCOPE = re.compile(r"# Fullname with scope: \((.*)\)")

CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_gradient_checkpointing import _batch, _loss_and_grads, _lora_model
model, peft_model = _lora_model({family!r}, dropout=0.0)
if {checkpointing!r}:
    model.gradient_checkpointing_enable()
_loss_and_grads(peft_model, _batch({family!r}), jit=True)
"""


def _shapes(text):
    return [tuple(int(d) for d in dims.split(",") if d.strip()) for dims in TENSOR.findall(text)]


def index_map_kernels(graph_file, batch, min_elements):
    """(op, input shapes, output shape, scope) of each kernel in a dumped graph that broadcasts a non-scalar
    operand or transposes, with an activation-sized output: ``batch`` rows and at least ``min_elements``."""
    lines = open(graph_file).read().splitlines()
    found = []
    for i, line in enumerate(lines):
        match = NODE.match(line)
        if not match:
            continue
        op, signature = match.group(1), lines[i + 1]
        inputs, outputs = _shapes(signature.split("->")[0]), _shapes(signature.split("->")[-1])
        if not outputs or outputs[0][:1] != (batch,) or math.prod(outputs[0]) < min_elements:
            continue
        operands = [shape for shape in inputs if math.prod(shape) > 1]
        broadcasts = op in BINARY_OPS and any(shape != outputs[0] for shape in operands)
        if broadcasts or op == "Transpose":
            scope = next((m.group(1) for m in map(SCOPE.search, lines[i + 1:i + 8]) if m), "")
            found.append((op, inputs, outputs[0], scope))
    return found


def _compiled_graph(tmp_path, family, checkpointing):
    folder = tmp_path / f"{family}-{checkpointing}"
    code = CHILD.format(tests=os.path.dirname(__file__), family=family, checkpointing=checkpointing)
    env = {**os.environ, "MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_SAVE_GRAPHS_PATH": str(folder), "GLOG_v": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    graphs = sorted(folder.glob("graph_build_*.ir"))
    assert graphs, f"no graph dumped in {folder}"
    return graphs[-1]


@pytest.mark.parametrize("family,checkpointing", [("llama", False), ("llama", True), ("gpt2", False),
                                                  ("bert", False), ("t5", True), ("opt", False),
                                                  ("bloom", False), ("whisper", False), ("vit", False),
                                                  ("segformer", False)])
def test_lora_step_has_no_index_map_kernels(tmp_path, family, checkpointing):
    graph = _compiled_graph(tmp_path, family, checkpointing)
    # the test batch is 2 x 7 tokens (the causal mask and rotary tables, once a step, are not batch-sized)
    kernels = index_map_kernels(graph, batch=2, min_elements=2 * 7 * 2)
    assert not kernels, "\n".join(map(str, kernels))
