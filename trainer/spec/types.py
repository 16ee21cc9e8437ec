"""The typed feature spec: what `trainer.spec.loader.load_spec` returns.

The spec is the single source of truth for features: the input pipeline,
the fitted preprocessing, the model inputs, the export signatures and the
ONNX inputs are all derived from it.
"""
from dataclasses import dataclass, field
from typing import Any

KINDS = ("categorical", "sequence", "numeric", "dense_vector")
SIDES = ("user", "context", "item", "cross", "privileged")
STUDENT_SIDES = ("user", "context", "item")
TOWER_SIDES = {"user": ("user", "context"), "item": ("item",)}  # the student's two towers and their inputs
TEACHER_ONLY_SIDES = ("cross", "privileged")
# Sections of a spec file read by trainer.config, not by the spec: they leave the fingerprint unchanged.
CONFIG_SECTIONS = ("model", "training", "plugins")
ID_DTYPES = ("int64", "string")
POOLINGS = ("mean", "sum", "max")
VOCAB_SOURCES = ("data", "file", "hash")
INITIALIZERS = ("uniform", "normal", "truncated_normal", "glorot_uniform", "zeros")
TRANSFORM_OPS = ("log1p", "zscore", "minmax", "bucketize")
LABEL_TYPES = ("binary", "regression")
LABEL_TRANSFORMS = ("none", "log1p")
FORMATS = ("tfrecord", "csv", "parquet")
COMPRESSIONS = ("none", "GZIP")  # of TFRecord and CSV files (Parquet compresses inside its files)
# Upper bounds of sizes a spec declares (a value past one is almost always a typo: dim 1e9 would not fit in any
# machine). A table too big for one machine within them is refused by `training.max_table_gb`.
MAX_EMBEDDING_DIM = 1024
MAX_VECTOR_DIM = 65_536  # dense_vector length
MAX_SEQUENCE_LENGTH = 10_000  # ids kept per sequence
MAX_TABLE_ROWS = 2**31 - 1  # hash buckets, vocabulary max_size, ids in a vocabulary file, cardinality
MAX_OOV_BUCKETS = 1_000_000
MAX_BOUNDARIES = 10_000  # bucketize boundaries


@dataclass(frozen=True)
class Vocabulary:
    """How raw ids become table rows."""

    source: str  # "data": fitted by `prerank analyze`; "file": one id per line; "hash": hashing
    min_count: int = 1  # data: ids seen fewer times go to the OOV bucket
    max_size: int | None = None  # data: keep only the most frequent ids
    path: str | None = None  # file: absolute path of the vocabulary file
    buckets: int | None = None  # hash: number of hash buckets
    oov_buckets: int = 1  # data/file: rows for out-of-vocabulary ids (hashed among them)


@dataclass(frozen=True)
class Embedding:
    """An embedding table; features naming the same table share its rows."""

    table: str
    dim: int
    initializer: str = "uniform"


@dataclass(frozen=True)
class TransformStep:
    """One step of a numeric transform; `bucketize` (last only) yields bucket ids."""

    op: str
    boundaries: tuple[float, ...] = ()


@dataclass(frozen=True)
class Feature:
    """One model input, read from one column (or, for crosses, several)."""

    name: str
    kind: str
    side: str
    columns: tuple[str, ...]  # source column(s); several only for a hashed cross
    dtype: str = "float32"  # int64 / string for ids, float32 for numeric and vectors
    vocabulary: Vocabulary | None = None
    embedding: Embedding | None = None
    max_length: int | None = None  # sequence: keep at most this many ids
    keep: str = "last"  # sequence: keep the "last" (most recent) or "first" ids
    pooling: str = "mean"  # sequence: how embedded ids are pooled
    transforms: tuple[TransformStep, ...] = ()
    default: Any = None  # value used when a record lacks the column; None = required
    dim: int | None = None  # dense_vector length
    cardinality: int | None = None  # expected distinct ids; used by the synthetic generator

    @property
    def is_cross(self) -> bool:
        return len(self.columns) > 1

    @property
    def is_id(self) -> bool:
        """True when the feature yields table rows (ids, sequences, bucketized numbers)."""
        return self.embedding is not None

    @property
    def bucketized(self) -> bool:
        return bool(self.transforms) and self.transforms[-1].op == "bucketize"


@dataclass(frozen=True)
class Label:
    """A training target."""

    name: str
    column: str
    type: str  # binary (0/1) or regression
    transform: str = "none"  # regression only: applied to the target before the loss
    weight: float = 1.0  # weight of this task's loss


@dataclass(frozen=True)
class DataSource:
    """Where the spec's data lives; globs are resolved against the spec's folder."""

    format: str = "tfrecord"
    compression: str = "none"
    train: tuple[str, ...] | None = None  # globs (one or more); a file is read once even if several match it
    validation: tuple[str, ...] | None = None
    eval: tuple[str, ...] | None = None
    list_delimiter: str = "|"  # csv: separates sequence ids and vector values inside a cell


@dataclass(frozen=True)
class Table:
    """An embedding table with the features that share it."""

    name: str
    dim: int
    initializer: str
    dtype: str
    vocabulary: Vocabulary
    features: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """A validated feature spec."""

    name: str
    path: str
    fingerprint: str
    features: tuple[Feature, ...]
    labels: tuple[Label, ...]
    sample_weight: str | None = None
    group_key: tuple[str, ...] = ()
    data: DataSource = field(default_factory=DataSource)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"spec {self.path} has no feature '{name}'")

    def features_on(self, *sides: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.side in sides)

    @property
    def tables(self) -> dict[str, Table]:
        """Embedding tables in first-use order."""
        out: dict[str, Table] = {}
        for f in self.features:
            if f.embedding is None:
                continue
            t = out.get(f.embedding.table)
            members = (t.features if t else ()) + (f.name,)
            vocab = f.vocabulary or Vocabulary(source="bucketize", oov_buckets=0)
            out[f.embedding.table] = Table(f.embedding.table, f.embedding.dim, f.embedding.initializer,
                                           f.dtype, vocab, members)
        return out

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the pipeline reads: features, labels, weight, group key."""
        cols: list[str] = []
        for c in [c for f in self.features for c in f.columns] + [l.column for l in self.labels] \
                + ([self.sample_weight] if self.sample_weight else []) + list(self.group_key):
            if c not in cols:
                cols.append(c)
        return tuple(cols)
