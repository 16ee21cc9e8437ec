"""Usage counts: how many times training read each row of each trained embedding table.

`UsageCounts` holds one non-trainable int64 variable per trained `EmbeddingTable` (one per logical table:
tables are never fused), [rows]. The training step adds one for every row a training example looked up
(`count`): the indices of the table's sparse gradient, which a `tf.gather` makes with one entry per row read
(a row read twice in a batch, or by two features of one table, counts twice), scatter-added into the counts.
The cost is in proportion to the batch, not the table. A row counts what the step actually read: an id the
id dropout (`model.id_dropout`) sent to an OOV row counts for that OOV row. A frozen teacher's tables are not
trained here and have no counts.

The counts live in the checkpoint as the object "usage" (beside "model"), so they survive a kill and resume
exactly as the weights do, and an export reads them from the checkpoint (`read_counts`) to prune rarely used
rows. `counted_from` is the step counting began: 0, unless a model trained before counting existed was resumed
(then its counts miss the steps before); `read_counts` is None for a checkpoint without them.

Under MultiWorkerMirroredStrategy the counts are mirrored variables with SUM aggregation: each worker's
scatter-add in the replica step is all-reduced (its indices all-gathered, as for the tables' sparse
gradients) and applied on every worker, so every worker holds the counts of the global batch and the
checkpoint holds the sum over replicas. Under parameter servers the counts of a table are one variable on a
parameter server, and each shard's reads are added at the shard's row offset; a step a worker re-runs after a
fault is counted again, so counts there are approximate.
"""
import numpy as np
import tensorflow as tf

from trainer.layers.embedding import EmbeddingTable, shards

CHECKPOINT_KEY = "usage"  # the counts' object in a training checkpoint


class UsageCounts(tf.Module):
    """Per trained table (by layer name) an int64 count of reads per row; create it in the strategy's scope."""

    def __init__(self, tables: list[EmbeddingTable], name: str = CHECKPOINT_KEY):
        super().__init__(name=name)
        trained = [t for t in tables if t.trainable]
        self.counts = {t.name: tf.Variable(tf.zeros([t.num_rows], tf.int64), trainable=False, name=f"{t.name}_counts",
                                           synchronization=tf.VariableSynchronization.ON_WRITE,
                                           aggregation=tf.VariableAggregation.SUM) for t in trained}
        self.counted_from = tf.Variable(0, dtype=tf.int64, trainable=False, name="counted_from",
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # each variable holding a table's rows -> (table, its first row): a table sharded over parameter servers
        # is trained shard by shard, and a shard's gradient indexes its own rows
        self._table_of = {}
        for t in trained:
            first = 0
            for shard in shards(t.embeddings):
                self._table_of[id(shard)] = (t.name, first)
                first += int(shard.shape[0])

    def count(self, gradients: list, variables: list[tf.Variable]) -> None:
        """Add the rows each table's gradient read (in a replica context, inside the training step). A table
        whose gradient is not sparse (not read through `tf.gather`) is a ValueError at trace time."""
        for gradient, variable in zip(gradients, variables):
            if gradient is None or id(variable) not in self._table_of:
                continue
            name, first = self._table_of[id(variable)]
            if not isinstance(gradient, tf.IndexedSlices):
                raise ValueError(f"embedding table {name}: its gradient is dense; usage counts need the rows "
                                 "read (a table must be read through tf.gather)")
            indices = tf.reshape(tf.cast(gradient.indices, tf.int64), [-1]) + first
            self.counts[name].scatter_add(tf.IndexedSlices(tf.ones_like(indices), indices))

    def summary(self) -> dict[str, float]:
        """Per table the rows read at least once, and their share of the table (TensorBoard's `usage/`)."""
        out = {}
        for name, variable in self.counts.items():
            seen = np.count_nonzero(variable.numpy())
            table = name.removeprefix("embedding_")
            out[f"usage/rows_seen/{table}"] = float(seen)
            out[f"usage/rows_seen_share/{table}"] = seen / max(int(variable.shape[0]), 1)
        return out


def has_counts(checkpoint_path: str) -> bool:
    """Whether the checkpoint holds usage counts."""
    return any(name.split("/")[0] == CHECKPOINT_KEY for name, _ in tf.train.list_variables(checkpoint_path))


def read_counts(checkpoint_path: str) -> tuple[dict[str, np.ndarray], int] | None:
    """(table layer name -> counts [rows], the step counting began) from a training checkpoint; None when it
    holds none (trained before counting existed)."""
    if not has_counts(checkpoint_path):
        return None
    reader = tf.train.load_checkpoint(checkpoint_path)
    prefix, suffix = f"{CHECKPOINT_KEY}/counts/", "/.ATTRIBUTES/VARIABLE_VALUE"
    counts = {name[len(prefix):-len(suffix)]: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
              if name.startswith(prefix) and name.endswith(suffix)}
    start = int(reader.get_tensor(f"{CHECKPOINT_KEY}/counted_from{suffix}"))
    return counts, start
