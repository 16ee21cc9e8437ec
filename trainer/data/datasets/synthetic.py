"""Synthetic data for any feature spec, for scale tests and benchmarks.

`generate` writes every column the spec reads (features, labels, sample weight,
group key) as `part-XXXXX` shards in one folder:

- ids (categorical and sequence features) follow a Zipf-like law over the
  feature's `cardinality` (or a default); popularity ranks are mapped to ids
  through a seeded permutation, so the most frequent ids are not 0, 1, 2...
  Features sharing an embedding table draw from the same id space (string ids
  are `f"{table}_{id}"`). Sequences have random lengths in [0, max_length].
  Columns only read by crosses are plain int ids.
- numbers are log-normal (positive, so log1p / zscore make sense), missing in
  ~2% of rows when the feature has a default; dense vectors are standard normal.
- labels come from a hidden model: each id has a hidden vector and bias, each
  number and vector a weight. A label's score is a user-side x item-side dot
  product (learnable by a two-tower model) plus additive terms; labels share
  the towers but weight the hidden dimensions differently, so they correlate.
  Binary labels are Bernoulli(sigmoid(score + noise)) with a base rate near
  0.3; regression labels are watch-time-like integers (~20 s in milliseconds).

Rows depend only on the spec, `n_rows`, `seed` and the distribution arguments,
not on the format or shard count. Random streams are keyed by column / table
name, so adding a feature leaves the other columns' values unchanged (labels
change, as the hidden model then includes the new feature). Numpy arrays for
all rows are built first (tens of bytes per row and column); Python values are
built one shard at a time, so peak memory holds one shard of Python objects.
"""
import datetime
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.data.writers import PARQUET_ROW_GROUP_ROWS, Column, shard_ranges, write_shard
from trainer.spec.types import COMPRESSIONS, FORMATS, Feature, Spec

HIDDEN_DIM = 8  # size of the hidden space where user-side and item-side vectors meet
MISSING_RATE = 0.02  # share of missing values in columns whose feature has a default
EMPTY_SEQUENCE_RATE = 0.1  # share of empty sequences (e.g. users without history)
BINARY_BASE_RATE = 0.3  # target positive rate of binary labels
LOGIT_NOISE = 0.5  # std of the noise added to binary logits before sampling
INTERACTION_SCALE = 1.5  # weight of the two-tower term in every score
ADDITIVE_SCALE = 1.5  # weight of the additive terms (per-id biases, numbers, vectors)
WATCH_TIME_MS = 20_000.0  # median of regression labels
FIRST_DATE, N_DAYS = 20220401, 7  # generated group-key columns are dates in this window
USER_SIDES = ("user", "context")  # sides feeding the student's user tower
EXACT_HEAD = 1024  # popularity ranks sampled exactly; the rest from a continuous power law


@dataclass(frozen=True, eq=False)
class SyntheticResult:
    """What `generate` wrote, with the hidden model's noiseless per-row scores."""

    files: tuple[str, ...]
    n_rows: int
    columns: tuple[str, ...]
    scores: Mapping[str, np.ndarray]  # label name -> binary: logit incl. bias; regression: expected log value


