"""Finding corrupt records: to skip and count them (`--skip-corrupt`), or to name them in an error.

A TFRecord whose framing or checksum breaks cannot be read past that point:
the readable prefix is kept and the rest of the file is reported as skipped.
A CSV line is corrupt when its field count is wrong or a number in it does not
parse; such lines are skipped one by one. A Parquet row group that cannot be
read (a damaged page, a failed page checksum, a value that does not convert)
is skipped whole, and a Parquet file whose footer cannot be read is skipped
whole (counted as 1, its rows being unknown). Missing values are not
corruption: they take the spec's default or fail.

A scan's result is kept per file (with its size and modification time, the
spec and the parse plan): the reads of one job (fitting the preprocessing,
each epoch's pipeline, the validation) scan each file once. Commands report
what they skipped with `report`, one line per file, and record the
`Skipped.as_dict` entries in their JSON output.
"""
import csv
import gzip
import io
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf
from tensorflow.core.example import example_pb2

from trainer.data import parquet
from trainer.data.probe import ParsePlan
from trainer.data.records import RECORD_BITS, clean_message, tfrecord_compression
from trainer.errors import DataError
from trainer.spec.columns import RawColumn, raw_columns
from trainer.spec.types import Spec

_SCAN_BATCH = 4096


@dataclass(frozen=True)
class Skipped:
    """Corrupt data found in one file."""

    file: str
    records: int  # records (CSV lines, Parquet rows) skipped; 1 for a TFRecord's unreadable tail or a Parquet
    # file whose footer cannot be read
    readable: int  # records that could be read (-1: not counted, CSV)
    detail: str
    lines: tuple[int, ...] = ()  # CSV: the skipped line numbers
    row_groups: tuple[int, ...] = ()  # Parquet: the skipped row groups (none: the whole file)

    def as_dict(self) -> dict:
        """What a command records: file, records, detail, and for a TFRecord the records read before the
        corruption (`readable`)."""
        entry = {"file": self.file, "records": self.records, "detail": self.detail}
        if self.readable >= 0:
            entry["readable"] = self.readable
        return entry

    def __str__(self) -> str:
        return describe(self.as_dict())


def describe(entry: dict) -> str:
    """The line a command prints for one `Skipped.as_dict` entry."""
    return f"skipped {entry['records']} corrupt record(s) in {entry['file']}: {entry['detail']}"


def report(entries: list[dict], log: Callable[[str], None], prefix: str = "") -> list[dict]:
    """Log one line per `Skipped.as_dict` entry (after `prefix`, e.g. "validation: "); the entries."""
    for entry in entries:
        log(prefix + describe(entry))
    return entries


def _gzip_complete(path: str) -> bool:
    """Whether a GZIP file's stream reaches its end-of-stream marker. TensorFlow's GZIP reader takes a file cut
    where its inflated output ends on a record boundary for a whole, shorter file (seen on about 1 cut in 70),
    so a scan checks the stream itself."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with tf.io.gfile.GFile(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            while chunk and not inflate.eof:
                inflate.decompress(chunk, 1 << 20)
                chunk = inflate.unconsumed_tail
            if inflate.eof:
                return True
    return inflate.eof


def _tfrecord_readable(path: str, compression: str) -> tuple[int, str | None]:
    """Records readable before the first corruption, and the error (None if the file is sound)."""
    comp = tfrecord_compression(compression)
    count = 0
    try:
        for batch in tf.data.TFRecordDataset(path, compression_type=comp).batch(_SCAN_BATCH):
            count += int(batch.shape[0])
        if compression == "GZIP" and not _gzip_complete(path):
            return count, "the GZIP stream ends before its end-of-stream marker (the file was cut short)"
        return count, None
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
        error = clean_message(exc.message)
    # Find the exact point inside the failing window, one record at a time.
    try:
        for _ in tf.data.TFRecordDataset(path, compression_type=comp).skip(count):
            count += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        pass
    return count, error


def _csv_line_problem(row: list[str], header: list[str], plan: ParsePlan, spec: Spec,
                      columns: dict[str, RawColumn]) -> str | None:
    if len(row) != len(header):
        return f"expected {len(header)} fields, found {len(row)}"
    for name, col in columns.items():
        cell = row[plan.csv_index[name]]
        if cell == "":
            continue
        stored = plan.stored[name]
        parts = cell.split(spec.data.list_delimiter) if col.shape != "scalar" else [cell]
        for part in parts:
            if stored == "string" or part == "":
                continue
            try:
                int(part) if stored == "int64" else float(part)
            except ValueError:
                return f"column '{name}' (read by {col.read_by}): expected " \
                       f"{'an integer' if stored == 'int64' else 'a number'}, got {part!r}"
    return None


def _csv_rows(path: str, compression: str):
    opener = gzip.open if compression == "GZIP" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        text = fh.read()
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    for line_number, row in enumerate(reader, start=2):
        yield header, line_number, row


def _scan_file(spec: Spec, plan: ParsePlan, path: str) -> Skipped | None:
    if plan.format == "parquet":
        found = parquet.scan_file(path, raw_columns(spec), plan.stored)
        return None if found is None else Skipped(path, found.rows, found.readable, found.detail,
                                                  row_groups=found.row_groups)
    if plan.format == "tfrecord":
        readable, error = _tfrecord_readable(path, plan.compression)
        if error is None:
            return None
        return Skipped(path, 1, readable, f"corrupt record after {readable} readable record(s); "
                                          f"the rest of the file is skipped ({error})")
    columns = raw_columns(spec)  # once per file, not per line
    bad = [(n, p) for header, n, row in _csv_rows(path, plan.compression)
           if (p := _csv_line_problem(row, header, plan, spec, columns))]
    if not bad:
        return None
    return Skipped(path, len(bad), -1, f"{len(bad)} corrupt line(s) skipped, first at line "
                                       f"{bad[0][0]}: {bad[0][1]}", tuple(n for n, _ in bad))


_SCANNED: dict[tuple, Skipped | None] = {}  # (file, size, mtime, spec, plan) -> what its scan found
_SCANNED_MAX = 100_000  # entries kept (a process reading more files forgets, and rescans, the oldest)


def _file_version(path: str) -> tuple:
    """What changes when a file is rewritten: a local file's inode, size and nanosecond times (TensorFlow's
    gfile.stat rounds local modification times to the second, so a file damaged in place within that second
    would look unchanged); for other file systems, gfile's size and modification time."""
    if "://" not in path:
        stat = os.stat(path)
        return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
    stat = tf.io.gfile.stat(path)
    return stat.length, stat.mtime_nsec


