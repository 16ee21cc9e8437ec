"""convert: a team's raw tables -> `OUT/<column>=<value>/part-XXXXX.<format>`, all or nothing.

1. The plan (`trainer.data.convert.plan`) finds every column the spec reads
   (plus `keep` columns) in the tables, derives and histories, and checks its
   type, before anything is written.
2. Each side table is checked for duplicated keys (a duplicate would
   multiply impressions), and the impressions are counted per partition
   value (which must be a safe directory name, never missing).
3. The engine streams the joined rows, ordered by partition value and then
   by the impressions table's own order, as Arrow batches; each partition is
   split into `files_per_partition` files of nearly equal size (or one file
   per `rows_per_file` rows) and written batch by batch.
4. Everything is written into a temporary sibling of OUT, renamed to OUT in
   one step when complete (`trainer.files`): a killed or failed conversion
   never leaves a half-written OUT, and the next conversion removes what it
   left behind.

The same tables and arguments always give the same files, byte for byte.
"""
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from trainer.data.convert.engine import EngineMonitor, EngineSettings, connect, remove_dir
from trainer.data.convert.expressions import Derive, quote_identifier
from trainer.data.convert.history import History
from trainer.data.convert.plan import IMPRESSIONS, PARTITION, Plan, build_plan
from trainer.data.convert.tables import SideTable, Table
from trainer.data.writers import PART_FORMATS, PartWriter, open_part, shard_ranges
from trainer.errors import ConfigError, DataError
from trainer.files import publish_directory, remove_stale_temporaries, temporary_for
from trainer.spec.types import COMPRESSIONS, Spec

