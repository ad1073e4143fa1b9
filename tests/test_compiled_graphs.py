"""What compiled training steps keep on CPU: no kernel of a LoRA ``TrainStep`` (plain or gradient-checkpointed) is
a broadcasting binary op or a ``Transpose`` over activations; forward graphs compile in seconds.

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
from mindspore.experimental import optim
from mindpeft.models import model_outputs
from mindpeft.training import TrainStep
from test_gradient_checkpointing import _batch, _lora_model
model_outputs.VIEW_SWAP_MIN_ELEMENTS = 0  # swaps of long axes of any size through the view op, as at 4 x 512 x 2048
model_outputs.REPLACE_KERNELS_MIN_ELEMENTS = 0  # head swaps by identity products, as on real batches
model, peft_model = _lora_model({family!r}, dropout=0.0)
if {checkpointing!r}:
    model.gradient_checkpointing_enable()
TrainStep(peft_model, optim.SGD(peft_model.trainable_params(), lr=0.0))(**_batch({family!r}))
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
    # only the final graph is dumped (every pass's dump doubled the child's time)
    env = {**os.environ, "MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_SAVE_GRAPHS_PATH": str(folder),
           "MS_DEV_DUMP_IR_PASSES": "graph_build", "GLOG_v": "3"}
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


def test_forward_graphs_of_many_layers_compile_quickly():
    """Head swaps are ``mint.transpose`` only in steps that take gradients: a forward-only graph of 12 GPT-2 layers
    built from that view op took MindSpore's graph scheduler minutes. Evaluation and generate after training."""
    code = """
import time
import numpy as np, mindspore as ms
from mindspore.experimental import optim
from mindpeft import LoraConfig, get_peft_model
from mindpeft.models import GPT2Config, GPT2LMHeadModel
from mindpeft.training import ForwardStep, TrainStep
model = get_peft_model(GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=32, n_head=2, vocab_size=100)),
                       LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"]))
ids = ms.Tensor(np.ones((2, 8)), ms.int32)
TrainStep(model, optim.SGD(model.trainable_params(), lr=0.0))(input_ids=ids, labels=ids)
model.set_train(False)
ForwardStep(model)(input_ids=ids)
model.generate(input_ids=ids, max_new_tokens=2)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "GLOG_v": "3"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_training_steps_compile_without_mindspore_warnings():
    """At MindSpore's default log level, compiled LoRA, prefix-tuning and full fine-tuning steps print nothing: cached
    keys after a prefix, ViT's class token and Segformer's fused stages are joined by ``concat``, whose own backward
    MindSpore rebuilt with a warning after head swaps through a view op; Whisper's encoder layers use their
    attention's first output only."""
    code = f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from mindspore.experimental import optim
from mindpeft import PrefixTuningConfig, get_peft_model
from mindpeft.models import model_outputs
from mindpeft.training import TrainStep
from test_gradient_checkpointing import FAMILIES, _batch, _lora_model
model_outputs.VIEW_SWAP_MIN_ELEMENTS = 0  # head swaps through the view op, as for long axes on large batches
model_outputs.MATMUL_SWAP_MAX_AXIS = 0
for family, checkpointing in (("segformer", False), ("whisper", True)):
    model, peft_model = _lora_model(family, dropout=0.0)
    if checkpointing:
        model.gradient_checkpointing_enable()
    TrainStep(peft_model, optim.SGD(peft_model.trainable_params(), lr=0.0))(**_batch(family))
for family, task, checkpointing in (("gpt2", "CAUSAL_LM", True), ("bert", "SEQ_CLS", False),
                                    ("t5", "SEQ_2_SEQ_LM", False)):
    model = FAMILIES[family][0](0.0)
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type=task, num_virtual_tokens=3))
    if checkpointing:
        model.gradient_checkpointing_enable()
    TrainStep(peft_model, optim.SGD(peft_model.trainable_params(), lr=0.0))(**_batch(family))
vit = FAMILIES["vit"][0](0.0)  # full fine-tuning: the patches' gradient flows back through the class token's concat
vit.set_train(True)
TrainStep(vit, optim.SGD(vit.trainable_params(), lr=0.0))(**_batch("vit"))
print("done")
"""
    env = {key: value for key, value in os.environ.items() if key != "GLOG_v"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("done")
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)
