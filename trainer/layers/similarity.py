"""How the student's user and item vectors make a score: the similarity protocol and its built-in forms.

Every form is a dot product of a user-side vector and an item-side vector,
``logit = user_vector(u) . item_vector(v) + bias``, so item vectors are
computed offline and the user tower runs once per request (the serving
signatures, the ONNX graphs, `embed-items` and a scoring service rely on it).
A form only chooses the two side transforms; `Similarity.logit` is fixed.
Built-in forms (registered in `trainer.registry.SIMILARITIES`):

- dot: u . v + b
- cosine: cos(u, v) / temperature + b (both vectors L2-normalised on their own side)
- multi_head: the vectors split into H heads; head scores u_h . v_h combined by a
  soft attention computed from the user vector alone, i.e. (a_h(u) u_h) . v_h.
"""
import tensorflow as tf

from trainer.registry import SIMILARITIES


class Similarity(tf.keras.layers.Layer):
    """The similarity protocol: `user_vector` and `item_vector` map each tower's output on its own side, and
    the logit is their dot product plus a learned scalar `bias`. Subclasses override the two side maps (the
    base class is the plain dot product)."""

    def __init__(self, dim: int, **kwargs):
        """
        Args:
          dim: the towers' output size.
        """
        super().__init__(**kwargs)
        self.dim = dim
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros")

    def user_vector(self, u: tf.Tensor) -> tf.Tensor:
        """The serving user vector [B, d] of user tower outputs u [B, dim]."""
        return u

    def item_vector(self, v: tf.Tensor) -> tf.Tensor:
        """The serving item vector [B, d] of item tower outputs v [B, dim] (no user involved)."""
        return v

    def logit(self, user_vectors: tf.Tensor, item_vectors: tf.Tensor) -> tf.Tensor:
        """Logits from serving vectors: aligned rows [B, d] x [B, d] -> [B], or one user [1, d] against N
        items [N, d] -> [N]."""
        return tf.reduce_sum(user_vectors * item_vectors, axis=-1) + self.bias

    def call(self, u: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
        """Logits [B] for aligned rows of the towers' outputs u and v."""
        return self.logit(self.user_vector(u), self.item_vector(v))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim}


@SIMILARITIES.register("dot")
class DotSimilarity(Similarity):
    """u . v + b."""


@SIMILARITIES.register("cosine")
class CosineSimilarity(Similarity):
    """cos(u, v) / temperature + b."""

    def __init__(self, dim: int, temperature: float = 0.1, **kwargs):
        """
        Args:
          dim: the towers' output size.
          temperature: the cosine is divided by it (model.student.temperature).
        """
        super().__init__(dim, **kwargs)
        self.temperature = temperature

    def user_vector(self, u: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(u, axis=-1) / self.temperature

    def item_vector(self, v: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(v, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


@SIMILARITIES.register("multi_head")
class MultiHeadSimilarity(Similarity):
    """sum_h a_h(u) (u_h . v_h) + b: H sub-vector dot products weighted by an attention over the user vector.

    The weights are H x softmax, so a uniform attention (at initialisation) is exactly the plain dot product.
    """

    def __init__(self, dim: int, heads: int = 4, **kwargs):
        """
        Args:
          dim: the towers' output size; must divide into `heads`.
          heads: number of sub-vectors (model.student.heads).
        """
        super().__init__(dim, **kwargs)
        if dim % heads:
            raise ValueError(f"the vector size {dim} must divide into {heads} heads")
        self.heads = heads
        # zero weights: the attention starts uniform, and the score starts as the plain dot product
        self.attention = tf.keras.layers.Dense(heads, kernel_initializer="zeros", name="head_attention")

    def head_weights(self, u: tf.Tensor) -> tf.Tensor:
        """The weight of each head, [B, heads], summing to `heads`."""
        return self.heads * tf.nn.softmax(self.attention(u), axis=-1)

    def user_vector(self, u: tf.Tensor) -> tf.Tensor:
        heads = tf.reshape(u, [-1, self.heads, self.dim // self.heads])
        return tf.reshape(heads * self.head_weights(u)[:, :, None], [-1, self.dim])

    def get_config(self) -> dict:
        return {**super().get_config(), "heads": self.heads}
