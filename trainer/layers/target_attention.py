"""Target attention for the teacher: the user's history pooled with weights that depend on the candidate.

A fine ranker may look at the user and the candidate together, so instead of
one mean of the watched videos it can weigh each watched video by how it
relates to the candidate (as DIN does). Which histories meet which candidate
feature is derived from the spec (`trainer.spec.attention`). The student never
sees these fields: they would tie the user vector to the item.
"""
import tensorflow as tf


class TargetAttention(tf.keras.layers.Layer):
    """Pool [B, L, d] history vectors with softmax weights from a small MLP over (key, query, key - query, key * query).

    An empty history pools to zeros.
    """

    def __init__(self, hidden: int = 32, **kwargs):
        """
        Args:
          hidden: units of the scoring MLP's hidden layer (model.teacher.attention_hidden).
        """
        super().__init__(**kwargs)
        self.hidden = hidden
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

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden": self.hidden}
