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
        """[B, d]: each row's history vectors [B, None, d] pooled with softmax weights scored against its target
        [B, d].

        Computed on the history's flat values, never padded to [B, L, 4d]: the scoring MLP's first layer on
        (k, q, k - q, k * q) is k (W_k + W_d) + q (W_q - W_d) + (k * q) W_p, and the query's part is computed once
        a row, so a step costs a quarter of the padded form's multiplications (the same function, to float
        rounding)."""
        keys, rows = history.flat_values, history.value_rowids()  # [N, d], the row of each
        dim = keys.shape[-1]
        if not self.score.built:
            self.score.build((None, 4 * dim))
        first, second = self.score.layers
        w_key, w_query, w_difference, w_product = tf.split(first.kernel, 4, axis=0)
        per_row = tf.matmul(target, w_query - w_difference) + first.bias  # [B, h]
        hidden = tf.nn.relu(tf.matmul(keys, w_key + w_difference) + tf.matmul(keys * tf.gather(target, rows), w_product)
                            + tf.gather(per_row, rows))
        logits = tf.squeeze(tf.matmul(hidden, second.kernel), -1) + second.bias[0]  # [N]
        n = history.nrows()
        top = tf.stop_gradient(tf.math.unsorted_segment_max(logits, rows, n))  # softmax is shift-invariant
        exp = tf.exp(logits - tf.gather(top, rows))
        weights = exp / tf.gather(tf.math.unsorted_segment_sum(exp, rows, n), rows)
        return tf.math.unsorted_segment_sum(keys * weights[:, None], rows, n)  # an empty history: zeros

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden": self.hidden}
