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

    def call_candidates(self, keys: tf.Tensor, lengths: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        """One history against J candidates each: keys [G, L, d] (each history's L vectors, zero padded after
        `lengths` [G]) and targets [G, J, d] -> pooled [G, J, d], what `call` gives for every (history g,
        target g, j) pair, up to float rounding (`pool_candidates` with this layer's weights)."""
        return pool_candidates(keys, lengths, targets, *self.score_weights(), self.score.layers[0].activation)

    def score_weights(self) -> list[tf.Tensor]:
        """The scoring MLP's weights: first kernel [4d, h], first bias [h], second kernel [h, 1], second bias."""
        first, second = self.score.layers
        return [first.kernel, first.bias, second.kernel, second.bias]

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden": self.hidden}


def pool_candidates(keys: tf.Tensor, lengths: tf.Tensor, targets: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor,
                    out_kernel: tf.Tensor, out_bias: tf.Tensor, activation=tf.nn.relu) -> tf.Tensor:
    """`TargetAttention.call_candidates` with the weights as arguments (so one compiled function serves every
    attention layer of a shape). Dense tensors only: it compiles with XLA.

    The scoring MLP's first layer is linear in (key, query, key - query, key * query), so its pre-activation is
    key (W_k + W_d) + query (W_q - W_d) + (key * query) W_p: the key term is computed once per history, the query
    term once per candidate, and only the product term per pair (a quarter of the first layer's work, without
    the [G J, L, 4d] concatenation).
    """
    mask = tf.sequence_mask(lengths, tf.shape(keys)[1])[:, None, :]  # [G, 1, L]
    w_key, w_query, w_diff, w_product = tf.split(kernel, 4, axis=0)  # [d, h] each
    key_term = tf.einsum("gld,dh->glh", keys, w_key + w_diff)[:, None]  # [G, 1, L, h]
    query_term = tf.einsum("gjd,dh->gjh", targets, w_query - w_diff)[:, :, None]  # [G, J, 1, h]
    product_term = tf.einsum("gjd,gldh->gjlh", targets, keys[:, :, :, None] * w_product)  # [G, J, L, h]
    hidden = activation(key_term + query_term + product_term + bias)
    logits = tf.reduce_sum(hidden * out_kernel[:, 0], axis=-1) + out_bias[0]  # [G, J, L] (fuses with `hidden`)
    logits = tf.where(mask, logits, tf.float32.min)
    weights = tf.where(mask, tf.nn.softmax(logits, axis=-1), 0.0)  # all-masked rows: zeros, not NaN
    return tf.einsum("gjl,gld->gjd", weights, keys)
