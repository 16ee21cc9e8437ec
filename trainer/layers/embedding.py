"""An embedding table: one variable whose rows are gathered, so gradients (and FTRL updates) are sparse.

Under ParameterServerStrategy a table may be a `ShardedVariable` (its rows split
across the parameter servers, "div" partitioning: consecutive blocks of rows,
the first shards one row longer). Its rows are then looked up with
`tf.nn.embedding_lookup`, which reads each shard's own rows (`tf.gather` would
first concatenate every shard; called eagerly, on the chief, `lookup_each_shard`
instead: eagerly, `tf.nn.embedding_lookup` copies each shard to the caller),
and whatever reads a whole table reads it shard by shard (`shards`). Each shard is initialised where it lives, from its own
rows: the random initializers draw the shard's values only, and
`glorot_uniform` computes its fans from the shard's shape (so a sharded table
starts with a wider range than the same table unsharded: sqrt(6 / (shard rows
+ dim)) instead of sqrt(6 / (rows + dim))).
"""
import contextlib
import threading

import tensorflow as tf

from trainer.spec.types import INITIALIZERS

_INITIALIZERS = {  # a new initializer per table, so tables do not start identical
    "uniform": lambda: tf.keras.initializers.RandomUniform(-0.05, 0.05),
    "normal": lambda: tf.keras.initializers.RandomNormal(stddev=0.05),
    "truncated_normal": lambda: tf.keras.initializers.TruncatedNormal(stddev=0.05),
    "glorot_uniform": tf.keras.initializers.GlorotUniform, "zeros": tf.keras.initializers.Zeros}
assert set(_INITIALIZERS) == set(INITIALIZERS), "every initializer the spec accepts must be built here"
ShardedVariable = tf.__internal__.distribute.ShardedVariable
_building = threading.local()  # set while an EmbeddingTable creates its variable (`building_table`)


def building_table() -> bool:
    """Whether the variable being created now is an EmbeddingTable's (the parameter-server partitioner shards
    those only)."""
    return getattr(_building, "table", False)


@contextlib.contextmanager
def _creating_table():
    _building.table = True
    try:
        yield
    finally:
        _building.table = False


def shards(variable: tf.Variable) -> list[tf.Variable]:
    """The variables holding `variable`'s rows, in row order: its shards, or itself when it is not sharded."""
    return list(variable.variables) if isinstance(variable, ShardedVariable) else [variable]


def lookup_each_shard(table: ShardedVariable, rows: tf.Tensor) -> tf.Tensor:
    """The rows of a sharded table ("div" partitioned), each shard's gathered on its own device.

    What `tf.nn.embedding_lookup` computes, for eager calls (the chief building the model): executed eagerly,
    that function copies every shard whole to the caller before gathering (inside a tf.function, as in every
    training step and evaluation, it gathers where the shards live).
    """
    parts = table.variables
    sizes = [int(p.shape[0]) for p in parts]
    ends = tf.constant([sum(sizes[:i + 1]) for i in range(len(sizes) - 1)], rows.dtype)
    flat = tf.reshape(rows, [-1])
    which = tf.searchsorted(ends, flat, side="right")  # the shard of each row
    positions, pieces, start = [], [], 0
    for i, part in enumerate(parts):
        where = tf.cast(tf.where(tf.equal(which, i))[:, 0], tf.int32)
        with tf.device(part.device):
            pieces.append(part.sparse_read(tf.gather(flat, where) - start))
        positions.append(where)
        start += sizes[i]
    values = tf.dynamic_stitch(positions, pieces)
    return tf.reshape(values, tf.concat([tf.shape(rows), tf.shape(values)[1:]], axis=0))


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
        with _creating_table():
            self.embeddings = self.add_weight(name="embeddings", shape=(self.num_rows, self.dim),
                                              initializer=self._initial_values, trainable=True)
        super().build(input_shape)

    def _initial_values(self, shape, dtype=None, partition_shape=None, partition_offset=None) -> tf.Tensor:
        """The initializer's values (drawn for every row, so the other rows are what they would be without
        `zero_rows`), the first `zero_rows` rows zero. With `partition_shape` and `partition_offset` (a shard of
        a sharded table, created where it lives): the values of that shard's rows only."""
        if partition_shape is None:
            values = self.initializer(shape, dtype=dtype)
            offset = 0
        else:
            values = self.initializer(shape, dtype=dtype, partition_shape=partition_shape,
                                      partition_offset=partition_offset)
            offset = partition_offset[0]
        zero = min(max(self.zero_rows - offset, 0), values.shape[0])
        if not zero:
            return values
        return tf.concat([tf.zeros([zero, values.shape[1]], values.dtype), values[zero:]], axis=0)

    def call(self, rows: tf.Tensor) -> tf.Tensor:
        if not isinstance(self.embeddings, ShardedVariable):
            lookup = tf.gather
        elif tf.executing_eagerly():
            lookup = lookup_each_shard
        else:
            lookup = tf.nn.embedding_lookup
        if isinstance(rows, tf.RaggedTensor):
            return tf.ragged.map_flat_values(lookup, self.embeddings, rows)
        return lookup(self.embeddings, rows)

    def get_config(self) -> dict:
        return {**super().get_config(), "rows": self.num_rows, "dim": self.dim, "initializer": self.initializer_name,
                "zero_rows": self.zero_rows}
