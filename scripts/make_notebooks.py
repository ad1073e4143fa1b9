"""Builds each tutorial's notebook from its percent-format script (module docstring, ``# %%`` code cells,
``# %% [markdown]`` cells) and runs it, so that the notebook ships with the outputs of a real run and never drifts
from the script.

    python scripts/make_notebooks.py                 # run every tutorial cell by cell, write tutorials/*/*.ipynb
    python scripts/make_notebooks.py prompt_methods  # only that tutorial
    python scripts/make_notebooks.py --no-run        # cells only, no outputs (quick drafts)
    python scripts/make_notebooks.py --check         # exit 1 if a notebook is out of date (does not run anything)

Running a tutorial here works like a notebook kernel: the code cells run one after another in one namespace, in
the tutorial's folder, without ``__file__``, and what each cell prints (stdout and stderr) becomes that cell's
output. Progress bars are off (``TUTORIAL_PROGRESS=0``) and the outputs go to a temporary folder. The notebook
records the SHA-256 of the script it was run from (``metadata.mindpeft.script_sha256``); ``--check`` compares the
cells and that hash with the current script, so editing a script without regenerating its notebook fails the
tests.
"""
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def script_cells(source):
    """``[(kind, text), ...]`` of a percent-format script; ``kind`` is ``"code"`` or ``"markdown"``. A module
    docstring at the top (the tutorial's title, command, settings and results) becomes the first markdown cell."""
    cells, kind, lines = [], None, []
    if source.startswith('"""'):
        end = source.index('"""', 3)
        cells.append(("markdown", source[3:end].strip("\n")))
        source = source[end + 3:]

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind is not None and text:
            if kind == "markdown":
                text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.split("\n"))
            cells.append((kind, text))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def script_to_notebook(source, outputs=None):
    """The notebook of ``source``; ``outputs`` (one list of texts per code cell, from :func:`run_script`) are
    stored as stream outputs with execution counts."""
    cells, code_index = [], 0
    for kind, text in script_cells(source):
        if kind == "markdown":
            cells.append({"cell_type": "markdown", "id": f"cell-{len(cells) + 1}", "metadata": {},
                          "source": text.splitlines(keepends=True)})
            continue
        cell = {"cell_type": "code", "execution_count": None, "id": f"cell-{len(cells) + 1}", "metadata": {},
                "outputs": [], "source": text.splitlines(keepends=True)}
        if outputs is not None:
            cell["execution_count"] = code_index + 1
            for out in outputs[code_index]:
                cell["outputs"].append({"name": out["name"], "output_type": "stream",
                                        "text": out["text"].splitlines(keepends=True)})
        cells.append(cell)
        code_index += 1
    metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"}}
    if outputs is not None:
        metadata["mindpeft"] = {"script_sha256": expected_sha(source)}
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


# Runs in a child process: python make_notebooks.py --execute SCRIPT RESULT_JSON
def _execute(script, result_path):
    import contextlib
    import io
    import traceback

    with open(script, encoding="utf-8") as f:
        cells = [text for kind, text in script_cells(f.read()) if kind == "code"]
    namespace = {"__name__": "__main__"}
    outputs, error = [], None
    for index, text in enumerate(cells):
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                exec(compile(text, f"<{os.path.basename(script)} cell {index + 1}>", "exec"), namespace)
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails
            error = traceback.format_exc()
        outputs.append([{"name": name, "text": buffer.getvalue()}
                        for name, buffer in (("stdout", stdout), ("stderr", stderr)) if buffer.getvalue()])
        # also show the output live, so a long run can be followed
        for out in outputs[-1]:
            (sys.__stdout__ if out["name"] == "stdout" else sys.__stderr__).write(out["text"])
        if error is not None:
            break
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump({"outputs": outputs, "error": error}, f)
    return 0 if error is None else 1


def run_script(script, env=None, timeout=1800):
    """Run ``script``'s code cells as a notebook kernel would; returns one list of outputs per code cell."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "result.json")
        environ = {**os.environ, "TUTORIAL_PROGRESS": "0", "TUTORIAL_OUTPUT": os.path.join(tmp, "outputs"),
                   "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
                   **(env or {})}
        subprocess.run([sys.executable, os.path.abspath(__file__), "--execute", os.path.abspath(script), result_path],
                       cwd=os.path.dirname(os.path.abspath(script)), env=environ, timeout=timeout, check=False)
        if not os.path.exists(result_path):
            raise RuntimeError(f"{script} did not finish")
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    if result["error"] is not None:
        raise RuntimeError(f"{script} failed:\n{result['error']}")
    return result["outputs"]


def notebook_path(script):
    return script[: -len(".py")] + ".ipynb"


def notebook_text(notebook):
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def stale_reason(script):
    """Why ``script``'s notebook is out of date, or None when it is current."""
    path = notebook_path(script)
    if not os.path.exists(path):
        return "missing"
    with open(script, encoding="utf-8") as f:
        source = f.read()
    with open(path, encoding="utf-8") as f:
        notebook = json.load(f)
    expected = script_to_notebook(source)
    strip = [{"cell_type": c["cell_type"], "source": c["source"]} for c in notebook.get("cells", [])]
    if strip != [{"cell_type": c["cell_type"], "source": c["source"]} for c in expected["cells"]]:
        return "its cells differ from the script's"
    if notebook.get("metadata", {}).get("mindpeft", {}).get("script_sha256") != expected_sha(source):
        return "it was not run from the current script (no outputs, or outputs of an older version)"
    return None


def expected_sha(source):
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def main(argv):
    if argv[:1] == ["--execute"]:
        return _execute(argv[1], argv[2])
    check, run = "--check" in argv, "--no-run" not in argv
    names = [a for a in argv if not a.startswith("--")]
    scripts = sorted(glob.glob(os.path.join(ROOT, "tutorials", "*", "*.py")))
    if names:
        scripts = [s for s in scripts if os.path.basename(s)[: -len(".py")] in names]
        if len(scripts) != len(names):
            print("unknown tutorial among", names, file=sys.stderr)
            return 2
    if check:
        stale = [(s, stale_reason(s)) for s in scripts]
        stale = [(notebook_path(s), reason) for s, reason in stale if reason]
        for path, reason in stale:
            print(f"out of date: {os.path.relpath(path, ROOT)} ({reason}); run python scripts/make_notebooks.py")
        return 1 if stale else 0
    for script in scripts:
        with open(script, encoding="utf-8") as f:
            source = f.read()
        print(f"== {os.path.relpath(script, ROOT)}", flush=True)
        start = time.perf_counter()
        outputs = run_script(script) if run else None
        if run:
            print(f"== ran in {time.perf_counter() - start:.0f} s", flush=True)
        with open(notebook_path(script), "w", encoding="utf-8") as f:
            f.write(notebook_text(script_to_notebook(source, outputs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
