"""An embedding table: one variable whose rows are gathered, so gradients (and FTRL updates) are sparse."""
import tensorflow as tf

from trainer.spec.types import INITIALIZERS

_INITIALIZERS = {  # a new initializer per table, so tables do not start identical
    "uniform": lambda: tf.keras.initializers.RandomUniform(-0.05, 0.05),
    "normal": lambda: tf.keras.initializers.RandomNormal(stddev=0.05),
    "truncated_normal": lambda: tf.keras.initializers.TruncatedNormal(stddev=0.05),
    "glorot_uniform": tf.keras.initializers.GlorotUniform, "zeros": tf.keras.initializers.Zeros}
assert set(_INITIALIZERS) == set(INITIALIZERS), "every initializer the spec accepts must be built here"


class EmbeddingTable(tf.keras.layers.Layer):
    """One embedding variable (`embeddings`, [rows, dim]); gathers rows for dense or ragged row numbers.

    The optimizer routing (`trainer.training.optimizers`) sends every variable of an EmbeddingTable to FTRL.
    """

    def __init__(self, rows: int, dim: int, initializer: str = "uniform", **kwargs):
        """
        Args:
          rows: number of rows (ids the table can hold, OOV and bucket rows included).
          dim: length of each row.
          initializer: one of uniform, normal, truncated_normal, glorot_uniform, zeros.
        """
        super().__init__(**kwargs)
        self.num_rows, self.dim, self.initializer_name = rows, dim, initializer
        self.initializer = _INITIALIZERS[initializer]()

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.num_rows, self.dim),
                                          initializer=self.initializer, trainable=True)
        super().build(input_shape)

    def call(self, rows: tf.Tensor) -> tf.Tensor:
        if isinstance(rows, tf.RaggedTensor):
            return tf.ragged.map_flat_values(tf.gather, self.embeddings, rows)
        return tf.gather(self.embeddings, rows)

    def get_config(self) -> dict:
        return {**super().get_config(), "rows": self.num_rows, "dim": self.dim, "initializer": self.initializer_name}
