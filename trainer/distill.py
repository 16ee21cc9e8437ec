"""Distillation: the lambda(step) schedules and the teacher -> student losses.

The teacher's score always enters under stop-gradient: distillation moves the
student (and the shared embeddings through the student), never the teacher.
"""
import tensorflow as tf

from trainer.config import ScheduleConfig

EPS = 1e-6


def schedule_value(schedule: ScheduleConfig, step: tf.Tensor) -> tf.Tensor:
    """lambda at `step`: 0 before start_step, then constant / linear ramp / sigmoid ramp to `max`."""
    step = tf.cast(step, tf.float32)
    since = step - float(schedule.start_step)
    ramp = float(max(schedule.ramp_steps, 1))
    if schedule.kind == "constant":
        value = tf.constant(schedule.max)
    elif schedule.kind == "linear":
        value = schedule.max * tf.clip_by_value(since / ramp, 0.0, 1.0)
    else:  # sigmoid centred in the middle of the ramp, reaching ~0.9933 * max at its end
        value = schedule.max * tf.sigmoid(10.0 * (since / ramp - 0.5))
    return tf.where(since >= 0.0, value, 0.0)


def logit(p: tf.Tensor) -> tf.Tensor:
    p = tf.clip_by_value(p, EPS, 1.0 - EPS)
    return tf.math.log(p) - tf.math.log1p(-p)


def distill_loss(kind: str, teacher_score: tf.Tensor, student_logit: tf.Tensor, groups: tf.Tensor | None,
                 temperature: float = 1.0, weights: tf.Tensor | None = None) -> tf.Tensor:
    """Mean distillation loss over rows. `teacher_score` is the fused score in (0, 1); `groups`: int ids [B]
    (pairwise only)."""
    teacher_logit = tf.stop_gradient(logit(teacher_score))
    w = tf.ones_like(student_logit) if weights is None else weights
    if kind == "mse":
        per_row = tf.square(student_logit - teacher_logit)
    elif kind == "cross_entropy":
        target = tf.sigmoid(teacher_logit / temperature)
        per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=student_logit / temperature) \
            * temperature ** 2
    else:
        return pairwise_loss(teacher_logit, student_logit, groups, w)
    return tf.reduce_sum(per_row * w) / tf.maximum(tf.reduce_sum(w), EPS)


def pairwise_loss(teacher_logit: tf.Tensor, student_logit: tf.Tensor, groups: tf.Tensor,
                  weights: tf.Tensor) -> tf.Tensor:
    """RankNet loss on every pair of a group the teacher orders: -log sigmoid(s_i - s_j) for t_i > t_j."""
    same = tf.equal(groups[:, None], groups[None, :])
    ordered = tf.logical_and(same, teacher_logit[:, None] > teacher_logit[None, :])
    pair_w = tf.where(ordered, weights[:, None] * weights[None, :], 0.0)
    diff = student_logit[:, None] - student_logit[None, :]
    return tf.reduce_sum(pair_w * tf.nn.softplus(-diff)) / tf.maximum(tf.reduce_sum(pair_w), EPS)
