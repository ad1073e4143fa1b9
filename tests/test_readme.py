"""Every ```python block of README.md runs as written, in order, from a folder laid out like the repository."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# Appended after the blocks: facts the test checks that the blocks do not print.
CHECKS = '''
import numpy as _np
_b = [g for p, g in zip(model.trainable_params(), grads) if "lora_B" in p.name]  # A's are 0 while B starts at 0
print("CHECK grads", len(_b) > 0 and all(float(_np.abs(g.asnumpy()).sum()) > 0 for g in _b))
print("CHECK jit loss", float(loss))
'''


def python_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_readme_python_blocks_run_and_print_what_they_say(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 3
    os.symlink(os.path.join(ROOT, "tutorials"), tmp_path / "tutorials")
    script = tmp_path / "readme_blocks.py"  # a real file: mindspore.jit compiles from source files only
    script.write_text("\n".join(blocks) + CHECKS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}  # MindSpore's default log level shows its warnings
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout
    # What the README shows in comments is what the blocks print.
    for expected in re.findall(r"^# (trainable params: .*|\[.*\])$", blocks[0], re.M):
        assert expected in output, (expected, output)
    assert f"loss {re.search(r'# loss ([0-9.]+)', blocks[0]).group(1)}" in output
    assert sorted(os.listdir(tmp_path / "my-adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert "CHECK grads True" in output  # the tutorial-style PyNative step had non-zero gradients
    jit_loss = float(re.search(r"CHECK jit loss (\S+)", output).group(1))
    assert 0 < jit_loss < 20
    # quiet: no Python warning ("...Warning: ...") and no MindSpore one ("[WARNING] ME(...)": deprecated APIs,
    # recompilation, the dataset pipeline's memory check)
    warnings = [line for line in (output + run.stderr).splitlines() if re.search(r"WARNING|Warning|deprecated", line)]
    assert not warnings, "\n".join(warnings)
