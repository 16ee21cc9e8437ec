"""From raw columns to model inputs: lookups, transforms and shared embedding tables.

`FeatureEncoder` is a Keras layer built from the spec and the fitted
preprocessing. It takes the pipeline's `features` dict (raw ids, strings,
numbers, ragged or padded sequences) and returns one dense tensor per feature:
embeddings [B, dim] (sequences pooled), numbers [B, 1], vectors [B, dim].
Features naming one table share one variable, so the student and the teacher
train the same rows. Vocabularies and statistics are constants of the layer,
so a SavedModel of a model using it takes raw values.
"""
from collections.abc import Collection

import tensorflow as tf

from trainer.analyze import Preprocessing
from trainer.input import PAD_ID, PAD_STRING
from trainer.numeric import apply_steps_tf
from trainer.spec import Feature, Spec, Table

CROSS_SEPARATOR = "\x1f"  # joins the columns of a cross before hashing
_INITIALIZERS = {  # a new initializer per table, so tables do not start identical
    "uniform": lambda: tf.keras.initializers.RandomUniform(-0.05, 0.05),
    "normal": lambda: tf.keras.initializers.RandomNormal(stddev=0.05),
    "truncated_normal": lambda: tf.keras.initializers.TruncatedNormal(stddev=0.05),
    "glorot_uniform": tf.keras.initializers.GlorotUniform, "zeros": tf.keras.initializers.Zeros}


class IdLookup(tf.keras.layers.Layer):
    """Raw ids of one table -> row numbers in [0, rows): vocabulary + OOV buckets, hashing or buckets."""

    def __init__(self, table: Table, vocabulary: list | None, **kwargs):
        super().__init__(**kwargs)
        v = table.vocabulary
        self.source = v.source
        if v.source in ("data", "file"):
            ids = vocabulary if v.source == "data" else _read_vocabulary_file(v.path, table.dtype)
            cls = tf.keras.layers.StringLookup if table.dtype == "string" else tf.keras.layers.IntegerLookup
            # Row 0..oov-1: out-of-vocabulary ids (hashed among them); then the vocabulary.
            self.lookup = cls(vocabulary=list(ids), num_oov_indices=v.oov_buckets, mask_token=None)
            self.rows = len(ids) + v.oov_buckets
        elif v.source == "hash":
            self.lookup = tf.keras.layers.Hashing(num_bins=v.buckets)
            self.rows = v.buckets
        else:  # bucketize: the table of a bucketized numeric feature
            self.lookup = None
            self.rows = None

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        if isinstance(ids, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self.lookup, ids)
        return self.lookup(ids)


class EmbeddingTable(tf.keras.layers.Layer):
    """One embedding variable; gathers rows (sparse gradients) for dense or ragged row numbers."""

    def __init__(self, rows: int, dim: int, initializer: str, **kwargs):
        super().__init__(**kwargs)
        self.num_rows, self.dim = rows, dim
        self.initializer = _INITIALIZERS[initializer]()

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.num_rows, self.dim),
                                          initializer=self.initializer, trainable=True)
        super().build(input_shape)

    def call(self, rows: tf.Tensor) -> tf.Tensor:
        if isinstance(rows, tf.RaggedTensor):
            return tf.ragged.map_flat_values(tf.gather, self.embeddings, rows)
        return tf.gather(self.embeddings, rows)


