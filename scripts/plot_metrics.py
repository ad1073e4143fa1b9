"""Draw a Trainer run's curves: training and evaluation loss, learning rate and every evaluation metric by step.

    python scripts/plot_metrics.py OUTPUT_DIR [--output curves.png]

Reads the ``log_history`` of OUTPUT_DIR/trainer_state.json (``Trainer.save_state()`` writes it; scripts/train.py
does at the end), or else of the newest OUTPUT_DIR/checkpoint-<step>/trainer_state.json, and draws it with
matplotlib (``pip install 'mindpeft[plot]'``) into a PNG, by default OUTPUT_DIR/metrics.png: one panel for the
loss (training and evaluation), one for the learning rate and one for each other evaluation metric.
"""
import argparse
import io
import json
import math
import os
import re
import sys

from mindpeft.utils.io import atomic_write_bytes

PANEL_SIZE = (8.0, 3.0)  # inches per panel; the figure is one panel wide
DPI = 100
SPEED_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")


def fail(message):
    raise SystemExit(f"plot_metrics.py: error: {message}")


def state_file(output_dir):
    """OUTPUT_DIR/trainer_state.json, else the newest checkpoint's."""
    path = os.path.join(output_dir, "trainer_state.json")
    if os.path.isfile(path) or not os.path.isdir(output_dir):
        return path
    steps = [int(m.group(1)) for m in map(re.compile(r"checkpoint-(\d+)").fullmatch, os.listdir(output_dir)) if m]
    newest = os.path.join(output_dir, f"checkpoint-{max(steps)}", "trainer_state.json") if steps else None
    return newest if newest and os.path.isfile(newest) else path


def read_log_history(path):
    """The ``log_history`` list of a ``trainer_state.json``; ``ValueError`` naming the file when it is missing or
    holds none."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist (and no checkpoint-<step> folder beside it holds one): give the "
                         "output folder of a Trainer run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file: {err}") from None
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise ValueError(f"{path} holds no log_history list of log entries: is it a Trainer's trainer_state.json?")
    return history


def metric_series(log_history):
    """``{name: (steps, values)}`` of ``loss``, ``learning_rate`` and every ``eval_*`` metric in ``log_history``
    (not the runtime and speed figures), in log order."""
    series = {}
    for entry in log_history:
        for name, value in entry.items():
            wanted = name in ("loss", "learning_rate") or (name.startswith("eval_") and
                                                          not name.endswith(SPEED_SUFFIXES))
            if wanted and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                steps, values = series.setdefault(name, ([], []))
                steps.append(entry["step"])
                values.append(value)
    return series


def panels(series):
    """``[(title, [metric names])]``: the losses together, then the learning rate, then each other metric."""
    layout = []
    losses = [name for name in ("loss", "eval_loss") if name in series]
    if losses:
        layout.append(("loss", losses))
    if "learning_rate" in series:
        layout.append(("learning rate", ["learning_rate"]))
    layout += [(name[len("eval_"):], [name]) for name in sorted(series)
               if name not in ("loss", "eval_loss", "learning_rate")]
    return layout


def plot(series, output, title):
    """Draw ``series`` into the PNG ``output``, one panel per :func:`panels` entry, stacked; returns the drawn
    lines' data, ``{metric name: (steps, values)}``."""
    try:
        import matplotlib
    except ImportError:
        fail("drawing needs matplotlib: pip install 'mindpeft[plot]'")
    matplotlib.use("Agg")
    from matplotlib import pyplot

    layout = panels(series)
    figure, axes = pyplot.subplots(len(layout), 1, squeeze=False, sharex=True, dpi=DPI,
                                   figsize=(PANEL_SIZE[0], PANEL_SIZE[1] * len(layout)))
    for ax, (name, metrics) in zip(axes[:, 0], layout):
        for metric in metrics:
            steps, values = series[metric]
            ax.plot(steps, values, marker="o", markersize=3, label=metric)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if len(metrics) > 1:
            ax.legend()
    axes[-1, 0].set_xlabel("step")
    figure.suptitle(title)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    pyplot.close(figure)
    atomic_write_bytes(output, png.getvalue())  # an interrupted run leaves the old picture or none
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for ax in axes[:, 0] for line in ax.get_lines()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="plot_metrics.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="a Trainer's output folder (scripts/train.py --output-dir)")
    parser.add_argument("--output", help="the PNG to write (default: OUTPUT_DIR/metrics.png)")
    args = parser.parse_args(argv)
    path = state_file(args.output_dir)
    try:
        series = metric_series(read_log_history(path))
    except ValueError as err:
        fail(str(err))
    if not series:
        fail(f"{path} logs no loss, learning rate or evaluation metric yet: nothing to draw")
    output = args.output or os.path.join(args.output_dir, "metrics.png")
    plot(series, output, path)
    print(f"{', '.join(series)} drawn to {output}")
    return output


if __name__ == "__main__":
    main(sys.argv[1:])
