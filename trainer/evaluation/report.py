"""`prerank report`: PNG plots of a training run, from MODEL_DIR/history.jsonl and evaluation.json.

Plots: losses, the distillation weight λ, AUC / GAUC during evaluation,
teacher/student consistency against the number of sampled items, and the
share of all-zero rows of each embedding table. A plot without data is skipped
with a logged warning. Drawn on Matplotlib's Agg canvas (no display needed).
"""
import json
import logging
import math
import os
from collections.abc import Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.data.splits import IN_SAMPLE_KEY
from trainer.errors import ModelDirError
from trainer.files import atomic_write
from trainer.training.layout import EVALUATION_FILE, HISTORY_FILE, REPORT_DIR
LOG = logging.getLogger(__name__)

Series = dict[str, tuple[list[float], list[float]]]  # label -> (x values, y values)


def read_history(path: str) -> dict[int, dict[str, float]]:
    """Step -> {key: value}; a repeated step (resumed job) keeps the last value of each key."""
    if not os.path.isfile(path):
        raise ModelDirError(f"{path}: not found; the training job writes it into the model directory")
    history: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelDirError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                raise ModelDirError(f"{path}:{line_no}: expected a JSON object with an integer 'step', "
                                    f"got {line.strip()[:80]}")
            values = history.setdefault(step, {})
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[key] = float(value)
    if not history:
        raise ModelDirError(f"{path}: empty, no history records")
    return history


def _series(history: dict[int, dict[str, float]], keys: Sequence[str],
            label: Callable[[str], str] = str) -> Series:
    """One (steps, values) series per key present in the history, named by `label(key)`."""
    out: Series = {}
    for key in keys:
        points = [(step, values[key]) for step, values in sorted(history.items())
                  if key in values and not math.isnan(values[key])]
        if points:
            out[label(key)] = ([p[0] for p in points], [p[1] for p in points])
    return out


def _keys(history: dict[int, dict[str, float]], accept: Callable[[str], bool]) -> list[str]:
    return sorted({key for values in history.values() for key in values if accept(key)})


def _consistency_series(path: str) -> Series:
    """Pairwise agreement and each recall against the number of sampled items, from evaluation.json."""
    try:
        with open(path, encoding="utf-8") as fh:
            by_k = json.load(fh).get("consistency", {}).get("by_k", [])
        rows = sorted(by_k, key=lambda row: row["sampled"])
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise ModelDirError(f"{path}: expected consistency.by_k as a list of objects with 'sampled' ({exc})") from None
    names = sorted({k for row in rows for k in row if k == "pairwise_agreement" or k.startswith("recall@")},
                   key=lambda k: (k != "pairwise_agreement", k))
    out: Series = {}
    for name in names:
        points = [(row["sampled"], row[name]) for row in rows if isinstance(row.get(name), (int, float))]
        if points:
            out[name] = ([p[0] for p in points], [p[1] for p in points])
    return out


def _plot(path: str, title: str, xlabel: str, ylabel: str, series: Series) -> str:
    """Draw one line per series and write the PNG atomically."""
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    return path


def write_report(model_dir: str, out_dir: str | None = None) -> list[str]:
    """Write losses, lambda, auc, consistency and sparsity PNGs to `out_dir` (MODEL_DIR/report); return the paths."""
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"{model_dir}: not a trained model directory (no such directory); run `prerank train` "
                            "first")
    history = read_history(os.path.join(model_dir, HISTORY_FILE))
    out_dir = out_dir or os.path.join(model_dir, REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    metrics_path = os.path.join(model_dir, EVALUATION_FILE)

    eval_keys = _keys(history, lambda k: k.startswith("eval/") and k.rsplit("/", 1)[-1] in ("auc", "gauc"))
    loss_keys = _keys(history, lambda k: k.startswith("loss/"))
    table_keys = _keys(history, lambda k: k.startswith("zero_rows/"))
    in_sample = any(IN_SAMPLE_KEY in row for row in history.values())
    auc_title = "Evaluation AUC / GAUC" + (" (IN-SAMPLE: the validation files are training files)" if in_sample else "")
    plots = [  # all data is read (and evaluation.json validated) before anything is drawn
        ("losses.png", "Training losses", "step", "loss", _series(history, loss_keys)),
        ("lambda.png", "Distillation weight λ", "step", "λ", _series(history, ["lambda"])),
        ("auc.png", auc_title, "step", "AUC",
         _series(history, eval_keys, lambda k: k.removeprefix("eval/").replace("/", " "))),
        ("consistency.png", "Teacher/student consistency", "sampled items", "share",
         _consistency_series(metrics_path) if os.path.isfile(metrics_path) else {}),
        ("sparsity.png", "All-zero embedding rows", "step", "fraction of rows",
         _series(history, table_keys, lambda k: k.removeprefix("zero_rows/"))),
    ]
    written = []
    for name, title, xlabel, ylabel, series in plots:
        if not series:
            source = os.path.join(model_dir, EVALUATION_FILE if name == "consistency.png" else HISTORY_FILE)
            reason = "no data for it in" if os.path.isfile(source) else "not found:"
            LOG.warning("report: %s skipped, %s %s", name, reason, source)
            continue
        written.append(_plot(os.path.join(out_dir, name), title, xlabel, ylabel, series))
    return written
