"""Writing columnar data as tf.Example TFRecord, CSV or Parquet files the pipeline reads.

Columns are typed once: `int` (int64_list; Parquet int64), `float` (float_list;
Parquet double), `str` (bytes_list; Parquet string), or lists of those
(Parquet list<int64>, list<float>, list<string>). A missing value (None) is
written as an absent feature (TFRecord), an empty cell (CSV) or a null
(Parquet): the spec decides whether a default applies or the record is an
error. Parquet files are written in row groups of `PARQUET_ROW_GROUP_ROWS`
rows (the unit the pipeline shards and reads), with page checksums, so that
a damaged page is found when read.
"""
import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from tensorflow.core.example import example_pb2

from trainer.data.records import tfrecord_compression
from trainer.files import atomic_path

COLUMN_TYPES = ("int", "float", "str", "int_list", "float_list", "str_list")
PARQUET_ROW_GROUP_ROWS = 50_000  # rows per Parquet row group
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "int_list": pa.list_(pa.int64()),
                "float_list": pa.list_(pa.float32()), "str_list": pa.list_(pa.string())}


@dataclass(frozen=True)
class Column:
    """A named column of values, one per row (None = missing)."""

    name: str
    type: str  # one of COLUMN_TYPES
    values: Sequence[Any]


_LIST_FIELD = {"int": "int64_list", "float": "float_list", "str": "bytes_list"}


def serialize_rows(columns: Sequence[Column], rows: range) -> list[bytes]:
    """tf.Example bytes for the given row indexes (filled in place: ~3x faster than nested constructors)."""
    plan = [(c.name, _LIST_FIELD[c.type.removesuffix("_list")], c.type.endswith("_list"), c.type.startswith("str"),
             c.values) for c in columns]
    out = []
    for i in rows:
        example = example_pb2.Example()
        fmap = example.features.feature
        for name, field, is_list, is_str, values in plan:
            v = values[i]
            if v is None:
                continue
            target = getattr(fmap[name], field).value
            if is_list:
                target.extend([x.encode() for x in v] if is_str else v)
            else:
                target.append(v.encode() if is_str else v)
        out.append(example.SerializeToString())
    return out


def write_tfrecord(path: str, columns: Sequence[Column], rows: range, compression: str = "GZIP") -> int:
    """Write rows to one TFRecord file atomically (temp file, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type=tfrecord_compression(compression))
    with atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(tmp, options) as writer:
            for record in serialize_rows(columns, rows):
                writer.write(record)
    return len(rows)


def _csv_cell(col_type: str, value: Any, list_delimiter: str) -> str:
    if value is None:
        return ""
    if col_type.endswith("_list"):
        return list_delimiter.join(_csv_scalar(v) for v in value)
    return _csv_scalar(value)


def _csv_scalar(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def write_csv(path: str, columns: Sequence[Column], rows: range, list_delimiter: str = "|") -> int:
    """Write rows to one CSV file with a header line, atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([c.name for c in columns])
        for i in rows:
            writer.writerow([_csv_cell(c.type, c.values[i], list_delimiter) for c in columns])
    return len(rows)


def write_parquet(path: str, columns: Sequence[Column], rows: range,
                  row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> int:
    """Write rows to one Parquet file atomically, in row groups of `row_group_rows` rows."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    every = [c.values if rows == range(len(c.values)) else [c.values[i] for i in rows] for c in columns]
    table = pa.table({c.name: pa.array(values, _ARROW_TYPES[c.type]) for c, values in zip(columns, every)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows, write_page_checksum=True)
    return len(rows)


def shard_ranges(n_rows: int, n_shards: int) -> list[range]:
    """Split row indexes into `n_shards` contiguous, nearly equal ranges."""
    n_shards = max(1, min(n_shards, n_rows)) if n_rows else 1
    bounds = [n_rows * k // n_shards for k in range(n_shards + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def write_shards(out_dir: str, columns: Sequence[Column], rows: Sequence[int] | range, n_shards: int,
                 fmt: str = "tfrecord", compression: str = "GZIP", list_delimiter: str = "|",
                 row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> list[str]:
    """Write `rows` as `part-XXXXX` files in `out_dir`; return the paths."""
    rows = list(rows)
    paths = []
    for k, chunk in enumerate(shard_ranges(len(rows), n_shards)):
        idx = rows[chunk.start:chunk.stop]
        sub = [Column(c.name, c.type, [c.values[i] for i in idx]) for c in columns]
        paths.append(write_shard(out_dir, k, sub, range(len(idx)), fmt, compression, list_delimiter, row_group_rows))
    return paths


def shard_path(out_dir: str, k: int, fmt: str, compression: str) -> str:
    """The path of shard `k`: `part-XXXXX.tfrecord[.gz]`, `part-XXXXX.csv` or `part-XXXXX.parquet`."""
    if fmt in ("csv", "parquet"):
        return os.path.join(out_dir, f"part-{k:05d}.{fmt}")
    return os.path.join(out_dir, f"part-{k:05d}" + (".tfrecord.gz" if compression == "GZIP" else ".tfrecord"))


def write_shard(out_dir: str, k: int, columns: Sequence[Column], rows: range, fmt: str = "tfrecord",
                compression: str = "GZIP", list_delimiter: str = "|",
                row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> str:
    """Write `rows` as shard `k` of `out_dir` (`compression` applies to TFRecord only: CSV is written
    uncompressed, Parquet compresses inside the file); its path."""
    path = shard_path(out_dir, k, fmt, compression)
    if fmt == "tfrecord":
        write_tfrecord(path, columns, rows, compression)
    elif fmt == "parquet":
        write_parquet(path, columns, rows, row_group_rows)
    else:
        write_csv(path, columns, rows, list_delimiter)
    return path