DEFAULT_ROWS_PER_FILE = 1_000_000
BATCH_ROWS = 65_536  # rows per Arrow batch from the engine
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*$")


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote."""

    out_dir: str
    rows_per_partition: dict[str, int]  # "date=20220425" -> rows, in partition order
    files: list[str]
    columns: list[str]
    seconds: float
    engine_peak_bytes: int  # the engine's largest memory use seen (sampled)
    engine_spilled_bytes: int  # the most it had spilled to its temp directory at once

    @property
    def rows(self) -> int:
        return sum(self.rows_per_partition.values())


def convert(spec: Spec | None, table: Table, out_dir: str, *, partition_by: str,
            joins: Sequence[SideTable] = (), derives: Sequence[Derive] = (), histories: Sequence[History] = (),
            user: str | None = None, time_column: str | None = None, keep: Sequence[str] = (),
            fmt: str = "parquet", compression: str = "GZIP", list_delimiter: str | None = None,
            files_per_partition: int | None = None, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
            max_rows: int | None = None, from_end: bool = False, engine: EngineSettings = EngineSettings(),
            log: Callable[[str], None] = lambda _: None) -> ConvertResult:
    """Convert `table` (joined with `joins`, with `derives` and `histories`) into partitions of `out_dir`.

    Args:
      spec: the feature spec whose columns are written and checked; None: only the `keep` columns.
      table: the impressions table (one row per example).
      out_dir: the output folder; must not exist, or be empty. Written whole or not at all.
      partition_by: the column whose values name the partitions (`OUT/<column>=<value>/`); from the impressions
        table or derived from its columns.
      joins: side tables, joined by key in order (LEFT JOIN: no impression is dropped).
      derives: derived columns (`trainer.data.convert.expressions`), computed in order.
      histories: behaviour sequences from the impressions log (`trainer.data.convert.history`).
      user, time_column: the impressions' user and time columns (needed by histories).
      keep: columns written besides the spec's (with their own types).
      fmt: "parquet" (default), "tfrecord" (tf.Example) or "csv".
      compression: TFRecord compression, "GZIP" or "none" (Parquet is Snappy-compressed, CSV plain).
      list_delimiter: CSV: joins list values (default: the spec's data.list_delimiter, else "|").
      files_per_partition: files per partition, of nearly equal size; None: one per `rows_per_file` rows.
      rows_per_file: see files_per_partition.
      max_rows: only the first (`from_end`: the last) that many impressions, in table order.
      engine: the engine's memory limit, spill directory and threads.
      log: called with progress lines.
    """
    _check_arguments(fmt, compression, files_per_partition, rows_per_file, max_rows)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConfigError.single(f"--out {out_dir}", "", "exists and is not an empty folder; conversions are "
                                 "published whole into a new folder: remove it or choose another")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent)
    temp = temporary_for(out_dir)
    spill = engine.temp_dir or temp + ".spill"
    delimiter = list_delimiter or (spec.data.list_delimiter if spec is not None else "|")
    start = time.perf_counter()
    con = connect(engine, spill)
    try:
        plan = build_plan(con, spec, table, joins, derives, histories, partition_by, keep, user, time_column,
                          max_rows, from_end)
        _check_keys(con, plan)
        counts = _partition_counts(con, plan, table)
        log(f"{sum(counts.values())} impressions in {len(counts)} partition(s) of {partition_by}; "
            f"{len(plan.outputs)} columns")
        os.makedirs(temp)
        with EngineMonitor(con) as monitor:
            files = _write(con, plan, counts, temp, fmt, compression, delimiter, files_per_partition,
                           rows_per_file)
        con.close()
        if os.path.exists(out_dir):
            os.rmdir(out_dir)  # the empty folder it may be
        publish_directory(temp, out_dir)
    except (duckdb.Error, pa.ArrowException) as exc:
        remove_dir(temp)
        message = _engine_message(exc)
        if isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory" in message:
            message += (f"; the engine's memory limit is {engine.memory_limit}: raise it (--memory-limit) or give "
                        "it fewer threads (--threads)")
        raise DataError(f"converting {table.label}: {message}") from None
    except BaseException:
        remove_dir(temp)
        raise
    finally:
        con.close()
        if not engine.temp_dir:
            remove_dir(spill)
    files = [os.path.join(out_dir, os.path.relpath(f, temp)) for f in files]
    return ConvertResult(out_dir, {f"{partition_by}={v}": n for v, n in counts.items()}, files,
                         [c.name for c in plan.outputs], time.perf_counter() - start, monitor.peak_memory,
                         monitor.peak_spilled)


def _check_arguments(fmt: str, compression: str, files_per_partition: int | None, rows_per_file: int,
                     max_rows: int | None) -> None:
    def fail(option: str, message: str) -> None:
        raise ConfigError.single(option, "", message)

    if fmt not in PART_FORMATS:
        fail("--format", f"must be one of {', '.join(PART_FORMATS)}, got {fmt!r}")
    if compression not in COMPRESSIONS:
        fail("--compression", f"must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if files_per_partition is not None and files_per_partition < 1:
        fail("--files-per-partition", f"must be at least 1, got {files_per_partition}")
    if rows_per_file < 1:
        fail("--rows-per-file", f"must be at least 1, got {rows_per_file}")
    if max_rows is not None and max_rows < 1:
        fail("--max-rows", f"must be at least 1, got {max_rows}")


def _engine_message(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_keys(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Refuse a side table holding a key twice: the join would multiply the impressions."""
    for join, _, scan in plan.side_tables:
        key = quote_identifier(join.key)
        found = con.execute(f"SELECT {key}, count(*) AS n FROM {scan} WHERE {key} IS NOT NULL GROUP BY {key} "
                            f"HAVING count(*) > 1 ORDER BY n DESC, {key} LIMIT 1").fetchall()
        if found:
            value, n = found[0]
            raise DataError(f"{join.label}: key {join.key}={value!r} is in {n} rows; a side table holds one row "
                            "per key (a duplicate would multiply the impressions that join it)")


def _partition_counts(con: duckdb.DuckDBPyConnection, plan: Plan, table: Table) -> dict[str, int]:
    """Impressions per partition value (as a directory name), in partition order."""
    rows = con.execute(f"SELECT {plan.partition.sql} AS p, count(*) FROM {plan.impressions_sql} AS {IMPRESSIONS} "
                       "GROUP BY p ORDER BY p NULLS LAST").fetchall()
    if not rows:
        raise DataError(f"{table.label}: no impressions to convert")
    if rows[-1][0] is None:
        raise DataError(f"{table.label}: {rows[-1][1]} impression(s) have no value in the partition column "
                        f"'{plan.partition_name}' ({plan.partition.origin})")
    if plan.history_check:
        missing = con.execute(plan.history_check).fetchall()[0][0]
        if missing:
            raise DataError(f"{table.label}: {missing} impression(s) have no user or no time; histories place "
                            "each impression by both")
    counts = {}
    for value, n in rows:
        name = str(value)
        if not _SAFE_VALUE.match(name):
            raise DataError(f"{table.label}: partition value {value!r} of '{plan.partition_name}' is not a safe "
                            "folder name (letters, digits, _ . + -)")
        counts[name] = n
    return counts


class _Partition:
    """The files of one partition, filled in order up to their planned sizes."""

    def __init__(self, directory: str, rows: int, n_files: int, open_file: Callable[[str, int], PartWriter]):
        self.directory, self.open_file = directory, open_file
        self.bounds = [r.stop for r in shard_ranges(rows, n_files)]
        self.written, self.index, self.writer = 0, 0, None
        self.paths: list[str] = []

    def write(self, batch: pa.RecordBatch) -> None:
        offset = 0
        while offset < batch.num_rows:
            if self.writer is None:
                self.writer = self.open_file(self.directory, self.index)
                self.paths.append(self.writer.path)
            take = min(batch.num_rows - offset, self.bounds[self.index] - self.written)
            self.writer.write(batch.slice(offset, take))
            offset += take
            self.written += take
            if self.written == self.bounds[self.index]:
                self.writer.close()
                self.writer, self.index = None, self.index + 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write(con: duckdb.DuckDBPyConnection, plan: Plan, counts: dict[str, int], temp: str, fmt: str,
           compression: str, delimiter: str, files_per_partition: int | None, rows_per_file: int) -> list[str]:
    names = [c.name for c in plan.outputs]
    reader = con.sql(plan.query()).to_arrow_reader(BATCH_ROWS)
    schema = pa.schema([f for f in reader.schema if f.name != PARTITION])

    def open_file(directory: str, k: int) -> PartWriter:
        return open_part(directory, k, fmt, schema, compression, delimiter)

    files: list[str] = []
    current: _Partition | None = None
    current_value = None
    written: dict[str, int] = {}
    for batch in reader:
        values = batch.column(PARTITION)
        data = pa.record_batch([batch.column(n) for n in names], schema=schema)
        keys = np.asarray(values.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
        starts = [0] + (np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist() + [len(keys)]
        for a, b in zip(starts, starts[1:]):
            value = keys[a]
            if value != current_value:
                if current is not None:
                    current.close()
                    files += current.paths
                n = counts[value]
                n_files = files_per_partition or max(1, math.ceil(n / rows_per_file))
                current = _Partition(os.path.join(temp, f"{plan.partition_name}={value}"), n, n_files, open_file)
                current_value = value
            current.write(data.slice(a, b - a))
            written[value] = current.written
    if current is not None:
        current.close()
        files += current.paths
    if written != counts:
        raise DataError(f"the engine returned {sum(written.values())} rows for {sum(counts.values())} impressions "
                        "(a join multiplied or dropped rows)")
    return files
