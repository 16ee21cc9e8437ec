"""Check every input file against the spec before reading, and learn stored column types.

TFRecord: the first record of each file must carry every column the spec
needs without a default; a column's stored list type (int64 / float / bytes)
must suit its use (a numeric feature may be stored as int64, an id may not be
stored as float). CSV: every file's header must hold the needed columns, and
all headers must agree. Parquet: every file's schema must hold the needed
columns with usable types, the same in every file (`trainer.data.parquet`).
Failures name the file, the column and its users.
"""
import gzip
from dataclasses import dataclass, field

import tensorflow as tf
from tensorflow.core.example import example_pb2

from trainer.data import parquet
from trainer.data.records import tfrecord_compression
from trainer.errors import DataError
from trainer.spec.columns import raw_columns
from trainer.spec.types import Spec

_KIND_DTYPE = {"int64_list": "int64", "float_list": "float32", "bytes_list": "string"}


@dataclass(frozen=True)
class ParsePlan:
    """How to parse the files: format, and each needed column's stored dtype (and CSV position)."""

    format: str
    compression: str
    stored: dict[str, str]
    csv_index: dict[str, int] = field(default_factory=dict)
    csv_fields: int = 0  # CSV: fields per line (the header's length); 0 = unknown
    row_groups: tuple[tuple[int, ...], ...] = ()  # Parquet: per file, the rows of each row group


def probe_files(spec: Spec, files: list[str], fmt: str, compression: str, skip_corrupt: bool = False) -> ParsePlan:
    """The parse plan of `files`; fails naming the first file that does not suit the spec.

    Parquet files compress inside themselves: `compression` is ignored for them. With `skip_corrupt`, a Parquet
    file whose footer cannot be read is left for the corruption scan to skip and count."""
    if fmt == "csv":
        return _probe_csv(spec, files, compression)
    if fmt == "parquet":
        stored, row_groups = parquet.probe(raw_columns(spec), files, skip_corrupt)
        return ParsePlan("parquet", "none", stored, row_groups=row_groups)
    if fmt != "tfrecord":
        raise DataError(f"unknown data format '{fmt}'; expected tfrecord, csv or parquet")
    return _probe_tfrecord(spec, files, compression)


_TYPE_SCAN = 256  # records read per file to learn the type of columns absent from first records


def _first_records(path: str, compression: str, n: int = 1) -> list[bytes]:
    dataset = tf.data.TFRecordDataset(path, compression_type=tfrecord_compression(compression))
    records = []
    try:
        for record in dataset.take(n):
            records.append(record.numpy())
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        pass  # unreadable record: reported by the corruption scan / iteration
    return records


def _features(path: str, index: int, record: bytes, compression: str):
    example = example_pb2.Example()
    try:
        example.ParseFromString(record)
    except Exception:  # noqa: BLE001 (protobuf raises DecodeError subclasses)
        raise DataError(f"{path}: record {index} is not a tf.Example (is this a TFRecord of tf.Example "
                        f"protos? expected format: tfrecord, compression: {compression})") from None
    return example.features.feature


def _probe_tfrecord(spec: Spec, files: list[str], compression: str) -> ParsePlan:
    columns = raw_columns(spec)
    stored: dict[str, str] = {}
    stored_in: dict[str, str] = {}

    def learn(path: str, fmap) -> None:
        for name, col in columns.items():
            if name not in fmap:
                continue
            kind = fmap[name].WhichOneof("kind")
            if kind is None:  # present but empty: no type information
                continue
            dtype = _KIND_DTYPE[kind]
            _check_compatible(path, name, col.dtype, dtype, col.users, col.is_input)
            if name in stored and stored[name] != dtype:
                raise DataError(f"{path}: column '{name}' is stored as {dtype}, but as {stored[name]} in "
                                f"{stored_in[name]}; every file must store a column with one type")
            stored.setdefault(name, dtype)
            stored_in.setdefault(name, path)

    for path in files:
        records = _first_records(path, compression)
        if not records:
            continue
        fmap = _features(path, 0, records[0], compression)
        for name, col in columns.items():
            if name not in fmap and col.default is None:
                raise DataError(f"{path}: column '{name}' (needed by {col.read_by}) is missing "
                                "from the first record; every record must carry it, or the spec must "
                                "declare a default")
        learn(path, fmap)
    # Columns whose stored type may differ from the parsed one (numbers stored as int64, group-only
    # columns) but absent or empty in every first record: look further into the files.
    unsure = lambda: [n for n, c in columns.items() if n not in stored  # noqa: E731
                      and (c.dtype == "float32" or not c.is_input)]
    for path in files:
        if not unsure():
            break
        for i, record in enumerate(_first_records(path, compression, _TYPE_SCAN)[1:], start=1):
            learn(path, _features(path, i, record, compression))
            if not unsure():
                break
    for name, col in columns.items():
        stored.setdefault(name, "string" if not col.is_input and col.dtype == "string" else col.dtype)
    return ParsePlan("tfrecord", compression, stored)


def _check_compatible(path: str, name: str, wanted: str, stored: str, users: tuple[str, ...],
                      is_input: bool) -> None:
    ok = (wanted == stored or (wanted == "float32" and stored == "int64")
          or (not is_input and wanted == "string"))  # group-only columns: any type, used as text
    if not ok:
        raise DataError(f"{path}: column '{name}' is stored as {stored}, but {', '.join(users)} expects "
                        f"{wanted}" + (" (or int64)" if wanted == "float32" else ""))


def _read_header(path: str, compression: str) -> list[str]:
    opener = gzip.open if compression == "GZIP" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        line = fh.readline().rstrip("\r\n")
    if not line:
        raise DataError(f"{path}: empty CSV file; expected a header line naming the columns")
    return line.split(",")


def _probe_csv(spec: Spec, files: list[str], compression: str) -> ParsePlan:
    columns = raw_columns(spec)
    header = _read_header(files[0], compression)
    for path in files:
        this = header if path == files[0] else _read_header(path, compression)
        missing = [n for n in columns if n not in this]
        if missing:
            n = missing[0]
            raise DataError(f"{path}: column '{n}' (needed by {columns[n].read_by}) is missing "
                            f"from the CSV header" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if this != header:
            raise DataError(f"{path}: CSV header differs from {files[0]}'s; every file must have the same columns "
                            "in the same order")
    stored = {n: ("string" if (not c.is_input and c.dtype == "string") else c.dtype) for n, c in columns.items()}
    return ParsePlan("csv", compression, stored, {n: header.index(n) for n in columns}, len(header))
