"""The item table: every distinct item of the data with its item-level columns, for sampling candidates.

Cascade training and consistency evaluation add items a user was never shown.
Their features are looked up by item id here. The catalog holds every column
that no user or context feature reads (item features, their offline
statistics, the item half of crosses); the user half of a candidate comes from
the group's own row. Derived from the spec, never listed.
"""
from dataclasses import dataclass, field, replace

import numpy as np
import tensorflow as tf

from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline, resolve_files
from trainer.data.records import format_of
from trainer.errors import DataError
from trainer.spec.sides import catalog_columns, id_feature, item_tower_spec
from trainer.spec.types import Feature, Spec


@dataclass
class ItemCatalog:
    """Items in first-seen order; `columns` maps column -> values per item (tf tensors, ragged for lists)."""

    id_column: str
    ids: np.ndarray
    columns: dict[str, tf.Tensor | tf.RaggedTensor]
    skipped: list[dict] = field(default_factory=list)  # corrupt records left out (`corrupt.Skipped.as_dict`)

    @property
    def size(self) -> int:
        return len(self.ids)

    def sample_rows(self, n: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
        """Catalog rows of `n` items drawn uniformly (with replacement), int64 [n]. With a `seed`, the draws of
        a smaller `n` are the first ones of a larger `n` (a counter-based generator)."""
        if seed is None:
            return tf.random.uniform([n], 0, self.size, dtype=tf.int64)
        return tf.random.stateless_uniform([n], seed, 0, self.size, dtype=tf.int64)

    def sample(self, n: tf.Tensor, seed: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """Columns of `n` items drawn uniformly (with replacement): those of `sample_rows(n, seed)`."""
        return self.gather(self.sample_rows(n, seed))

    def gather(self, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        """Columns of the catalog items at `rows`."""
        return {c: tf.gather(v, rows) for c, v in self.columns.items()}


def build_catalog(spec: Spec, patterns: str | list[str], id_feature_name: str | None = None, batch_size: int = 4096,
                  skip_corrupt: bool = False, item_table: bool = False) -> ItemCatalog:
    """One pass over the data: the first-seen row of each item id, catalog columns only.

    Args:
      spec: the item features.
      patterns: the files (globs).
      id_feature_name: the item id feature (default: the spec's only item id feature).
      batch_size: rows read per batch.
      skip_corrupt: leave corrupt records out (listed in the catalog's `skipped`) instead of failing.
      item_table: the files are an item table (`item_table_catalog`): one row per item, so a repeated id is a
        DataError instead of a later impression of the same item.
    """
    id_column = spec.feature(id_feature(spec, "item", id_feature_name)).columns[0]
    wanted = catalog_columns(spec)
    config = InputConfig(batch_size=batch_size, shuffle_buffer=0, deterministic=True, check_values=item_table,
                         skip_corrupt=skip_corrupt)
    seen: dict = {}
    parts: dict[str, list] = {c: [] for c in wanted}
    order: list = []
    files = resolve_files(patterns)
    fmt, compression = format_of(files[0], spec.data.format, spec.data.compression) if item_table else (None, None)
    pipeline = make_pipeline(spec, files, config, fmt=fmt, compression=compression)
    for batch in pipeline:
        ids = batch["features"][id_column].numpy()
        ids = ids.astype(object) if ids.dtype.kind == "S" else ids
        uniques, first, counts = np.unique(ids, return_index=True, return_counts=True)
        if item_table:
            _refuse_repeats(uniques, counts, seen, files, id_column)
        new = [i for i in sorted(first) if ids[i] not in seen]
        if not new:
            continue
        for i in new:
            seen[ids[i]] = len(seen)
            order.append(ids[i])
        index = tf.constant(new, tf.int64)
        for c in wanted:
            parts[c].append(tf.gather(batch["features"][c], index))
    if not order:
        raise DataError(f"no items found in {patterns}")
    columns = {c: tf.concat(v, axis=0) for c, v in parts.items()}
    return ItemCatalog(id_column, np.array(order), columns, [s.as_dict() for s in pipeline.skipped])


def _refuse_repeats(uniques: np.ndarray, counts: np.ndarray, seen: dict, files: list[str], id_column: str) -> None:
    """DataError naming an item id that a batch holds twice, or that an earlier batch held."""
    repeated = [u for u, n in zip(uniques, counts) if n > 1 or u in seen]
    if repeated:
        shown = repeated[0].decode() if isinstance(repeated[0], bytes) else int(repeated[0])
        raise DataError(f"{', '.join(files)}: item id {shown!r} (column '{id_column}') is in more than one row; "
                        "an item table holds one row per item")


def item_table_catalog(spec: Spec, patterns: str | list[str], id_feature_name: str | None = None,
                       batch_size: int = 4096, attributes: tuple[str, ...] = ()) -> ItemCatalog:
    """The catalog of an item table (Parquet, CSV or TFRecord, told by the file suffix, else the spec's format):
    one row per item holding every column the student's item tower reads, checked like training data (a
    missing column names the file, the column and its features; a repeated item id is refused). Columns the
    data carries per impression (a video's age on the day, say) must be in the table too.

    `attributes`: further numeric columns of the table to carry along (float32, required in every row,
    finite), e.g. a click-through prior the scoring service orders tiers by; `columns` holds them too."""
    cut = item_tower_spec(spec)
    taken = {f.name for f in spec.features}
    extra = tuple(Feature(a if a not in taken else f"{a} (attribute)", "numeric", "item", (a,)) for a in attributes)
    return build_catalog(replace(cut, features=cut.features + extra), patterns, id_feature_name, batch_size,
                         item_table=True)