def _scan_key(spec: Spec, plan: ParsePlan, path: str) -> tuple:
    return (path, _file_version(path), spec.fingerprint, plan.format, plan.compression,
            tuple(sorted(plan.stored.items())), tuple(sorted(plan.csv_index.items())), plan.csv_fields)


def _scan_file_once(spec: Spec, plan: ParsePlan, path: str) -> Skipped | None:
    """`_scan_file`, reading a file again only once it changed (or with another spec or plan)."""
    key = _scan_key(spec, plan, path)
    if key not in _SCANNED:
        if len(_SCANNED) >= _SCANNED_MAX:
            del _SCANNED[next(iter(_SCANNED))]
        _SCANNED[key] = _scan_file(spec, plan, path)
    return _SCANNED[key]


def scan(spec: Spec, plan: ParsePlan, files: list[str]) -> list[Skipped]:
    """Every corrupt spot in `files` (reads each file once per process, until it changes)."""
    return [found for path in files if (found := _scan_file_once(spec, plan, path)) is not None]


def keep_predicate(skipped: list[Skipped], files: list[str]):
    """A vectorised filter on record ids (see trainer.data.records.RECORD_BITS) dropping the skipped CSV
    lines, or None when there are none."""
    index = {path: i for i, path in enumerate(files)}
    keys = [(index[s.file] << RECORD_BITS) + n for s in skipped if s.file in index for n in s.lines]
    if not keys:
        return None
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.int64), tf.ones([len(keys)], tf.int64)),
        default_value=0)

    def keep(ids: tf.Tensor) -> tf.Tensor:
        return tf.equal(table.lookup(ids), 0)

    return keep


def record_limits(skipped: list[Skipped], files: list[str]):
    """A table file -> readable record count for corrupt TFRecords (-1 = read all), or None."""
    limits = {s.file: s.readable for s in skipped if s.readable >= 0}
    if not limits:
        return None
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(limits)), tf.constant(list(limits.values()), tf.int64)),
        default_value=-1)


def _unparsable_record(path: str, compression: str) -> int | None:
    """Index of the first record of a TFRecord file that is not a tf.Example, or None."""
    comp = tfrecord_compression(compression)
    try:
        for i, record in enumerate(tf.data.TFRecordDataset(path, compression_type=comp).as_numpy_iterator()):
            try:
                example_pb2.Example.FromString(record)
            except Exception:  # noqa: BLE001 (protobuf raises DecodeError subclasses)
                return i
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
        return None
    return None


def describe_corruption(spec: Spec, plan: ParsePlan, files: list[str], exc: tf.errors.OpError) -> DataError:
    """A DataError naming the first corrupt file (and line or record), found by scanning the files in order."""
    first = clean_message(exc.message) if exc.message else type(exc).__name__
    for path in files:
        found = _scan_file_once(spec, plan, path)
        if found is not None:
            detail = found.detail.replace(" skipped", "").replace("; the rest of the file is", "")
            return DataError(f"{found.file}: {detail}. Fix the file, or rerun with --skip-corrupt to skip and "
                             "count corrupt records")
        if plan.format == "tfrecord" and "parse example" in first:
            index = _unparsable_record(path, plan.compression)
            if index is not None:
                return DataError(f"{path}#{index}: record is not a tf.Example ({first[:200]})")
    return DataError(f"reading {len(files)} file(s) under {os.path.commonpath(files)} failed: {first}")
