"""Evaluation (`prerank evaluate`): teacher per-task quality, student quality, student-teacher consistency.

- Teacher: AUC and logloss per binary task; RMSE of the (transformed) target for regression tasks.
- Student: AUC, GAUC (grouped by the spec's group key) and logloss on the student's task.
- Consistency, on candidate sets made of each group's exposures plus K items sampled from the item
  table: pairwise order agreement with the teacher's fused score and recall of the teacher's top-k
  in the student's top-k'.

Results are strict JSON: a metric that is undefined on the rows (AUC with one
class, recall@10_in_30 with no group of more than 30 candidates) is None, and
`result["undefined"]` says why, keyed by its path (`strict_result`).
"""
import math
import re

import numpy as np

from trainer.evaluation import metrics
from trainer.evaluation.predict import Predictions, Scorer, predict_with
from trainer.evaluation.scoring import ModelScorer

RECALL_KS = ((1, 3), (3, 10), (10, 30))  # (teacher's top-k, student's top-k')


def quality(model, p: Predictions) -> dict:
    """{'teacher': {task: {...}}, 'student': {...}} on exposed rows. `model`: a JointModel or a scorer (anything
    with `labels` and `student_task`)."""
    out: dict = {"teacher": {}, "rows": int(p.exposed.sum())}
    for task, label in model.labels.items():
        y = p.labels[task][p.exposed]
        if label.type == "binary":
            prob = p.teacher[task][p.exposed]
            out["teacher"][task] = {"auc": metrics.auc(y, prob), "logloss": metrics.logloss(y, prob)}
        else:
            target = np.log1p(np.maximum(y, 0.0)) if label.transform == "log1p" else y
            pred = p.teacher_estimate[task][p.exposed]
            out["teacher"][task] = {"rmse": float(np.sqrt(np.mean((pred - target) ** 2)))}
    if p.student_logit is not None:
        y = p.labels[model.student_task][p.exposed]
        logit = p.student_logit[p.exposed]
        prob = 1.0 / (1.0 + np.exp(-logit))
        out["student"] = {"task": model.student_task, "auc": metrics.auc(y, logit),
                          "gauc": metrics.gauc(y, logit, p.groups[p.exposed]), "logloss": metrics.logloss(y, prob)}
    return out


def consistency(p: Predictions, sampled: int, ks=RECALL_KS) -> dict:
    c = metrics.consistency(p.teacher_score, p.student_logit, p.groups, ks=ks)
    return {"sampled": sampled, "groups": c.groups, "pairwise_agreement": c.pairwise_agreement, **c.recall}


def evaluate_model(model, patterns: str | list[str], batch_size: int = 2048, max_batches: int | None = None,
                   sampled: tuple[int, ...] = (0,), seed: int = 0, skip_corrupt: bool = False) -> dict:
    """Quality on `patterns`, plus consistency for each number of sampled items (student models only).

    Args:
      model: a JointModel (its catalog samples the items).
      patterns: the files (globs).
      batch_size: rows per batch.
      max_batches: read at most this many batches.
      sampled: numbers of items sampled per group for the consistency candidate sets (0: exposures only).
        One pass scores the largest; a smaller K takes each group's first K of those draws (`predict_with`).
      seed: seed of the sampled items.
      skip_corrupt: leave corrupt records out instead of failing; the result's "skipped" lists them per file
        (`corrupt.Skipped.as_dict` entries; always there, empty without corrupt records).
    """
    return evaluate_scorer(ModelScorer(model, model.catalog), patterns, batch_size, max_batches, sampled, seed,
                           skip_corrupt)


def evaluate_scorer(scorer: Scorer, patterns: str | list[str], batch_size: int = 2048, max_batches: int | None = None,
                    sampled: tuple[int, ...] = (0,), seed: int = 0, skip_corrupt: bool = False) -> dict:
    """`evaluate_model` with any scorer (a model's, an export's): the arguments as there."""
    if any(k < 0 for k in sampled):
        raise ValueError(f"numbers of sampled items must be >= 0, got {sampled}")
    largest = max(sampled, default=0) if scorer.has_student else 0
    base = predict_with(scorer, patterns, batch_size, max_batches, sampled_per_group=largest, seed=seed,
                        skip_corrupt=skip_corrupt)
    result = quality(scorer, base)
    result["skipped"] = base.skipped
    if scorer.has_student:
        result["consistency"] = {"by_k": [consistency(base.sampled_up_to(k), k) for k in sampled]}
    return strict_result(result)


_UNDEFINED_BECAUSE = {"auc": "the rows hold one class only", "gauc": "no group holds both classes",
                      "logloss": "no rows", "rmse": "no rows",
                      "pairwise_agreement": "no group holds two rows the teacher scores differently"}


def why_undefined(metric: str) -> str:
    """Why `metric` (a result key such as auc or recall@10_in_30) can be undefined (NaN) on some rows."""
    recall = re.fullmatch(r"recall@(\d+)_in_(\d+)", metric)
    if recall:
        return f"no group larger than {max(int(recall[1]), int(recall[2]))} candidates"
    return _UNDEFINED_BECAUSE.get(metric, "undefined on these rows")


def strict_result(result: dict) -> dict:
    """`result` with every NaN metric replaced by None and explained under "undefined" (path -> reason)."""
    reasons: dict[str, str] = {}

    def walk(node, path: tuple[str, ...]):
        if isinstance(node, dict):
            return {k: walk(v, path + (str(k),)) for k, v in node.items()}
        if isinstance(node, list):  # consistency.by_k: one row per number of sampled items
            return [walk(v, path + (f"sampled{v['sampled']}" if isinstance(v, dict) and "sampled" in v else str(i),))
                    for i, v in enumerate(node)]
        if isinstance(node, float) and math.isnan(node):
            reasons["/".join(path)] = why_undefined(path[-1])
            return None
        return node

    out = walk(result, ())
    if reasons:
        out["undefined"] = reasons
    return out


def flatten(result: dict, prefix: str = "eval") -> dict[str, float]:
    """{'eval/teacher/click/auc': ..., 'eval/student/gauc': ...}: history / TensorBoard scalars (an undefined
    metric, None, is left out)."""
    out = {}
    for task, values in result.get("teacher", {}).items():
        out.update({f"{prefix}/teacher/{task}/{k}": v for k, v in values.items()})
    for k, v in result.get("student", {}).items():
        if k != "task":
            out[f"{prefix}/student/{k}"] = v
    for row in result.get("consistency", {}).get("by_k", []):
        out.update({f"{prefix}/consistency/sampled{row['sampled']}/{k}": v for k, v in row.items()
                    if k not in ("sampled", "groups")})
    return {k: v for k, v in out.items() if v is not None}
