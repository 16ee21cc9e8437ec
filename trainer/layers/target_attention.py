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
