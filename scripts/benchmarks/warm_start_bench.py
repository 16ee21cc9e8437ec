"""Daily retraining on KuaiRand: a warm-started day against training from scratch (logic of
scripts/bench_warm_start.py).

Five model directories, each trained by `prerank train` in its own process (wall time measured around it) and
evaluated by `prerank evaluate` on the evaluation day:

    previous      from scratch on the days before the new one (04-25..28)
    warm          --warm-start previous on the new day alone (04-29), vocabularies grown with it (the default)
    warm_old      the same with the previous model's vocabularies as they were (--preprocessing PREV/preprocessing):
                  the new day's new ids read the out-of-vocabulary row
    full          from scratch on every day (04-25..29; today's demo)
    day           from scratch on the new day alone

A run whose directory holds metrics.json and evaluation.json is not run again (rerun the script to finish one).
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from trainer.evaluation.cold_start import out_of_vocabulary, slice_aucs
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec.types import Spec
from trainer.training.layout import EVALUATION_FILE, METRICS_FILE, PREPROCESSING_DIR

TIMES_FILE = "bench_seconds.json"  # beside each run: the wall time of its `prerank train`


@dataclass
class Run:
    name: str
    data: str
    extra: tuple[str, ...] = ()


def runs(out: str, days_before: str, new_day: str, all_days: str) -> list[Run]:
    previous = os.path.join(out, "previous")
    return [Run("previous", days_before), Run("warm", new_day, ("--warm-start", previous)),
            Run("warm_old", new_day, ("--warm-start", previous, "--preprocessing",
                                      os.path.join(previous, PREPROCESSING_DIR))),
            Run("full", all_days), Run("day", new_day)]


def prerank(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "trainer.cli", *args], check=True)


def train_and_evaluate(spec_path: str, out: str, run: Run, eval_data: str, sets: list[str]) -> dict:
    """Train and evaluate one run (unless done); {"seconds", "evaluation"}."""
    model_dir = os.path.join(out, run.name)
    times = os.path.join(model_dir, TIMES_FILE)
    if not os.path.exists(os.path.join(model_dir, METRICS_FILE)):
        started = time.time()
        prerank("train", spec_path, "--model-dir", model_dir, "--data", run.data, "--no-validation", *run.extra,
                *[a for s in sets for a in ("--set", s)])
        with open(times, "w", encoding="utf-8") as fh:
            json.dump({"seconds": time.time() - started}, fh)
    if not os.path.exists(os.path.join(model_dir, EVALUATION_FILE)):
        prerank("evaluate", spec_path, "--model-dir", model_dir, "--data", eval_data)
    with open(times, encoding="utf-8") as fh, open(os.path.join(model_dir, EVALUATION_FILE), encoding="utf-8") as ev:
        return {"seconds": json.load(fh)["seconds"], "evaluation": json.load(ev)}


def headline(evaluation: dict) -> dict[str, float]:
    """The figures compared: each binary teacher task's AUC, the student's AUC and GAUC, and the consistency of the
    student with the teacher (pairwise agreement on the exposed candidates and with 50 sampled ones)."""
    out = {f"teacher {task} auc": m["auc"] for task, m in evaluation.get("teacher", {}).items()
           if isinstance(m, dict) and m.get("auc") is not None}
    student = evaluation.get("student", {})
    out.update({f"student {key}": student[key] for key in ("auc", "gauc") if student.get(key) is not None})
    for entry in evaluation.get("consistency", {}).get("by_k", []):
        if entry.get("sampled") in (0, 50) and entry.get("pairwise_agreement") is not None:
            out[f"agreement +{entry['sampled']}"] = entry["pairwise_agreement"]
    return out


def new_id_rows(spec: Spec, out: str, eval_data: str, features: list[str]) -> dict[str, np.ndarray]:
    """Rows of the evaluation day with an id new on the new day: unknown to the previous model's vocabulary, known
    to the grown one; per feature and for any of them."""
    before = Preprocessing.load(os.path.join(out, "previous", PREPROCESSING_DIR))
    after = Preprocessing.load(os.path.join(out, "warm", PREPROCESSING_DIR))
    unknown_before = out_of_vocabulary(spec, before, eval_data, features)
    unknown_after = out_of_vocabulary(spec, after, eval_data, features)
    rows = {f"{f} new on the new day": unknown_before[f] & ~unknown_after[f] for f in features}
    rows["any id new on the new day"] = np.any(np.stack(list(rows.values())), axis=0)
    return rows


def growth(out: str) -> dict[str, dict]:
    """What the warm run's vocabulary extension added, per table (the extension record)."""
    fitted = Preprocessing.load(os.path.join(out, "warm", PREPROCESSING_DIR))
    return fitted.extension.get("tables", {})


def slice_table(rows: dict[str, np.ndarray], scored: dict[str, object]) -> list[dict]:
    """Per run and slice: the rows and each score's AUC (`slice_aucs`)."""
    out = []
    for name, scores in scored.items():
        for label, mask in rows.items():
            out.append({"run": name, "slice": label, "rows": int(mask.sum()),
                        **slice_aucs(scores.labels, scores.scores, mask)})
    return out