class FeatureEncoder(tf.keras.layers.Layer):
    """Raw feature columns -> {feature name: dense tensor}, from the spec."""

    def __init__(self, spec: Spec, preprocessing: Preprocessing, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.stats = preprocessing.stats
        self.lookups: dict[str, IdLookup] = {}
        self.tables: dict[str, EmbeddingTable] = {}
        for name, table in spec.tables.items():
            lookup = IdLookup(table, preprocessing.vocabularies.get(name), name=f"lookup_{name}")
            rows = lookup.rows
            if rows is None:  # bucketized numbers: one row per bucket
                rows = len(spec.feature(table.features[0]).transforms[-1].boundaries) + 1
            self.lookups[name] = lookup
            self.tables[name] = EmbeddingTable(rows, table.dim, table.initializer, name=f"embedding_{name}")

    def call(self, features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.encode_keeping(features, ())[0]

    def encode_keeping(self, features: dict[str, tf.Tensor],
                       sequences: Collection[str]) -> tuple[dict[str, tf.Tensor], dict[str, tf.RaggedTensor]]:
        """Every feature encoded, and the unpooled vectors [B, None, dim] of the named sequence features
        (each looked up once: the pooled field is pooled from them)."""
        encoded, kept = {}, {}
        for f in self.spec.features:
            if f.name in sequences:
                kept[f.name] = self.vectors(f, features)
                encoded[f.name] = _pool(kept[f.name], f.pooling)
            else:
                encoded[f.name] = self.encode(f, features)
        return encoded, kept

    def row_ids(self, feature: Feature, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The table rows a categorical / sequence / bucketized feature selects ([B] or ragged [B, None])."""
        table = feature.embedding.table
        if feature.bucketized:
            x = apply_steps_tf(tf.cast(features[feature.columns[0]], tf.float32), feature.transforms[:-1],
                               self.stats.get(feature.name))
            return tf.raw_ops.Bucketize(input=x, boundaries=list(feature.transforms[-1].boundaries))
        if feature.is_cross:
            parts = [_as_string(features[c]) for c in feature.columns]
            return self.lookups[table](tf.strings.join(parts, separator=CROSS_SEPARATOR))
        ids = features[feature.columns[0]]
        if feature.kind == "sequence":
            ids = _as_ragged(ids, feature.dtype)
            ids = ids[:, -feature.max_length:] if feature.keep == "last" else ids[:, :feature.max_length]
        return self.lookups[table](ids)

    def vectors(self, feature: Feature, features: dict[str, tf.Tensor]) -> tf.Tensor:
        """The table rows of an embedded feature: [B, dim], or ragged [B, None, dim] for a sequence."""
        return self.tables[feature.embedding.table](self.row_ids(feature, features))

    def encode(self, feature: Feature, features: dict[str, tf.Tensor]) -> tf.Tensor:
        if feature.embedding is not None:
            vectors = self.vectors(feature, features)
            return _pool(vectors, feature.pooling) if feature.kind == "sequence" else vectors
        x = tf.cast(features[feature.columns[0]], tf.float32)
        if feature.kind == "dense_vector":
            return tf.reshape(x, [-1, feature.dim])
        return tf.expand_dims(apply_steps_tf(x, feature.transforms, self.stats.get(feature.name)), -1)


def _as_string(x: tf.Tensor) -> tf.Tensor:
    return x if x.dtype == tf.string else tf.strings.as_string(x)


def _as_ragged(ids: tf.Tensor, dtype: str) -> tf.RaggedTensor:
    if isinstance(ids, tf.RaggedTensor):
        return ids
    return tf.RaggedTensor.from_tensor(ids, padding=PAD_STRING if dtype == "string" else PAD_ID)


def _pool(vectors: tf.RaggedTensor, pooling: str) -> tf.Tensor:
    """Pool [B, None, d] -> [B, d]; an empty sequence pools to zeros."""
    total = tf.reduce_sum(vectors, axis=1)
    if pooling == "sum":
        return total
    lengths = tf.cast(vectors.row_lengths(), tf.float32)[:, None]
    if pooling == "mean":
        return total / tf.maximum(lengths, 1.0)
    return tf.where(lengths > 0, tf.reduce_max(vectors, axis=1), 0.0)


def _read_vocabulary_file(path: str, dtype: str) -> list:
    with open(path, encoding="utf-8") as fh:
        ids = [line.rstrip("\n").split("\t")[0] for line in fh if line.strip()]
    return ids if dtype == "string" else [int(i) for i in ids]
