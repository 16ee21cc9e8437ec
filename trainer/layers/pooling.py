"""Pooling a sequence of embedded ids into one vector: mean, sum or max; an empty sequence pools to zeros.

One rule for both forms a sequence takes: ragged ([B, None, d], the training
pipeline's) and dense with a mask of the real positions ([B, L, d] + [B, L],
the ONNX graphs', which have no ragged tensors).
"""
import tensorflow as tf

from trainer.spec.types import POOLINGS


def pool(vectors: tf.Tensor | tf.RaggedTensor, pooling: str, mask: tf.Tensor | None = None) -> tf.Tensor:
    """[B, L, d] -> [B, d].

    Args:
      vectors: a ragged [B, None, d] tensor, or a dense [B, L, d] one with `mask`.
      pooling: mean, sum or max.
      mask: for dense `vectors`, bool [B, L], true at the real (not padding) positions.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if mask is None:
        total = tf.reduce_sum(vectors, axis=1)
        count = tf.cast(vectors.row_lengths(), vectors.dtype)[:, None]
        highest = tf.reduce_max(vectors, axis=1) if pooling == "max" else None
    else:
        weight = tf.cast(mask, vectors.dtype)[:, :, None]
        total = tf.reduce_sum(vectors * weight, axis=1)
        count = tf.reduce_sum(weight, axis=1)
        highest = tf.reduce_max(tf.where(mask[:, :, None], vectors, vectors.dtype.min), axis=1) \
            if pooling == "max" else None
    if pooling == "sum":
        return total
    if pooling == "mean":
        return total / tf.maximum(count, 1.0)
    return tf.where(count > 0, highest, 0.0)
