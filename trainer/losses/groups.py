"""Per-group tensor operations: group ids, ranks within a group, sampled unexposed candidates.

A group is one value of the spec's group key (e.g. one user on one day) within
a batch. Cascade mode ranks each group's candidates by the teacher; with
`unexposed` > 0 every group also gets K items sampled from the item table,
joined to the group's own user and context columns.
"""
import tensorflow as tf

from trainer.data.catalog import ItemCatalog


def group_ids(keys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(dense group id per row [B] int32, number of groups) from group-key strings."""
    _, ids = tf.unique(keys)
    return ids, tf.reduce_max(ids) + 1


def rank_within_groups(scores: tf.Tensor, groups: tf.Tensor) -> tf.Tensor:
    """0 for the best-scored row of its group, 1 for the next, ...; ties broken by row order."""
    by_score = tf.argsort(scores, direction="DESCENDING", stable=True)
    order = tf.gather(by_score, tf.argsort(tf.gather(groups, by_score), stable=True))
    position = tf.math.invert_permutation(order)  # row -> place in (group, score) order
    n_groups = tf.reduce_max(groups) + 1
    start = tf.math.unsorted_segment_min(position, groups, n_groups)
    return position - tf.gather(start, groups)


def top_n_labels(scores: tf.Tensor, groups: tf.Tensor, n: int) -> tf.Tensor:
    """1.0 for each group's top-n rows by score, else 0.0."""
    return tf.cast(rank_within_groups(scores, groups) < n, tf.float32)


def with_unexposed(features: dict[str, tf.Tensor], groups: tf.Tensor, n_groups: tf.Tensor, per_group: int,
                   catalog: ItemCatalog, user_columns: list[str],
                   seed: tf.Tensor | None = None) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Append `per_group` sampled items to every group: (features of B + G*K rows, their group ids).

    A sampled row takes its user / context columns from its group's first row and every other
    column from the catalog.
    """
    rows = tf.range(tf.shape(groups)[0])
    first_row = tf.math.unsorted_segment_min(rows, groups, n_groups)
    owner = tf.repeat(tf.range(n_groups), per_group)
    extra = candidate_features(features, tf.gather(first_row, owner), catalog,
                               catalog.sample_rows(tf.shape(owner)[0], seed), user_columns)
    out = {column: tf.concat([value, extra[column]], axis=0) for column, value in features.items()}
    return out, tf.concat([groups, owner], axis=0)


def candidate_features(features: dict[str, tf.Tensor], owner_rows: tf.Tensor, catalog: ItemCatalog,
                       item_rows: tf.Tensor, user_columns: list[str],
                       columns: list[str] | None = None) -> dict[str, tf.Tensor]:
    """The raw columns of sampled candidates: candidate i joins the user and context columns of the batch's row
    `owner_rows[i]` to every other column of catalog item `item_rows[i]`.

    Args:
      features: a batch's raw columns.
      owner_rows: per candidate, the row of `features` whose user it is shown to.
      catalog: the item table.
      item_rows: per candidate, its catalog row.
      user_columns: the columns taken from the owner's row.
      columns: the columns wanted (default: every column of `features`).
    """
    out = {}
    for column in (features if columns is None else columns):
        if column in user_columns:
            out[column] = tf.gather(features[column], owner_rows)
        else:
            value = tf.gather(catalog.columns[column], item_rows)
            out[column] = value if isinstance(value, tf.RaggedTensor) else tf.cast(value, features[column].dtype)
    return out
