"""From raw columns to model inputs: id lookups, transforms and the shared embedding tables.

`FeatureEncoder` is a Keras layer built from the spec and the fitted
preprocessing. It takes the pipeline's `features` dict (raw ids, strings,
numbers, ragged or padded sequences) and returns one dense tensor per feature:
embeddings [B, dim] (sequences pooled), numbers [B, 1], vectors [B, dim].
Features naming one table share one variable, so the student and the teacher
train the same rows. Vocabularies and statistics are constants of the layer,
so a SavedModel of a model using it takes raw values. An id outside its
table's vocabulary reads the table's OOV rows (first, starting at zero); in
training only, the id dropout (`model.id_dropout`) sends a share of the known
ids there too, so those rows learn what an unknown id reads (`row_ids`).
"""
from collections.abc import Collection

import tensorflow as tf

from trainer.data.records import PAD_ID, PAD_STRING
from trainer.layers.embedding import EmbeddingTable
from trainer.layers.pooling import pool
from trainer.preprocessing.fitted import Preprocessing
from trainer.preprocessing.numeric import apply_steps_tf
from trainer.spec.types import Feature, Spec
from trainer.spec.vocabulary_file import read_vocabulary_file

CROSS_SEPARATOR = "\x1f"  # joins the columns of a cross before hashing


class IdLookup(tf.keras.layers.Layer):
    """Raw ids of one table -> row numbers in [0, rows): a vocabulary (with OOV rows first) or hashing."""

    def __init__(self, dtype_name: str, vocabulary: list | None = None, oov_buckets: int = 1,
                 buckets: int | None = None, **kwargs):
        """
        Args:
          dtype_name: the ids' type, "int64" or "string".
          vocabulary: the known ids (row = oov_buckets + position); None for hashing.
          oov_buckets: rows for ids not in `vocabulary`, first (ids are hashed among them).
          buckets: with no vocabulary, hash every id into this many rows.
        """
        super().__init__(**kwargs)
        self.dtype_name, self.vocabulary, self.oov_buckets, self.buckets = dtype_name, vocabulary, oov_buckets, buckets
        if vocabulary is not None:
            cls = tf.keras.layers.StringLookup if dtype_name == "string" else tf.keras.layers.IntegerLookup
            self.lookup = cls(vocabulary=list(vocabulary), num_oov_indices=oov_buckets, mask_token=None)
            self.rows = len(vocabulary) + oov_buckets
        else:
            self.lookup = tf.keras.layers.Hashing(num_bins=buckets)
            self.rows = buckets

    @property
    def oov_rows(self) -> int:
        """The rows unknown ids read, first in the table (0 for hashing: every bucket is some id's)."""
        return self.oov_buckets if self.vocabulary is not None else 0

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        if isinstance(ids, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self.lookup, ids)
        return self.lookup(ids)

    def drop_to_oov(self, rows: tf.Tensor, rate: float, seed: tf.Tensor) -> tf.Tensor:
        """Id dropout: each row number replaced, with probability `rate`, by an OOV row (one drawn uniformly
        among `oov_rows`), so the OOV rows learn what an unknown id reads. Stateless: the same `seed` ([2]
        int64) drops the same ids."""
        drop = tf.random.stateless_uniform(tf.shape(rows), seed) < rate
        if self.oov_rows == 1:
            oov = tf.zeros_like(rows)
        else:
            oov = tf.random.stateless_uniform(tf.shape(rows), tf.random.experimental.stateless_fold_in(seed, 1),
                                              minval=0, maxval=self.oov_rows, dtype=rows.dtype)
        return tf.where(drop, oov, rows)

    def get_config(self) -> dict:
        return {**super().get_config(), "dtype_name": self.dtype_name, "vocabulary": self.vocabulary,
                "oov_buckets": self.oov_buckets, "buckets": self.buckets}


