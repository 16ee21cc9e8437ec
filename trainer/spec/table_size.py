"""How many rows each embedding table has, and the memory it takes to train.

Rows are known from the spec for hashed, file and bucketized tables, and for
`source: data` tables with a `max_size` (an upper bound); otherwise once the
vocabulary is fitted. Training keeps three float32 copies of a table: its
weights and FTRL's two slots (accumulator and linear term).
"""
from trainer.spec.types import Spec
from trainer.spec.vocabulary_file import read_vocabulary_file

BYTES_PER_VALUE = 4  # float32
TRAINED_COPIES = 3  # the weights and FTRL's two slots
GB = 1e9


def table_rows(spec: Spec, name: str, fitted_size: int | None = None) -> int | None:
    """Rows of table `name`; `fitted_size`: ids of its fitted vocabulary (source: data). None: not known yet."""
    table = spec.tables[name]
    v = table.vocabulary
    if v.source == "bucketize":
        return len(spec.feature(table.features[0]).transforms[-1].boundaries) + 1
    if v.source == "hash":
        return v.buckets
    if v.source == "file":
        return len(read_vocabulary_file(v.path, table.dtype)) + v.oov_buckets
    size = fitted_size if fitted_size is not None else v.max_size
    return None if size is None else size + v.oov_buckets


def training_bytes(rows: int, dim: int) -> int:
    """Memory of one table in training: weights and optimizer slots."""
    return rows * dim * BYTES_PER_VALUE * TRAINED_COPIES


def oversized_tables(spec: Spec, limit_gb: float, fitted_sizes: dict[str, int] | None = None,
                     parameter_servers: int = 0) -> list[str]:
    """One message for each table whose training memory (see `training_bytes`) exceeds `limit_gb` on one machine:
    with `parameter_servers` (a parameter-server job, whose large tables are split across them), the table's
    share of each."""
    out = []
    machines = max(parameter_servers, 1)
    for name, table in spec.tables.items():
        rows = table_rows(spec, name, (fitted_sizes or {}).get(name))
        if rows is None or training_bytes(rows, table.dim) <= limit_gb * GB * machines:
            continue
        where = (f"{_gb(training_bytes(rows, table.dim) / machines)} GB on each of {parameter_servers} parameter "
                 "servers" if parameter_servers else "")
        out.append(f"table '{name}' (feature {', '.join(repr(f) for f in table.features)} of {spec.path}) has "
                   f"{rows:,} rows of dim {table.dim}: {_gb(training_bytes(rows, table.dim))} GB to train "
                   f"with FTRL's two slots{f' ({where})' if where else ''}, more than training.max_table_gb = "
                   f"{limit_gb:g}; use fewer rows (buckets, max_size) or a smaller dim, or raise "
                   "training.max_table_gb for a machine that holds it, or train on (more) parameter servers")
    return out


def _gb(size: int) -> str:
    gb = size / GB
    return f"{gb:,.1f}" if gb >= 0.1 else f"{gb:.2g}"
