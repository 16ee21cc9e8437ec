"""Check every input file against the spec before reading, and learn stored column types.

TFRecord: the first record of each file must carry every column the spec
needs without a default; a column's stored list type (int64 / float / bytes)
must suit its use (a numeric feature may be stored as int64, an id may not be
stored as float). CSV: every file's header must hold the needed columns, and
all headers must agree. Failures name the file, the column and its users.
"""
import gzip
from dataclasses import dataclass, field

import tensorflow as tf
from tensorflow.core.example import example_pb2

from trainer.columns import raw_columns
from trainer.errors import DataError
from trainer.spec import Spec

_KIND_DTYPE = {"int64_list": "int64", "float_list": "float32", "bytes_list": "string"}


@dataclass(frozen=True)
class ParsePlan:
    """How to parse the files: format, and each needed column's stored dtype (and CSV position)."""

    format: str
    compression: str
    stored: dict[str, str]
    csv_index: dict[str, int] = field(default_factory=dict)


def probe_files(spec: Spec, files: list[str], fmt: str, compression: str) -> ParsePlan:
    if fmt == "csv":
        return _probe_csv(spec, files, compression)
    if fmt != "tfrecord":
        raise DataError(f"unknown data format '{fmt}'; expected tfrecord or csv")
    return _probe_tfrecord(spec, files, compression)


def _first_record(path: str, compression: str) -> bytes | None:
    dataset = tf.data.TFRecordDataset(path, compression_type="" if compression == "none" else compression)
    try:
        for record in dataset.take(1):
            return record.numpy()
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        return None  # unreadable first record: reported by the corruption scan / iteration
    return None  # empty file


def _probe_tfrecord(spec: Spec, files: list[str], compression: str) -> ParsePlan:
    columns = raw_columns(spec)
    stored: dict[str, str] = {}
    stored_in: dict[str, str] = {}
    for path in files:
        record = _first_record(path, compression)
        if record is None:
            continue
        example = example_pb2.Example()
        try:
            example.ParseFromString(record)
        except Exception:  # noqa: BLE001 (protobuf raises DecodeError subclasses)
            raise DataError(f"{path}: record 0 is not a tf.Example (is this a TFRecord of tf.Example "
                            f"protos? expected format: tfrecord, compression: {compression})") from None
        fmap = example.features.feature
        for name, col in columns.items():
            if name not in fmap:
                if col.default is None:
                    raise DataError(f"{path}: column '{name}' (needed by {', '.join(col.users)}) is missing "
                                    "from the first record; every record must carry it, or the spec must "
                                    "declare a default")
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
            raise DataError(f"{path}: column '{n}' (needed by {', '.join(columns[n].users)}) is missing "
                            f"from the CSV header" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if this != header:
            raise DataError(f"{path}: CSV header differs from {files[0]}'s; every file must have the same columns "
                            "in the same order")
    stored = {n: ("string" if (not c.is_input and c.dtype == "string") else c.dtype) for n, c in columns.items()}
    return ParsePlan("csv", compression, stored, {n: header.index(n) for n in columns})
