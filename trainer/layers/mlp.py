"""A multi-layer perceptron: dense layers with ReLU between them, optional dropout."""
import tensorflow as tf


class MLP(tf.keras.layers.Layer):
    """Dense layers of `sizes`: ReLU after each but the last, `last_activation` after the last."""

    def __init__(self, sizes: list[int], last_activation: str | None = "relu", dropout: float = 0.0, **kwargs):
        """
        Args:
          sizes: units of each dense layer, in order; the last is the output size.
          last_activation: activation of the last layer (None: linear).
          dropout: rate of a dropout layer after each dense layer, active in training only (0: none).
        """
        super().__init__(**kwargs)
        self.sizes, self.last_activation, self.dropout = list(sizes), last_activation, dropout
        self.dense = [tf.keras.layers.Dense(n, activation="relu" if i < len(sizes) - 1 else last_activation,
                                            name=f"dense_{i}") for i, n in enumerate(self.sizes)]
        self.drop = [tf.keras.layers.Dropout(dropout) for _ in self.sizes] if dropout > 0 else []

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        for i, dense in enumerate(self.dense):
            x = dense(x)
            if self.drop:
                x = self.drop[i](x, training=training)
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "sizes": self.sizes, "last_activation": self.last_activation,
                "dropout": self.dropout}
