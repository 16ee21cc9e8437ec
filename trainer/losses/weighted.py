"""Weighted means over the rows of a batch: every loss of the models is one."""
import tensorflow as tf


def weighted_mean(values: tf.Tensor, weights: tf.Tensor, min_total: float = 1e-6) -> tf.Tensor:
    """sum(values * weights) / max(sum(weights), min_total): 0 when every weight is 0."""
    return tf.reduce_sum(values * weights) / tf.maximum(tf.reduce_sum(weights), min_total)


def weighted_bce(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Weighted mean binary cross-entropy of logits against 0/1 (or soft) labels."""
    return weighted_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), weights)
