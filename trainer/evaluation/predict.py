"""Run a scorer (a trained model, or an export's signatures) over data and collect what the metrics need, as
numpy arrays: each batch's rows, then K items sampled from the catalog for each of its groups."""
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import tensorflow as tf

from trainer.data.catalog import ItemCatalog
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.evaluation.scoring import ModelScorer
from trainer.spec.types import Label, Spec


@dataclass
class Predictions:
    """Per row: labels, teacher probabilities, fused score, student logit and group key. Rows are each batch's
    exposed rows, then its sampled candidates group after group (`sample_rank` 0..K-1 within the group)."""

    labels: dict[str, np.ndarray] = field(default_factory=dict)
    teacher: dict[str, np.ndarray] = field(default_factory=dict)  # task -> probability-like score
    teacher_raw: dict[str, np.ndarray] = field(default_factory=dict)  # task -> raw output
    teacher_estimate: dict[str, np.ndarray] = field(default_factory=dict)  # regression task -> predicted target
    teacher_score: np.ndarray | None = None
    student_logit: np.ndarray | None = None
    groups: np.ndarray | None = None
    exposed: np.ndarray | None = None  # False for sampled (never shown) candidates
    skipped: list[dict] = field(default_factory=list)  # corrupt records left out (`corrupt.Skipped.as_dict`)
    sample_rank: np.ndarray | None = None  # a sampled candidate's draw within its group (0, 1, ...); -1 if exposed

    def sampled_up_to(self, k: int) -> "Predictions":
        """The exposed rows and each group's first `k` sampled candidates (0: the exposed rows only): the
        candidate sets of K = k nest inside those of any larger K."""
        if self.sample_rank is None:  # built without ranks: every row is kept
            return self
        keep = self.exposed | (self.sample_rank < k)
        pick = lambda values: {name: v[keep] for name, v in values.items()}  # noqa: E731
        return replace(self, labels=pick(self.labels), teacher=pick(self.teacher), teacher_raw=pick(self.teacher_raw),
                       teacher_estimate=pick(self.teacher_estimate), teacher_score=self.teacher_score[keep],
                       student_logit=None if self.student_logit is None else self.student_logit[keep],
                       groups=self.groups[keep], exposed=self.exposed[keep], sample_rank=self.sample_rank[keep])


class Scorer(Protocol):
    """What `predict_with` scores with (`scoring.ModelScorer`, `serving.savedmodel.evaluation.ExportScorer`)."""

    spec: Spec
    labels: dict[str, Label]  # task -> its label
    student_task: str | None  # the label the student's metrics use
    has_student: bool
    catalog: ItemCatalog | None  # where candidates are sampled from

    def score(self, features: dict, first_rows: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Scores of the batch's rows, then of `items` [G, K] (catalog rows) for the groups whose first rows
        are `first_rows` [G], group after group: "teacher_score", "student_logit" (with a student), and per
        task "teacher/<task>", "raw/<task>", "estimate/<task>" (regression tasks)."""


def first_rows_of_groups(keys: np.ndarray) -> np.ndarray:
    """The first row of each distinct key, ascending (the groups in order of first appearance)."""
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def predict(model, patterns: str | list[str], batch_size: int = 2048, max_batches: int | None = None,
            sampled_per_group: int = 0, seed: int = 0, skip_corrupt: bool = False) -> Predictions:
    """Predictions of a trained JointModel on the files (in file order); with `sampled_per_group` K, each group
    of each batch also gets K items sampled from the model's item catalog (no labels: NaN). With
    `skip_corrupt`, corrupt records are left out (listed in `skipped`) instead of failing. Candidates are scored
    by parts (`scoring.ModelScorer`)."""
    return predict_with(ModelScorer(model, model.catalog), patterns, batch_size, max_batches, sampled_per_group,
                        seed, skip_corrupt)


def predict_with(scorer: Scorer, patterns: str | list[str], batch_size: int = 2048, max_batches: int | None = None,
                 sampled_per_group: int = 0, seed: int = 0, skip_corrupt: bool = False) -> Predictions:
    """Predictions of `scorer` on the files; the arguments as for `predict`.

    Group g of batch i (groups in order of first appearance) gets the catalog rows
    `catalog.sample_rows(G * K, seed=(seed, i))[g * K:(g + 1) * K]`, so a group's first k draws are the same
    for every K >= k."""
    config = InputConfig(batch_size=batch_size, shuffle_buffer=0, deterministic=True, skip_corrupt=skip_corrupt)
    parts: dict[str, list] = {}
    pipeline = make_pipeline(scorer.spec, patterns, config)
    for i, batch in enumerate(pipeline):
        if max_batches is not None and i >= max_batches:
            break
        keys = batch["group"].numpy()
        first_rows = first_rows_of_groups(keys)
        items = np.zeros([len(first_rows), 0], np.int64)
        if sampled_per_group:
            draws = scorer.catalog.sample_rows(len(first_rows) * sampled_per_group, tf.constant([seed, i], tf.int64))
            items = draws.numpy().reshape(len(first_rows), sampled_per_group)
        scores = scorer.score(batch["features"], first_rows, items)
        exposed = len(keys)
        n = exposed + items.size
        for task, label in batch["labels"].items():
            padded = np.full(n, np.nan, np.float32)
            padded[:exposed] = label.numpy()
            parts.setdefault(f"label/{task}", []).append(padded)
        for key, value in scores.items():
            parts.setdefault(key, []).append(value)
        parts.setdefault("group", []).append(np.concatenate([keys, np.repeat(keys[first_rows], sampled_per_group)]))
        parts.setdefault("exposed", []).append(np.arange(n) < exposed)
        parts.setdefault("sample_rank", []).append(
            np.concatenate([np.full(exposed, -1), np.tile(np.arange(sampled_per_group), len(first_rows))]))
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    p = Predictions(teacher_score=joined["teacher_score"], student_logit=joined.get("student_logit"),
                    groups=joined["group"], exposed=joined["exposed"], skipped=[s.as_dict() for s in pipeline.skipped],
                    sample_rank=joined["sample_rank"])
    for key, value in joined.items():
        kind, _, task = key.partition("/")
        if kind == "label":
            p.labels[task] = value
        elif kind == "teacher":
            p.teacher[task] = value
        elif kind == "raw":
            p.teacher_raw[task] = value
        elif kind == "estimate":
            p.teacher_estimate[task] = value
    return p
