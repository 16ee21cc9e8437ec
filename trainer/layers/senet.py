"""Squeeze-excitation re-weighting of feature fields (SENet, as in FiBiNET)."""
import tensorflow as tf


class SENet(tf.keras.layers.Layer):
    """Squeeze (mean of each field) -> excite (bottleneck MLP, sigmoid) -> scale each field by its weight.

    The weights are 2 x sigmoid, so they start near 1: a field keeps its scale until learned otherwise.
    """

    def __init__(self, fields: int, reduction: int = 4, **kwargs):
        """
        Args:
          fields: number of fields re-weighted.
          reduction: the bottleneck has max(1, fields // reduction) units.
        """
        super().__init__(**kwargs)
        self.fields, self.reduction = fields, reduction
        hidden = max(1, fields // max(reduction, 1))
        self.excite = tf.keras.Sequential([tf.keras.layers.Dense(hidden, activation="relu"),
                                           tf.keras.layers.Dense(fields, activation="sigmoid")])

    def field_weights(self, fields: list[tf.Tensor]) -> tf.Tensor:
        """The weight of each field, [B, fields], in (0, 2)."""
        squeezed = tf.concat([tf.reduce_mean(f, axis=-1, keepdims=True) for f in fields], axis=-1)
        return self.excite(squeezed) * 2.0

    def call(self, fields: list[tf.Tensor]) -> list[tf.Tensor]:
        weights = self.field_weights(fields)
        return [f * weights[:, i:i + 1] for i, f in enumerate(fields)]

    def get_config(self) -> dict:
        return {**super().get_config(), "fields": self.fields, "reduction": self.reduction}