def generate(spec: Spec, n_rows: int, out_dir: str, *, fmt: str = "tfrecord", compression: str = "GZIP",
             n_shards: int = 4, seed: int = 0, zipf_exponent: float = 1.1,
             default_cardinality: int = 10_000, row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> SyntheticResult:
    """Write `n_rows` synthetic rows for `spec` as `part-XXXXX` shards in `out_dir`.

    `fmt` is tfrecord, csv or parquet. `compression` applies to TFRecord shards; CSV shards are written
    uncompressed (as `write_shards` does), Parquet shards compress inside (in row groups of
    `row_group_rows` rows). Ids follow a Zipf law with `zipf_exponent`; tables without a
    `cardinality` in the spec get `default_cardinality` ids. `out_dir` must hold no shards yet.
    """
    _check_args(n_rows, out_dir, fmt, compression, n_shards, seed, zipf_exponent, default_cardinality, row_group_rows)
    gen = _Generator(spec, n_rows, seed, zipf_exponent, default_cardinality)
    columns = gen.columns()
    files = []
    for k, rows in enumerate(shard_ranges(n_rows, n_shards)):
        chunk = [Column(name, col.type, col.values(rows.start, rows.stop)) for name, col in columns.items()]
        files.append(write_shard(out_dir, k, chunk, range(len(rows)), fmt, compression, spec.data.list_delimiter,
                                 row_group_rows))
    return SyntheticResult(tuple(files), n_rows, tuple(columns), gen.scores)


@dataclass(frozen=True)
class RawTables:
    """What `generate_tables` wrote: one file per table."""

    impressions: str
    users: str
    items: str
    n_impressions: int
    n_users: int
    n_items: int
    columns: Mapping[str, tuple[str, ...]]  # table ("impressions", "users", "items") -> its columns


def generate_tables(spec: Spec, n_impressions: int, out_dir: str, *, user_key: str | None = None,
                    item_key: str | None = None, time_column: str = "time_ms", derived: tuple[str, ...] = (),
                    first_date: int = FIRST_DATE, days: int = N_DAYS, chunk_rows: int = 500_000, seed: int = 0,
                    zipf_exponent: float = 1.1, default_cardinality: int = 10_000,
                    cardinalities: Mapping[str, int] | None = None) -> RawTables:
    """Raw, unjoined tables for `spec`, as a team's logs look before `prerank convert`: `impressions.parquet`
    (one row per impression, in time order), `users.parquet` and `items.parquet` (one row per id).

    The users table holds the user key and every other user-side column, the items table the item key and every
    item-side column; the impressions hold both keys, `time_column` (epoch milliseconds, spread over `days` days
    from `first_date` (yyyymmdd, UTC)) and every other column the spec reads (context, cross-only columns,
    labels, weight, group key). Columns in `derived` are left out: `prerank convert` derives them (--derive,
    --history). Labels come from the same hidden model as `generate`'s, over the joined row. Impressions are
    drawn and written `chunk_rows` at a time, so memory stays bounded however many there are.

    Args:
      user_key / item_key: the key columns (default: the first categorical user-side / item-side feature).
      cardinalities: table name -> ids in it (default: the spec's `cardinality`, else `default_cardinality`);
        the users and items tables have one row per id of their key's table.
    """
    _check_args(n_impressions, out_dir, "tfrecord", "none", 1, seed, zipf_exponent, default_cardinality,
                PARQUET_ROW_GROUP_ROWS)
    derived_set = set(derived)
    user_key = user_key or _first_key(spec, ("user",))
    item_key = item_key or _first_key(spec, ("item",))
    side_columns = {"users": [user_key], "items": [item_key]}
    for f in spec.features:
        for c in f.columns if not f.is_cross else ():
            table = "users" if f.side == "user" else "items" if f.side == "item" else None
            if table and c not in derived_set and c not in side_columns[table]:
                side_columns[table].append(c)
    placed = set(side_columns["users"]) | set(side_columns["items"]) | derived_set
    impression_columns = [user_key, item_key, time_column] + [c for c in spec.columns if c not in placed
                                                              and c != time_column]
    paths = {name: os.path.join(out_dir, f"{name}.parquet") for name in ("impressions", "users", "items")}
    for path in paths.values():
        if os.path.exists(path):
            raise ValueError(f"{path} exists: generate_tables writes into a folder without these tables")
    os.makedirs(out_dir, exist_ok=True)
    args = (seed, zipf_exponent, default_cardinality)
    tables = {}
    for name, key in (("users", user_key), ("items", item_key)):
        probe = _Generator(spec, 1, *args, cardinalities=cardinalities)
        rows = probe._table_space(_feature_of(spec, key)).cardinality
        gen = _Generator(spec, rows, *args, only=set(side_columns[name]), key=key, cardinalities=cardinalities)
        columns = gen.feature_columns()
        _write_parquet(paths[name], {c: columns[c] for c in side_columns[name]})
        tables[name] = gen
    first_ms = _epoch_ms(first_date)
    span = days * 86_400_000
    biases: dict[str, float] = {}
    writer = None
    for k, rows in enumerate(shard_ranges(n_impressions, math.ceil(n_impressions / chunk_rows))):
        n = len(rows)
        gen = _Generator(spec, n, *args, only=set(impression_columns), stream=("chunk", str(k)),
                         cardinalities=cardinalities, biases=biases)
        users = tables["users"]._table_space(_feature_of(spec, user_key)).draw(gen._rng("impressions", "user"), n)
        items = tables["items"]._table_space(_feature_of(spec, item_key)).draw(gen._rng("impressions", "item"), n)
        gen.join(tables["users"], users)
        gen.join(tables["items"], items)
        columns = gen.feature_columns()
        columns.update(gen.label_columns(columns))
        times = np.sort(gen._rng("impressions", "time").random(n))
        values = {user_key: _Ids(tables["users"]._table_space(_feature_of(spec, user_key)), users),
                  item_key: _Ids(tables["items"]._table_space(_feature_of(spec, item_key)), items),
                  time_column: _Array("int", first_ms + np.floor((rows.start + times * n) / n_impressions * span)
                                      .astype(np.int64))}
        values.update({c: columns[c] for c in impression_columns if c in columns})
        batch = pa.table({c: values[c].arrow() for c in impression_columns})
        if writer is None:
            writer = pq.ParquetWriter(paths["impressions"], batch.schema, compression="snappy")
        writer.write_table(batch, row_group_size=PARQUET_ROW_GROUP_ROWS)
    writer.close()
    return RawTables(paths["impressions"], paths["users"], paths["items"], n_impressions, tables["users"].n,
                     tables["items"].n, {"impressions": tuple(impression_columns),
                                         "users": tuple(side_columns["users"]), "items": tuple(side_columns["items"])})


def _first_key(spec: Spec, sides: tuple[str, ...]) -> str:
    for f in spec.features:
        if f.kind == "categorical" and f.side in sides and not f.is_cross:
            return f.columns[0]
    raise ValueError(f"the spec has no categorical {'/'.join(sides)} feature to key a table by")


def _feature_of(spec: Spec, column: str) -> Feature:
    for f in spec.features:
        if f.columns == (column,) and f.kind == "categorical":
            return f
    raise ValueError(f"no categorical feature reads '{column}': a table key is an id feature's column")


def _epoch_ms(yyyymmdd: int) -> int:
    """Epoch milliseconds of a day's start (UTC)."""
    day = datetime.datetime.strptime(str(yyyymmdd), "%Y%m%d").replace(tzinfo=datetime.timezone.utc)
    return int(day.timestamp() * 1000)


def _write_parquet(path: str, columns: Mapping[str, "_Values"]) -> None:
    pq.write_table(pa.table({c: v.arrow() for c, v in columns.items()}), path, compression="snappy",
                   row_group_size=PARQUET_ROW_GROUP_ROWS)


def _check_args(n_rows: int, out_dir: str, fmt: str, compression: str, n_shards: int, seed: int,
                zipf_exponent: float, default_cardinality: int, row_group_rows: int) -> None:
    def positive_int(name: str, value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    positive_int("n_rows", n_rows)
    positive_int("n_shards", n_shards)
    positive_int("default_cardinality", default_cardinality)
    positive_int("row_group_rows", row_group_rows)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if not isinstance(zipf_exponent, (int, float)) or isinstance(zipf_exponent, bool) or not zipf_exponent > 0:
        raise ValueError(f"zipf_exponent must be positive, got {zipf_exponent!r}")
    if os.path.isdir(out_dir):
        stale = sorted(f for f in os.listdir(out_dir) if f.startswith("part-"))
        if stale:
            raise ValueError(f"out_dir {out_dir} already holds shards ({stale[0]}, ...): remove them or "
                             "choose an empty folder (stale shards would be read with the new ones)")


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A random stream for one purpose, independent of every other stream."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


class _IdSpace:
    """One table's ids: a Zipf-like popularity law, rank -> id mapping and hidden per-id weights."""

    def __init__(self, name: str, cardinality: int, is_string: bool, exponent: float, seed: int):
        self.name, self.cardinality, self.is_string, self.exponent = name, cardinality, is_string, exponent
        rng = _rng(seed, "table", name)
        self.ids = rng.permutation(cardinality)  # id of each popularity rank
        self.vectors = rng.standard_normal((cardinality, HIDDEN_DIM), dtype=np.float32)
        self.bias = rng.standard_normal(cardinality, dtype=np.float32)
        # Exact cumulative law over the head ranks; the tail is sampled from the continuous
        # power law over [head + 0.5, cardinality + 0.5] (cheap for millions of ids).
        head = min(cardinality, EXACT_HEAD)
        weights = np.arange(1, head + 1, dtype=np.float64) ** -exponent
        self._lo, self._hi = head + 0.5, cardinality + 0.5
        total = weights.sum() + self._tail_integral(self._hi)
        self._head_cdf = np.cumsum(weights) / total

    def _tail_integral(self, x: float | np.ndarray) -> float | np.ndarray:
        s, lo = self.exponent, self._lo
        if s == 1:
            return np.log(x / lo)
        return (x ** (1 - s) - lo ** (1 - s)) / (1 - s)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` popularity ranks (0 = most frequent)."""
        u = rng.random(n)
        ranks = np.searchsorted(self._head_cdf, u, side="right")
        tail = ranks >= len(self._head_cdf)
        if tail.any():
            # Invert the tail's continuous cumulative law, then round to the nearest rank.
            v = (u[tail] - self._head_cdf[-1]) / (1 - self._head_cdf[-1]) * self._tail_integral(self._hi)
            s, lo = self.exponent, self._lo
            x = lo * np.exp(v) if s == 1 else (lo ** (1 - s) + v * (1 - s)) ** (1 / (1 - s))
            ranks[tail] = np.rint(x).astype(np.int64) - 1
        return np.minimum(ranks, self.cardinality - 1)

    def to_arrow(self, ranks: np.ndarray) -> pa.Array:
        """Ids of `ranks` as an int64 array, or strings `f"{table}_{id}"`."""
        ids = pa.array(self.ids[ranks].astype(np.int64))
        if not self.is_string:
            return ids
        return pc.binary_join_element_wise(pa.scalar(f"{self.name}_"), ids.cast(pa.string()), "")

    def to_python(self, ranks: np.ndarray) -> list:
        """Ids of `ranks` as Python ints, or strings `f"{table}_{id}"`."""
        ids = self.ids[ranks]
        if not self.is_string:
            return ids.tolist()
        uniq, inverse = np.unique(ids, return_inverse=True)
        names = np.array([f"{self.name}_{i}" for i in uniq.tolist()], dtype=object)
        return names[inverse].tolist()


class _Values:
    """A generated column: numpy arrays for all rows, turned into Python values per shard (or Arrow arrays)."""

    type: str

    def values(self, start: int, stop: int) -> list:
        raise NotImplementedError

    def arrow(self) -> pa.Array:
        raise NotImplementedError


def _with_missing(values: list, missing: np.ndarray | None) -> list:
    """`values` with None where `missing` is set."""
    if missing is not None:
        for i in np.flatnonzero(missing).tolist():
            values[i] = None
    return values


@dataclass
class _Ids(_Values):
    """One id per row (None where missing)."""

    space: _IdSpace
    ranks: np.ndarray
    missing: np.ndarray | None = None

    @property
    def type(self) -> str:
        return "str" if self.space.is_string else "int"

    def values(self, start: int, stop: int) -> list:
        missing = None if self.missing is None else self.missing[start:stop]
        return _with_missing(self.space.to_python(self.ranks[start:stop]), missing)

    def arrow(self) -> pa.Array:
        ids = self.space.to_arrow(self.ranks)
        return ids if self.missing is None else pc.if_else(pa.array(self.missing), pa.nulls(len(ids), ids.type), ids)


@dataclass
class _Sequences(_Values):
    """A list of ids per row, stored flat."""

    space: _IdSpace
    ranks: np.ndarray  # all rows' ranks, concatenated
    offsets: np.ndarray  # row i holds ranks[offsets[i]:offsets[i + 1]]

    @property
    def type(self) -> str:
        return "str_list" if self.space.is_string else "int_list"

    def values(self, start: int, stop: int) -> list:
        bounds = self.offsets[start:stop + 1]
        flat = self.space.to_python(self.ranks[bounds[0]:bounds[-1]])
        bounds = (bounds - bounds[0]).tolist()
        return [flat[a:b] for a, b in zip(bounds, bounds[1:])]

    def arrow(self) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(self.offsets), self.space.to_arrow(self.ranks))


@dataclass
class _Array(_Values):
    """Numbers (or vectors) per row, straight from an array."""

    type: str  # int, float or float_list (2-d array)
    array: np.ndarray
    missing: np.ndarray | None = None

    def values(self, start: int, stop: int) -> list:
        missing = None if self.missing is None else self.missing[start:stop]
        return _with_missing(self.array[start:stop].tolist(), missing)

    def arrow(self) -> pa.Array:
        if self.array.ndim == 2:
            flat = pa.array(self.array.reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, self.array.shape[1]).cast(pa.list_(flat.type))
        return pa.array(self.array, mask=self.missing)


class _Generator:
    """Draws every column of a spec (or those in `only`) and the labels of the hidden model.

    For raw tables (`generate_tables`) one generator draws each table: `key` names the column whose rows are the
    table's ids in popularity order (one row per user or item), `stream` keys the random streams of a chunk of
    impressions, `cardinalities` overrides tables' sizes and `biases` carries the labels' biases from chunk to
    chunk. The hidden model (per-id vectors, label weights) is the same in every table and chunk.
    """

    def __init__(self, spec: Spec, n_rows: int, seed: int, exponent: float, default_cardinality: int, *,
                 only: set[str] | None = None, key: str | None = None, stream: tuple[str, ...] = (),
                 cardinalities: Mapping[str, int] | None = None, biases: dict[str, float] | None = None):
        self.spec, self.n, self.seed, self.exponent = spec, n_rows, seed, exponent
        self.default_cardinality = default_cardinality
        self.only, self.key, self.stream = only, key, stream
        self.cardinalities = dict(cardinalities or {})
        self.biases = biases if biases is not None else {}
        self.spaces: dict[str, _IdSpace] = {}
        self.user = np.zeros((n_rows, HIDDEN_DIM), np.float32)  # sum of user/context-side hidden vectors
        self.item = np.zeros((n_rows, HIDDEN_DIM), np.float32)
        self.n_user = self.n_item = self.n_additive = 0
        self.additive = np.zeros(n_rows, np.float32)  # sum of additive terms
        self.scores: dict[str, np.ndarray] = {}

    def _rng(self, *keys: str) -> np.random.Generator:
        return _rng(self.seed, *self.stream, *keys)

    def _wanted(self, column: str) -> bool:
        return self.only is None or column in self.only

    def columns(self) -> dict[str, _Values]:
        """Every spec column (in `only`), in `spec.columns` order."""
        out = self.feature_columns()
        out.update(self.label_columns(out))
        return {c: out[c] for c in self.spec.columns if c in out}

    def feature_columns(self) -> dict[str, _Values]:
        """The features' columns (in `only`)."""
        out: dict[str, _Values] = {}
        for f in self.spec.features:
            if not f.is_cross and f.columns[0] not in out and self._wanted(f.columns[0]):
                out[f.columns[0]] = self._feature(f)
        for f in self.spec.features:  # columns read only by crosses
            for c in f.columns:
                if c not in out and self._wanted(c) and all(g.is_cross for g in self.spec.features
                                                            if c in g.columns):
                    space = self._space(f"column:{c}", self.default_cardinality, f.dtype == "string")
                    out[c] = _Ids(space, space.draw(self._rng("ids", c), self.n))
        return out

    def label_columns(self, features: Mapping[str, _Values]) -> dict[str, _Values]:
        """The labels', weight's and group key's columns (in `only`) not among `features`."""
        out: dict[str, _Values] = {}
        for label in self.spec.labels:
            if label.column not in features and label.column not in out and self._wanted(label.column):
                out[label.column] = self._label(label.name, label.type)
        weight = self.spec.sample_weight
        if weight and weight not in features and self._wanted(weight):
            g = self._rng("weight", weight).standard_normal(self.n)
            out[weight] = _Array("float", np.round(np.exp(0.3 * g - 0.045), 4))
        for c in self.spec.group_key:
            if c not in features and c not in out and self._wanted(c):
                out[c] = _Array("int", FIRST_DATE + self._rng("group", c).integers(0, N_DAYS, self.n))
        return out

    def join(self, table: "_Generator", ranks: np.ndarray) -> None:
        """Add the hidden terms of `table`'s rows `ranks` (a user or item table) to this generator's rows."""
        self.user += table.user[ranks]
        self.item += table.item[ranks]
        self.additive += table.additive[ranks]
        self.n_user += table.n_user
        self.n_item += table.n_item
        self.n_additive += table.n_additive

    # Features -----------------------------------------------------------------------------

    def _feature(self, f: Feature) -> _Values:
        rng = self._rng("ids", f.columns[0])
        if f.kind in ("categorical", "sequence"):
            space = self._table_space(f)
            if f.kind == "sequence":
                return self._sequence(f, space, rng)
            if f.columns[0] == self.key:  # the table's own ids: every id once, in popularity order
                ranks = np.arange(self.n)
                self._add_id_terms(f, space, ranks, None)
                return _Ids(space, ranks)
            ranks = space.draw(rng, self.n)
            missing = self._missing(f)
            present = None if missing is None else ~missing
            self._add_id_terms(f, space, ranks, present)
            return _Ids(space, ranks, missing)
        if f.kind == "numeric":
            g = rng.standard_normal(self.n)
            mu, sigma = rng.uniform(0.0, 4.0), rng.uniform(0.5, 1.5)
            values = np.maximum(np.round(np.exp(mu + sigma * g), 4), 1e-4)
            missing = self._missing(f)
            if missing is not None:
                g[missing] = 0.0
            self._add(np.float32(rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)) * g.astype(np.float32))
            return _Array("float", values, missing)
        vectors = rng.standard_normal((self.n, f.dim), dtype=np.float32)  # dense_vector
        self._add(vectors @ rng.standard_normal(f.dim, dtype=np.float32) / np.float32(math.sqrt(f.dim)))
        if f.side != "cross" and f.side != "privileged":
            projection = rng.standard_normal((f.dim, HIDDEN_DIM), dtype=np.float32) / np.float32(math.sqrt(f.dim))
            self._add_vector(f.side, vectors @ projection)
        return _Array("float_list", np.round(vectors.astype(np.float64), 5))

    def _sequence(self, f: Feature, space: _IdSpace, rng: np.random.Generator) -> _Sequences:
        lengths = rng.integers(1, f.max_length + 1, self.n)
        lengths[rng.random(self.n) < EMPTY_SEQUENCE_RATE] = 0
        offsets = np.zeros(self.n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ranks = space.draw(rng, int(offsets[-1]))
        # The hidden model pools a sequence by the mean of its ids' vectors and biases.
        row = np.repeat(np.arange(self.n), lengths)
        scale = 1.0 / np.maximum(lengths, 1)
        pooled = np.stack([np.bincount(row, space.vectors[ranks, d], self.n) for d in range(HIDDEN_DIM)], axis=1)
        self._add_vector(f.side, (pooled * scale[:, None]).astype(np.float32))
        self._add((np.bincount(row, space.bias[ranks], self.n) * scale).astype(np.float32))
        return _Sequences(space, ranks, offsets)

    def _missing(self, f: Feature) -> np.ndarray | None:
        if f.default is None:
            return None
        return self._rng("missing", f.columns[0]).random(self.n) < MISSING_RATE

    def _table_space(self, f: Feature) -> _IdSpace:
        table = f.embedding.table
        members = [g for g in self.spec.features if g.embedding and g.embedding.table == table and not g.is_cross]
        cardinality = max((g.cardinality for g in members if g.cardinality), default=self.default_cardinality)
        return self._space(table, self.cardinalities.get(table, cardinality), f.dtype == "string")

    def _space(self, name: str, cardinality: int, is_string: bool) -> _IdSpace:
        if name not in self.spaces:
            self.spaces[name] = _IdSpace(name, cardinality, is_string, self.exponent, self.seed)
        return self.spaces[name]

    # Hidden model -------------------------------------------------------------------------

    def _add_id_terms(self, f: Feature, space: _IdSpace, ranks: np.ndarray, present: np.ndarray | None) -> None:
        vectors, bias = space.vectors[ranks], space.bias[ranks]
        if present is not None:
            vectors *= present[:, None]
            bias *= present
        self._add_vector(f.side, vectors)
        self._add(bias)

    def _add_vector(self, side: str, vectors: np.ndarray) -> None:
        if side in USER_SIDES:
            self.user += vectors
            self.n_user += 1
        elif side == "item":
            self.item += vectors
            self.n_item += 1

    def _add(self, term: np.ndarray) -> None:
        self.additive += term
        self.n_additive += 1

    def _score(self, name: str) -> np.ndarray:
        """A label's noiseless score: towers' dot product (label-specific weights per dim) + additive terms."""
        rng = _rng(self.seed, "hidden", name)
        dims = np.exp(0.5 * rng.standard_normal(HIDDEN_DIM)).astype(np.float32)  # positive: tasks agree in sign
        user = self.user / np.float32(math.sqrt(max(self.n_user, 1)))
        item = self.item / np.float32(math.sqrt(max(self.n_item, 1)))
        interaction = (user * item) @ dims / np.float32(math.sqrt(HIDDEN_DIM))
        additive = self.additive / np.float32(math.sqrt(max(self.n_additive, 1)))
        return INTERACTION_SCALE * interaction + np.float32(ADDITIVE_SCALE * rng.uniform(0.7, 1.0)) * additive

    def _label(self, name: str, kind: str) -> _Array:
        score = self._score(name)
        rng = self._rng("label", name)
        noise = rng.standard_normal(self.n).astype(np.float32)
        if kind == "binary":
            if name not in self.biases:
                self.biases[name] = _bias_for_rate(score[:100_000], BINARY_BASE_RATE)
            logit = score + np.float32(self.biases[name])
            self.scores[name] = logit
            p = 1 / (1 + np.exp(-(logit + LOGIT_NOISE * noise)))
            return _Array("int", (rng.random(self.n) < p).astype(np.int64))
        log_value = np.float32(math.log(WATCH_TIME_MS)) + 0.5 * score
        self.scores[name] = log_value
        return _Array("int", np.maximum(np.rint(np.exp(log_value + 0.6 * noise)), 1).astype(np.int64))


def _bias_for_rate(score: np.ndarray, rate: float) -> float:
    """The bias b with mean(sigmoid(score + b)) == rate (bisection)."""
    score, lo, hi = score.astype(np.float64), -30.0, 30.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(score + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