class FeatureEncoder(tf.keras.layers.Layer):
    """Raw feature columns -> {feature name: dense tensor}, for every feature of the spec.

    It has no `get_config`: it is built from a spec and fitted vocabularies (thousands of ids), which a model
    directory stores beside its checkpoints; `trainer.training.trained.load_trained` rebuilds it from there.
    """

    def __init__(self, spec: Spec, preprocessing: Preprocessing, id_dropout: dict[str, float] | None = None,
                 **kwargs):
        """
        Args:
          spec: the features to encode; features naming one table share its `EmbeddingTable`.
          preprocessing: fitted vocabularies (tables with `vocabulary.source: data`) and statistics.
          id_dropout: table -> the share of its categorical features' ids that read an OOV row instead, when
            a call is given a `drop_seed` (training); tables with a vocabulary only
            (`trainer.config.derived.id_dropout_rates`).
        """
        super().__init__(**kwargs)
        self.spec = spec
        self.stats = preprocessing.stats
        self.id_dropout = dict(id_dropout or {})
        self.feature_index = {f.name: i for i, f in enumerate(spec.features)}  # each feature's own dropout stream
        self.lookups: dict[str, IdLookup] = {}
        self.tables: dict[str, EmbeddingTable] = {}
        for name, table in spec.tables.items():
            v = table.vocabulary
            if v.source == "bucketize":  # bucketized numbers: one row per bucket, no lookup
                rows = len(spec.feature(table.features[0]).transforms[-1].boundaries) + 1
            else:
                vocabulary = preprocessing.vocabularies.get(name) if v.source == "data" else \
                    read_vocabulary_file(v.path, table.dtype) if v.source == "file" else None
                self.lookups[name] = IdLookup(table.dtype, vocabulary, v.oov_buckets, v.buckets, name=f"lookup_{name}")
                rows = self.lookups[name].rows
            zero_rows = self.lookups[name].oov_rows if name in self.lookups else 0
            self.tables[name] = EmbeddingTable(rows, table.dim, table.initializer, zero_rows, name=f"embedding_{name}")
        unknown = set(self.id_dropout) - {n for n, lookup in self.lookups.items() if lookup.oov_rows}
        if unknown:
            raise ValueError(f"id dropout on tables without OOV rows: {sorted(unknown)}")

    def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.encode_keeping(features, ())[0]

    def encode_keeping(self, features: dict[str, tf.Tensor], sequences: Collection[str],
                       drop_seed: tf.Tensor | None = None) -> tuple[dict[str, tf.Tensor], dict[str, tf.RaggedTensor]]:
        """Every feature encoded, and the unpooled vectors [B, None, dim] of the named sequence features
        (each looked up once: the pooled field is pooled from them). With `drop_seed` (training), the id
        dropout acts (see `row_ids`)."""
        encoded, kept = {}, {}
        for f in self.spec.features:
            if f.name in sequences:
                kept[f.name] = self.vectors(f, features)
                encoded[f.name] = pool(kept[f.name], f.pooling)
            else:
                encoded[f.name] = self.encode(f, features, drop_seed)
        return encoded, kept

    def row_ids(self, feature: Feature, features: dict[str, tf.Tensor],
                drop_seed: tf.Tensor | None = None) -> tf.Tensor:
        """The table rows a categorical / sequence / bucketized feature selects ([B] or ragged [B, None]).

        With `drop_seed` ([2] int64, training only), a categorical feature of a table in `id_dropout` has that
        share of its ids sent to the table's OOV row, drawn from the seed and the feature (the same seed drops
        the same ids of a feature wherever its rows are looked up). Sequences are not dropped: their ids are
        pooled, so one dropped id barely changes the field, and an unknown id in a history reads the same
        table's OOV row, which the categorical features train. Hashed crosses have no OOV row.
        """
        table = feature.embedding.table
        if feature.bucketized:
            x = apply_steps_tf(tf.cast(features[feature.columns[0]], tf.float32), feature.transforms[:-1],
                               self.stats.get(feature.name))
            return tf.raw_ops.Bucketize(input=x, boundaries=list(feature.transforms[-1].boundaries))
        if feature.is_cross:
            return self.lookups[table](cross_text([features[c] for c in feature.columns]))
        ids = features[feature.columns[0]]
        if feature.kind == "sequence":
            ids = _as_ragged(ids, feature.dtype)
            ids = ids[:, -feature.max_length:] if feature.keep == "last" else ids[:, :feature.max_length]
            return self.lookups[table](ids)
        rows = self.lookups[table](ids)
        if drop_seed is not None and table in self.id_dropout:
            seed = tf.random.experimental.stateless_fold_in(drop_seed, self.feature_index[feature.name])
            rows = self.lookups[table].drop_to_oov(rows, self.id_dropout[table], seed)
        return rows

    def vectors(self, feature: Feature, features: dict[str, tf.Tensor],
                drop_seed: tf.Tensor | None = None) -> tf.Tensor:
        """The table rows of an embedded feature: [B, dim], or ragged [B, None, dim] for a sequence."""
        return self.tables[feature.embedding.table](self.row_ids(feature, features, drop_seed))

    def encode(self, feature: Feature, features: dict[str, tf.Tensor], drop_seed: tf.Tensor | None = None) -> tf.Tensor:
        """One feature's model input: [B, dim] embedding (a sequence pooled), [B, 1] number, [B, dim] vector;
        `drop_seed`: see `row_ids`."""
        if feature.embedding is not None:
            vectors = self.vectors(feature, features, drop_seed)
            return pool(vectors, feature.pooling) if feature.kind == "sequence" else vectors
        x = tf.cast(features[feature.columns[0]], tf.float32)
        if feature.kind == "dense_vector":
            return tf.reshape(x, [-1, feature.dim])
        return tf.expand_dims(apply_steps_tf(x, feature.transforms, self.stats.get(feature.name)), -1)


def cross_text(columns: list[tf.Tensor]) -> tf.Tensor:
    """The one canonical text a cross hashes, whatever its columns' types: each value as text (an int64 id in
    decimal, so the id 42 and the string "42" are the same value), joined by CROSS_SEPARATOR."""
    parts = [x if x.dtype == tf.string else tf.strings.as_string(x) for x in columns]
    return tf.strings.join(parts, separator=CROSS_SEPARATOR)


def _as_ragged(ids: tf.Tensor, dtype: str) -> tf.RaggedTensor:
    if isinstance(ids, tf.RaggedTensor):
        return ids
    return tf.RaggedTensor.from_tensor(ids, padding=PAD_STRING if dtype == "string" else PAD_ID)

