"""Distillation: the teacher -> student losses (registered in `trainer.registry.DISTILLATION_LOSSES`).

`distillation_loss` is the one entry point: the teacher's fused score becomes
a logit under stop-gradient before any loss sees it, so distillation moves the
student (and the shared embeddings through the student), never the teacher,
whatever loss is chosen. Built-in losses:

- mse: squared difference of the logits;
- cross_entropy: cross-entropy against the teacher's probability, both logits
  divided by a temperature (scaled by temperature^2);
- pairwise: a RankNet loss on every pair of a group the teacher orders.
"""
import tensorflow as tf

from trainer.losses.weighted import weighted_mean
from trainer.registry import DISTILLATION_LOSSES

EPS = 1e-6


def logit(p: tf.Tensor) -> tf.Tensor:
    """log(p / (1 - p)), p clipped to [EPS, 1 - EPS]."""
    p = tf.clip_by_value(p, EPS, 1.0 - EPS)
    return tf.math.log(p) - tf.math.log1p(-p)


def distillation_loss(loss, teacher_score: tf.Tensor, student_logit: tf.Tensor, weights: tf.Tensor,
                      groups: tf.Tensor | None = None) -> tf.Tensor:
    """`loss` (a registered distillation loss) of the student against the teacher's fused score in (0, 1)."""
    teacher_logit = tf.stop_gradient(logit(teacher_score))
    return loss(teacher_logit, student_logit, weights, groups if getattr(loss, "needs_groups", False) else None)


@DISTILLATION_LOSSES.register("mse")
class MSEDistillation:
    """Mean squared difference of the student's and the teacher's logits."""

    needs_groups = False

    def __call__(self, teacher_logit, student_logit, weights, groups=None) -> tf.Tensor:
        return weighted_mean(tf.square(student_logit - teacher_logit), weights, EPS)


@DISTILLATION_LOSSES.register("cross_entropy")
class CrossEntropyDistillation:
    """Cross-entropy against sigmoid(teacher logit / T), of student logit / T, scaled by T^2."""

    needs_groups = False

    def __init__(self, temperature: float = 1.0):
        """
        Args:
          temperature: T (model.distill.temperature).
        """
        self.temperature = temperature

    def __call__(self, teacher_logit, student_logit, weights, groups=None) -> tf.Tensor:
        t = self.temperature
        per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.sigmoid(teacher_logit / t),
                                                          logits=student_logit / t) * t ** 2
        return weighted_mean(per_row, weights, EPS)


@DISTILLATION_LOSSES.register("pairwise")
class PairwiseDistillation:
    """RankNet loss on every pair of a group the teacher orders: -log sigmoid(s_i - s_j) for t_i > t_j, each
    pair weighted by the product of its rows' weights."""

    needs_groups = True

    def __call__(self, teacher_logit, student_logit, weights, groups=None) -> tf.Tensor:
        same = tf.equal(groups[:, None], groups[None, :])
        ordered = tf.logical_and(same, teacher_logit[:, None] > teacher_logit[None, :])
        pair_w = tf.where(ordered, weights[:, None] * weights[None, :], 0.0)
        diff = student_logit[:, None] - student_logit[None, :]
        return weighted_mean(tf.nn.softplus(-diff), pair_w, EPS)
