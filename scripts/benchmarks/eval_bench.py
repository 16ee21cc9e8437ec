"""Evaluation speed, before and after (`scripts/bench_evaluate.py` prints it).

The baseline is another commit's code (`git archive REV trainer serving` into a temporary directory); each
measured evaluation runs in a fresh process (`eval_run.py`) with one version first on PYTHONPATH, the two
versions alternating, on the same model, data and item catalog. Rates are evaluated rows per second of
`evaluate_model` (the scoring; the item catalog and the model are loaded before the clock starts), by wall
clock and by CPU time (the process's user + system time: less sensitive to other jobs on a shared machine).
The results are compared too: K = 0 must be the same, K = the largest K draws the same items (equal up to float
rounding), a smaller K nests in the largest's draws (statistically equivalent, not equal).
"""
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "eval_run.py")


@dataclass
class Case:
    """One data set to evaluate on."""

    name: str
    spec: str
    model_dir: str
    data: list[str]
    items: list[str]


@dataclass
class Runs:
    """The measured evaluations of one case by one code version."""

    records: list[dict] = field(default_factory=list)

    def rate(self, key: str) -> float:
        """Median rows per second by `key` ("wall" or "cpu")."""
        return float(np.median([r["rows"] / r[key] for r in self.records]))

    def seconds(self, key: str) -> float:
        return float(np.median([r[key] for r in self.records]))


def baseline_code(repo: str, revision: str, into: str) -> str:
    """The `trainer` and `serving` packages of `revision`, extracted under `into`; the directory to put first
    on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", repo, "archive", revision, "trainer", "serving"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def measure(code: str, case: Case, sampled: str, cwd: str, max_batches: int | None = None) -> dict:
    """One evaluation of `case` with the prerank in `code`, in a fresh process."""
    command = [sys.executable, RUN, case.spec, case.model_dir, "--data", *case.data, "--items", *case.items,
               "--sampled", sampled]
    if max_batches:
        command += ["--max-batches", str(max_batches)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": code, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise RuntimeError(f"evaluation with {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(before: Runs, after: Runs) -> dict[str, float]:
    """Rates and their ratios (after / before)."""
    out = {}
    for key in ("wall", "cpu"):
        out[f"{key}_before"], out[f"{key}_after"] = before.rate(key), after.rate(key)
        out[f"{key}_ratio"] = out[f"{key}_after"] / out[f"{key}_before"]
    return out


def flat_metrics(result: dict) -> dict[str, float | None]:
    """'teacher/click/auc', 'student/gauc', 'consistency/50/pairwise_agreement', ... -> value."""
    out: dict[str, float | None] = {}
    for task, values in result.get("teacher", {}).items():
        out.update({f"teacher/{task}/{k}": v for k, v in values.items()})
    out.update({f"student/{k}": v for k, v in result.get("student", {}).items() if k != "task"})
    for row in result.get("consistency", {}).get("by_k", []):
        out.update({f"consistency/{row['sampled']}/{k}": v for k, v in row.items() if k != "sampled"})
    return out


def metric_differences(before: dict, after: dict) -> list[tuple[str, float | None, float | None]]:
    """(metric, before, after) for every metric of either result."""
    a, b = flat_metrics(before), flat_metrics(after)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b), key=lambda k: (k.count("/"), k))]


def largest_difference(rows: list[tuple[str, float | None, float | None]], prefix: str) -> float:
    """The largest |before - after| among the metrics whose name starts with one of `prefix`'s."""
    diffs = [abs(x - y) for k, x, y in rows if k.startswith(prefix) and x is not None and y is not None]
    return max(diffs, default=0.0)


def scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="prerank-bench-evaluate-")
