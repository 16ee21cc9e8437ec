"""`prerank report`: PNG plots of a training run, from MODEL_DIR/history.jsonl and evaluation.json.

Plots: losses (smoothed over the faint raw curve), the weighted loss terms
stacked into the total, the distillation weight λ, AUC / GAUC during evaluation,
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


def smoothed(values: Sequence[float], window: float | None = None) -> list[float]:
    """An exponential moving average of `values`, debiased (TensorBoard's smoothing): the first point is kept and
    no point lags toward zero. `window`: the points an average spans, roughly (default: a tenth of them, >= 1)."""
    window = window or max(1.0, len(values) / 10)
    keep = 1.0 - 1.0 / window
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = keep * average + (1 - keep) * value
        weight = keep * weight + (1 - keep)
        out.append(average / weight)
    return out


def _aligned(series: Series) -> tuple[list[float], dict[str, list[float]]]:
    """The steps at which every series has a point, and each series' values at them."""
    common = sorted(set.intersection(*(set(x) for x, _ in series.values())))
    values = {label: dict(zip(x, y)) for label, (x, y) in series.items()}
    return common, {label: [v[step] for step in common] for label, v in values.items()}


def _plot(path: str, title: str, xlabel: str, ylabel: str, series: Series, style: str = "lines") -> str:
    """Draw the series and write the PNG atomically. `style`: "lines" (one per series), "smoothed" (each series
    faint as logged, with its moving average over it) or "stacked" (areas summing to their total)."""
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if style == "stacked":
        steps, parts = _aligned(series)
        ax.stackplot(steps, *parts.values(), labels=list(parts), alpha=0.8)
        ax.plot(steps, [sum(v) for v in zip(*parts.values())], color="black", linewidth=1, label="total")
    for label, (x, y) in series.items() if style != "stacked" else ():
        if style == "smoothed" and len(x) > 2:
            line, = ax.plot(x, y, linewidth=0.8, alpha=0.25)
            ax.plot(x, smoothed(y), color=line.get_color(), linewidth=1.6, label=label)
        else:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    return path


def write_report(model_dir: str, out_dir: str | None = None) -> list[str]:
    """Write losses, loss_terms, lambda, auc, consistency and sparsity PNGs to `out_dir` (MODEL_DIR/report);
    return the paths."""
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
    weighted_keys = _keys(history, lambda k: k.startswith("weighted/"))
    plots = [  # all data is read (and evaluation.json validated) before anything is drawn
        ("losses.png", "Training losses (faint: as logged; bold: moving average)", "step", "loss",
         _series(history, loss_keys), "smoothed"),
        ("loss_terms.png", "Weighted loss terms (they sum to the total: λ·distill grows with λ)", "step", "loss",
         _series(history, weighted_keys, lambda k: k.removeprefix("weighted/").replace("distill", "λ·distill")),
         "stacked"),
        ("lambda.png", "Distillation weight λ", "step", "λ", _series(history, ["lambda"]), "lines"),
        ("auc.png", auc_title, "step", "AUC",
         _series(history, eval_keys, lambda k: k.removeprefix("eval/").replace("/", " ")), "lines"),
        ("consistency.png", "Teacher/student consistency", "sampled items", "share",
         _consistency_series(metrics_path) if os.path.isfile(metrics_path) else {}, "lines"),
        ("sparsity.png", "All-zero embedding rows", "step", "fraction of rows",
         _series(history, table_keys, lambda k: k.removeprefix("zero_rows/")), "lines"),
    ]
    written = []
    for name, title, xlabel, ylabel, series, style in plots:
        if not series:
            source = os.path.join(model_dir, EVALUATION_FILE if name == "consistency.png" else HISTORY_FILE)
            reason = "no data for it in" if os.path.isfile(source) else "not found:"
            LOG.warning("report: %s skipped, %s %s", name, reason, source)
            continue
        written.append(_plot(os.path.join(out_dir, name), title, xlabel, ylabel, series, style))
    return written
