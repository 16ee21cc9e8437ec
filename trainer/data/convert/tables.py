"""The tables a conversion reads: the impressions table and the side tables joined to it by key.

A table is one or more files (globs, expanded in sorted order) of one format,
Parquet (`.parquet`, `.pq`) or CSV (`.csv`, `.csv.gz`: a header line; types
inferred by the engine). A side table is joined on a key column (LEFT JOIN:
every impression is kept; impressions whose key the table lacks get missing
values). Its columns may be prefixed (`stat_` + the table's own name) and
limited to a list, which is how a column found in two tables is told apart.
"""
import os
from collections.abc import Sequence
from dataclasses import dataclass

from trainer.errors import ConfigError, DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")


@dataclass(frozen=True)
class Table:
    """The impressions table: one row per example."""

    globs: tuple[str, ...]

    @property
    def label(self) -> str:
        """How messages name the table: its glob(s)."""
        return " ".join(self.globs)


@dataclass(frozen=True)
class SideTable:
    """A table joined to the impressions (or to an earlier side table) on `key`.

    Args:
      globs: its files.
      key: the join column, named so in this table and in the impressions (or an earlier side table).
      prefix: put before each of its column names (not the key's): `stat_` makes `show_cnt` `stat_show_cnt`.
      columns: only these of its columns (its own names, before the prefix); None: every column.
    """

    globs: tuple[str, ...]
    key: str
    prefix: str = ""
    columns: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return " ".join(self.globs) + f" (joined on {self.key}" + (f", prefix {self.prefix}" if self.prefix else "") \
            + ")"

    @classmethod
    def parse(cls, text: str) -> "SideTable":
        """`GLOB:KEY[:PREFIX[:COLUMN,COLUMN...]]` from the command line."""
        parts = text.split(":")
        if not 2 <= len(parts) <= 4 or not parts[0] or not parts[1]:
            raise ConfigError.single(f"--join {text}", "", "expected GLOB:KEY[:PREFIX[:COLUMN,COLUMN...]], e.g. "
                                     "users.parquet:user_id or items.parquet:video_id:stat_")
        prefix = parts[2] if len(parts) > 2 else ""
        columns = tuple(c.strip() for c in parts[3].split(",") if c.strip()) if len(parts) > 3 else None
        return cls((parts[0],), parts[1], prefix, columns or None)


def file_format(path: str) -> str:
    """"parquet" or "csv", from the file name; DataError for anything else."""
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    raise DataError(f"{path}: not a table prerank reads; expected a Parquet file ({', '.join(PARQUET_SUFFIXES)}) "
                    f"or a CSV file with a header line ({', '.join(CSV_SUFFIXES)})")


def table_format(files: Sequence[str], label: str) -> str:
    """The one format of a table's files."""
    formats = {file_format(f) for f in files}
    if len(formats) > 1:
        raise DataError(f"{label}: mixes Parquet and CSV files; a table is one format")
    return formats.pop()


def scan_sql(files: Sequence[str], fmt: str) -> str:
    """The engine's scan of a table's files (sorted paths, so that row order is reproducible)."""
    paths = "[" + ", ".join("'" + os.path.abspath(f).replace("'", "''") + "'" for f in files) + "]"
    if fmt == "parquet":
        return f"read_parquet({paths})"
    return f"read_csv({paths}, header = true, auto_detect = true)"
