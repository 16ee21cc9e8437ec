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

    def __init__(self, rows: int, dim: int, initializer: str = "uniform", zero_rows: int = 0, **kwargs):
        """
        Args:
          rows: number of rows (ids the table can hold, OOV and bucket rows included).
          dim: length of each row.
          initializer: one of uniform, normal, truncated_normal, glorot_uniform, zeros.
          zero_rows: the first rows start at zero instead (a vocabulary table's OOV rows: one never trained reads
            zeros in training, evaluation and the pruned export alike; one trained learns from zero).
        """
        super().__init__(**kwargs)
        self.num_rows, self.dim, self.initializer_name, self.zero_rows = rows, dim, initializer, zero_rows
        self.initializer = _INITIALIZERS[initializer]()

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.num_rows, self.dim),
                                          initializer=self._initial_values, trainable=True)
        super().build(input_shape)

    def _initial_values(self, shape, dtype=None) -> tf.Tensor:
        """The initializer's values (drawn for every row, so the other rows are what they would be without
        `zero_rows`), the first `zero_rows` rows zero."""
        values = self.initializer(shape, dtype=dtype)
        if not self.zero_rows:
            return values
        return tf.concat([tf.zeros([self.zero_rows, shape[1]], values.dtype), values[self.zero_rows:]], axis=0)

    def call(self, rows: tf.Tensor) -> tf.Tensor:
        if isinstance(rows, tf.RaggedTensor):
            return tf.ragged.map_flat_values(tf.gather, self.embeddings, rows)
        return tf.gather(self.embeddings, rows)

    def get_config(self) -> dict:
        return {**super().get_config(), "rows": self.num_rows, "dim": self.dim, "initializer": self.initializer_name,
                "zero_rows": self.zero_rows}
