"""Target attention for the teacher: the user's history pooled with weights that depend on the candidate.

A fine ranker may look at the user and the candidate together, so instead of
one mean of the watched videos it can weigh each watched video by how it
relates to the candidate (as DIN does). The pairs are derived from the spec: a
user-side sequence feature is attended by every item-side categorical feature
that reads the same embedding table (watch_seq and video_id share `video`).
The student never sees these fields: they would tie the user vector to the item.
"""
from dataclasses import dataclass

import tensorflow as tf

from trainer.spec import Spec


@dataclass(frozen=True)
class AttentionPair:
    sequence: str  # a user-side sequence feature
    target: str  # an item-side categorical feature on the same table

    @property
    def field(self) -> str:
        """The name of the attended field among the teacher's inputs."""
        return f"{self.sequence}@{self.target}"


def attention_pairs(spec: Spec) -> list[AttentionPair]:
    """Every (user sequence, item categorical) pair of features sharing an embedding table."""
    items = [f for f in spec.features_on("item") if f.kind == "categorical" and f.embedding is not None]
    return [AttentionPair(s.name, t.name)
            for s in spec.features_on("user") if s.kind == "sequence" and s.embedding is not None
            for t in items if t.embedding.table == s.embedding.table]


class TargetAttention(tf.keras.layers.Layer):
    """Pool [B, L, d] history vectors with softmax weights from a small MLP over (key, query, key - query, key * query).

    An empty history pools to zeros.
    """

    def __init__(self, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.score = tf.keras.Sequential([tf.keras.layers.Dense(hidden, activation="relu"),
                                          tf.keras.layers.Dense(1)], name="score")

    def call(self, history: tf.RaggedTensor, target: tf.Tensor) -> tf.Tensor:
        keys = history.to_tensor()  # [B, L, d], zero padded
        length = tf.shape(keys)[1]
        mask = tf.sequence_mask(history.row_lengths(), length)  # [B, L]
        query = tf.broadcast_to(target[:, None, :], tf.shape(keys))
        logits = tf.squeeze(self.score(tf.concat([keys, query, keys - query, keys * query], axis=-1)), -1)
        logits = tf.where(mask, logits, tf.float32.min)
        weights = tf.where(mask, tf.nn.softmax(logits, axis=-1), 0.0)  # all-masked rows: zeros, not NaN
        return tf.reduce_sum(keys * weights[:, :, None], axis=1)
