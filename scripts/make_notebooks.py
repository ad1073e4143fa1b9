"""Builds each tutorial's notebook from its percent-format script (``# %%`` code cells, ``# %% [markdown]``
cells), so the two never drift apart.

    python scripts/make_notebooks.py           # write tutorials/*/*.ipynb
    python scripts/make_notebooks.py --check   # exit 1 if a notebook is out of date
"""
import glob
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def script_to_notebook(source):
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind is not None and text:
            if kind == "markdown":
                text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.split("\n"))
                cells.append({"cell_type": "markdown", "metadata": {}, "source": text.splitlines(keepends=True)})
            else:
                cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                              "source": text.splitlines(keepends=True)})

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def notebook_path(script):
    return script[: -len(".py")] + ".ipynb"


def main(argv):
    check = "--check" in argv
    stale = []
    for script in sorted(glob.glob(os.path.join(ROOT, "tutorials", "*", "*.py"))):
        with open(script, encoding="utf-8") as f:
            text = json.dumps(script_to_notebook(f.read()), indent=1, ensure_ascii=False) + "\n"
        path = notebook_path(script)
        current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if current != text:
            stale.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
    if check and stale:
        print("out of date:", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
