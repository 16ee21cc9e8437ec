"""Run a trained model over data and collect what the metrics need, as numpy arrays."""
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.losses.groups import group_ids, with_unexposed
from trainer.spec.sides import user_columns


@dataclass
class Predictions:
    """Per row: labels, teacher probabilities, fused score, student logit and group key."""

    labels: dict[str, np.ndarray] = field(default_factory=dict)
    teacher: dict[str, np.ndarray] = field(default_factory=dict)  # task -> probability-like score
    teacher_raw: dict[str, np.ndarray] = field(default_factory=dict)  # task -> raw output
    teacher_estimate: dict[str, np.ndarray] = field(default_factory=dict)  # regression task -> predicted target
    teacher_score: np.ndarray | None = None
    student_logit: np.ndarray | None = None
    groups: np.ndarray | None = None
    exposed: np.ndarray | None = None  # False for sampled (never shown) candidates
    skipped: list[dict] = field(default_factory=list)  # corrupt records left out (`corrupt.Skipped.as_dict`)


def predict(model, patterns: str | list[str], batch_size: int = 2048, max_batches: int | None = None,
            sampled_per_group: int = 0, seed: int = 0, skip_corrupt: bool = False) -> Predictions:
    """Predictions on the files (in file order); with `sampled_per_group` K, each group of each batch also
    gets K items sampled from the model's item catalog (no labels: NaN). With `skip_corrupt`, corrupt records
    are left out (listed in `skipped`) instead of failing."""
    config = InputConfig(batch_size=batch_size, shuffle_buffer=0, deterministic=True, skip_corrupt=skip_corrupt)
    users = user_columns(model.spec)

    @tf.function(reduce_retracing=True, autograph=False)
    def forward(batch: dict, batch_seed: tf.Tensor) -> dict:
        features, keys = batch["features"], batch["group"]
        exposed = tf.shape(keys)[0]
        if sampled_per_group:
            groups, n_groups = group_ids(keys)
            group_key = tf.gather(keys, tf.math.unsorted_segment_min(tf.range(exposed), groups, n_groups))
            features, groups = with_unexposed(features, groups, n_groups, sampled_per_group, model.catalog, users,
                                              batch_seed)
            keys = tf.concat([keys, tf.gather(group_key, groups[exposed:])], axis=0)
        out = model(features, training=False)
        result = {"group": keys, "teacher_score": out.teacher_score,
                  "exposed": tf.range(tf.shape(keys)[0]) < exposed}
        for task, logits in out.teacher_logits.items():
            result[f"raw/{task}"] = logits
            result[f"teacher/{task}"] = model.task_probability(task, logits)
            if model.labels[task].type == "regression":
                result[f"estimate/{task}"] = model.task_estimate(task, logits)
        if out.student_logit is not None:
            result["student_logit"] = out.student_logit
        return result

    parts: dict[str, list] = {}
    pipeline = make_pipeline(model.spec, patterns, config)
    for i, batch in enumerate(pipeline):
        if max_batches is not None and i >= max_batches:
            break
        result = forward(batch, tf.constant([seed, i], tf.int64))
        n = int(tf.shape(result["group"])[0])
        for task, label in batch["labels"].items():
            padded = np.full(n, np.nan, np.float32)
            padded[:label.shape[0]] = label.numpy()
            parts.setdefault(f"label/{task}", []).append(padded)
        for key, value in result.items():
            parts.setdefault(key, []).append(value.numpy())
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    p = Predictions(teacher_score=joined["teacher_score"], student_logit=joined.get("student_logit"),
                    groups=joined["group"], exposed=joined["exposed"], skipped=[s.as_dict() for s in pipeline.skipped])
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
