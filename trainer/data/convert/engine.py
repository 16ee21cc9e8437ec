"""The embedded engine of conversions: DuckDB, with an explicit memory limit, spill directory and thread count.

DuckDB runs the joins, the derived columns, the histories (window functions
and an ASOF join) and the sort by partition and table order out of core: past
`memory_limit` its hash tables, sorts and windows spill to `temp_dir`, so a
table larger than memory converts. It reads Parquet and CSV itself and hands
the result over as Arrow record batches, which prerank's writers stream into
files. (Polars was the other candidate; its streaming engine falls back to
its in-memory engine, without a word, for operations it does not stream
natively (its tracking issue pola-rs/polars#20947), so whether the
histories' window functions and as-of join stay out of core would depend on
its version. DuckDB spills them, and its SQL has both.)
"""
import os
import shutil
import threading
from dataclasses import dataclass

import duckdb

from trainer.errors import DataError

DEFAULT_MEMORY_LIMIT = "2GB"
MEMORY_SAMPLE_SECONDS = 0.05  # how often EngineMonitor reads the engine's memory


@dataclass(frozen=True)
class EngineSettings:
    """The engine's resources.

    Args:
      memory_limit: DuckDB's memory limit ("2GB", "512MB"); past it, joins, sorts and windows spill to temp_dir.
      temp_dir: the spill directory (created, and removed when the conversion ends); None: beside the output.
      threads: worker threads; None: one per core.
    """

    memory_limit: str = DEFAULT_MEMORY_LIMIT
    temp_dir: str | None = None
    threads: int | None = None


def connect(settings: EngineSettings, temp_dir: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the settings applied (spilling into `temp_dir`)."""
    os.makedirs(temp_dir, exist_ok=True)
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET memory_limit = '{_setting(settings.memory_limit)}'")
        con.execute(f"SET temp_directory = '{temp_dir.replace(chr(39), chr(39) * 2)}'")
        con.execute(f"SET threads = {int(settings.threads or os.cpu_count() or 1)}")
        con.execute("SET preserve_insertion_order = true")  # row_number() OVER () numbers rows in table order
        con.execute("SET enable_progress_bar = false")
    except duckdb.Error as exc:
        con.close()
        raise DataError(f"engine settings refused ({exc}); memory_limit takes e.g. 2GB or 512MB") from None
    return con


def _setting(text: str) -> str:
    if not text or not all(ch.isalnum() or ch in ". " for ch in text):
        raise DataError(f"memory limit '{text}': expected e.g. 2GB or 512MB")
    return text


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class EngineMonitor:
    """Samples the engine's memory in a thread while a conversion runs: the peak of its buffer memory and of its
    spilled bytes (DuckDB's `duckdb_memory()`, read through a second cursor)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._cursor = con.cursor()
        self._stop = threading.Event()
        self.peak_memory = 0
        self.peak_spilled = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        memory, spilled = self._cursor.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0), coalesce(sum(temporary_storage_bytes), 0) "
            "FROM duckdb_memory()").fetchall()[0]
        self.peak_memory = max(self.peak_memory, int(memory))
        self.peak_spilled = max(self.peak_spilled, int(spilled))

    def _run(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_SECONDS):
            try:
                self._sample()
            except duckdb.Error:
                return

    def __enter__(self) -> "EngineMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._cursor.close()
