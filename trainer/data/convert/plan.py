"""What a conversion writes, worked out and checked before anything is written.

Every output column (each column the spec reads, plus any `keep` column) is
found in exactly one place: a history, a derive, the impressions table or a
side table (after its prefix). A column found nowhere, found in two tables,
or stored with a type its readers cannot use is an error naming the table,
the column and the features that read it. The result is one SQL query whose
rows come out ordered by partition, then table order.
"""
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from trainer.data.convert.expressions import Derive, compile_expression, quote_identifier
from trainer.data.convert.history import (POSITION_WINDOW, History, block_keys, blocks_sql, position_sql,
                                           history_value_sql)
from trainer.data.convert.tables import SideTable, Table, scan_sql, table_format
from trainer.data.pipeline import resolve_files
from trainer.errors import ConfigError, DataError
from trainer.spec.columns import RawColumn, raw_columns
from trainer.spec.types import Spec

INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
            "UHUGEINT")
FLOATS = ("FLOAT", "DOUBLE")
STRINGS = ("VARCHAR",)
TIMES = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS")
IMPRESSIONS = "__imp"  # the impressions' alias in the query
ROW = "__row"  # the impressions' table order
PARTITION = "__partition"


def _is_decimal(kind: str) -> bool:
    return kind.startswith("DECIMAL")


def _element(kind: str) -> str | None:
    """The element type of a list (T[]) or array (T[n]) type; None for a scalar. An empty list constant ([]) has
    elements of type NULL."""
    match = re.match(r"^(.*)\[[0-9]*\]$", kind)
    return match.group(1).strip('"') if match else None


@dataclass(frozen=True)
class Provider:
    """A column of a table, as the conversion sees it."""

    table: str  # the table's label, for messages
    alias: str  # its SQL alias
    own_name: str  # the name in the table (before a prefix)
    type: str  # the engine's type

    @property
    def sql(self) -> str:
        return f"{self.alias}.{quote_identifier(self.own_name)}"

    def describe(self, name: str) -> str:
        return f"{self.table}: column '{self.own_name}'" + (f" (as {name})" if name != self.own_name else "")


@dataclass(frozen=True)
class Bound:
    """A name usable in expressions: its SQL, its type, where it comes from, and whether it needs a side table."""

    sql: str
    type: str
    origin: str  # for messages: "interactions.parquet: column 'x'" or "--derive x=..."
    impressions_only: bool


@dataclass(frozen=True)
class OutputColumn:
    """A written column: its name, its SQL (cast to the written type) and the written engine type."""

    name: str
    sql: str
    type: str
    origin: str


@dataclass
class Plan:
    """The checked conversion: the query's parts and what it writes."""

    impressions_files: list[str]
    impressions_sql: str  # the numbered impressions relation (columns of the table + __row)
    from_sql: str  # FROM ... joins, over which the output SQL is written
    outputs: list[OutputColumn]
    partition: Bound
    partition_name: str
    history_check: str | None  # SQL counting impressions without a user or time, when histories are derived
    side_tables: list[tuple[SideTable, list[str], str]] = field(default_factory=list)  # (table, files, scan)

    def query(self, where: str = "") -> str:
        """The output rows ordered by partition, then table order."""
        select = ", ".join(f"{c.sql} AS {quote_identifier(c.name)}" for c in self.outputs)
        return (f"SELECT {select}, {self.partition.sql} AS {PARTITION} FROM {self.from_sql} {where} "
                f"ORDER BY {PARTITION}, {IMPRESSIONS}.{ROW}")


class _Namespace:
    """The names of the tables' columns and of the derives, resolved one way everywhere."""

    def __init__(self, con: duckdb.DuckDBPyConnection, readers: dict[str, RawColumn]):
        self.con = con
        self.readers = readers
        self.providers: dict[str, list[Provider]] = {}
        self.derived: dict[str, Bound] = {}
        self.from_sql = ""

    def add(self, name: str, provider: Provider) -> None:
        self.providers.setdefault(name, []).append(provider)

    def read_by(self, name: str) -> str:
        col = self.readers.get(name)
        return col.read_by if col else ""

    def column(self, name: str) -> Provider | None:
        """The one table column `name`; DataError when two tables have it."""
        found = self.providers.get(name, [])
        if len(found) > 1:
            read = self.read_by(name)
            raise DataError(f"column '{name}'" + (f" (read by {read})" if read else "") + " is in "
                            + " and in ".join(p.table for p in found) + "; give the side table a prefix "
                            "(--join GLOB:KEY:PREFIX), take only some of its columns (--join GLOB:KEY:PREFIX:COLUMNS)"
                            ", or derive the column under another name")
        return found[0] if found else None

    def bound(self, name: str) -> Bound | None:
        if name in self.derived:
            return self.derived[name]
        provider = self.column(name)
        if provider is None:
            return None
        return Bound(provider.sql, provider.type, provider.describe(name), provider.alias == IMPRESSIONS)

    def names(self) -> list[str]:
        return sorted(set(self.providers) | set(self.derived))

    def type_of(self, sql: str) -> str:
        return self.con.execute(f"DESCRIBE SELECT {sql} FROM {self.from_sql} LIMIT 0").fetchall()[0][1]


def _describe(con: duckdb.DuckDBPyConnection, scan: str, label: str) -> list[tuple[str, str]]:
    try:
        return [(row[0], row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
    except duckdb.Error as exc:
        raise DataError(f"{label}: cannot be read as a table ({str(exc).splitlines()[0]})") from None


def _files(globs: Sequence[str], label: str) -> tuple[list[str], str]:
    files = resolve_files(list(globs))
    return files, table_format(files, label)


def build_plan(con: duckdb.DuckDBPyConnection, spec: Spec | None, table: Table, joins: Sequence[SideTable],
               derives: Sequence[Derive], histories: Sequence[History], partition_by: str,
               keep: Sequence[str] = (), user: str | None = None, time: str | None = None,
               max_rows: int | None = None, from_end: bool = False) -> Plan:
    """Check the conversion against the tables and the spec and return its plan; raises before anything is
    written (DataError for the tables, ConfigError for the arguments)."""
    readers = raw_columns(spec) if spec is not None else {}
    ns = _Namespace(con, readers)
    files, fmt = _files(table.globs, table.label)
    numbered = f"(SELECT *, row_number() OVER () AS {ROW} FROM {scan_sql(files, fmt)})"
    own = _describe(con, scan_sql(files, fmt), table.label)
    if any(name == ROW or name == PARTITION for name, _ in own):
        raise DataError(f"{table.label}: the column names {ROW} and {PARTITION} are prerank's own")
    if max_rows is not None:
        if from_end:
            total = con.execute(f"SELECT count(*) FROM {scan_sql(files, fmt)}").fetchall()[0][0]
            numbered = f"(SELECT * FROM {numbered} WHERE {ROW} > {max(total - max_rows, 0)})"
        else:
            numbered = f"(SELECT * FROM {numbered} WHERE {ROW} <= {int(max_rows)})"
    for name, kind in own:
        ns.add(name, Provider(table.label, IMPRESSIONS, name, kind))
    from_sql = f"{numbered} AS {IMPRESSIONS}"
    side = []
    for k, join in enumerate(joins):
        alias = f"__side{k}"
        join_files, join_fmt = _files(join.globs, join.label)
        scan = scan_sql(join_files, join_fmt)
        columns = _describe(con, scan, join.label)
        types = dict(columns)
        if join.key not in types:
            raise DataError(f"{join.label}: has no key column '{join.key}' (its columns: "
                            f"{', '.join(types)})")
        left = ns.column(join.key)
        if left is None:
            raise DataError(f"{join.label}: its key '{join.key}' is neither a column of {table.label} nor of a "
                            "side table joined before it")
        if _key_family(left.type) != _key_family(types[join.key]):
            raise DataError(f"{join.label}: key '{join.key}' is {types[join.key]} there but {left.type} in "
                            f"{left.table}; a key is an integer or a string in both")
        wanted = list(join.columns) if join.columns is not None else [c for c, _ in columns if c != join.key]
        missing = [c for c in wanted if c not in types]
        if missing:
            raise DataError(f"{join.label}: has no column '{missing[0]}' (asked for by --join; its columns: "
                            f"{', '.join(types)})")
        for c in wanted:
            if c != join.key:
                ns.add(join.prefix + c, Provider(join.label, alias, c, types[c]))
        projected = ", ".join(quote_identifier(c) for c in dict.fromkeys([join.key, *wanted]))
        from_sql += (f" LEFT JOIN (SELECT {projected} FROM {scan}) AS {alias} ON {left.sql} = "
                     f"{alias}.{quote_identifier(join.key)}")
        side.append((join, join_files, scan))
    ns.from_sql = from_sql

    for derive in derives:
        if derive.name in ns.derived:
            raise ConfigError.single(f"--derive {derive.text}", "", f"'{derive.name}' is derived twice")
        reads: set[str] = set()

        def resolve(name: str) -> str | None:
            bound = ns.bound(name)
            if bound is not None:
                reads.add(name)
            return None if bound is None else bound.sql

        read_by = ns.read_by(derive.name)
        sql, _ = compile_expression(derive, resolve, ns.names, ns.type_of, read_by)
        sql = f"({sql})"
        try:
            kind = ns.type_of(sql)
        except duckdb.Error as exc:
            where = f"--derive {derive.text}" + (f" (read by {read_by})" if read_by else "")
            raise ConfigError.single(where, "", f"the engine refuses it: {str(exc).splitlines()[0]}") from None
        ns.derived[derive.name] = Bound(sql, kind, f"--derive {derive.text}",
                                        all(ns.bound(r).impressions_only for r in reads))

    def impressions_column(name: str, role: str) -> Bound:
        bound = ns.bound(name)
        if bound is None:
            raise DataError(f"{role}: column '{name}' is in none of the tables ({table.label}"
                            + "".join(f", {j.label}" for j in joins) + ") and not derived")
        if not bound.impressions_only:
            raise DataError(f"{role}: column '{name}' comes from a side table ({bound.origin}); it must be a "
                            f"column of {table.label} or derived from its columns only")
        return bound

    partition = impressions_column(partition_by, f"--partition-by {partition_by}")
    if not (partition.type in INTEGERS or partition.type in STRINGS or partition.type == "DATE"):
        raise DataError(f"--partition-by {partition_by}: {partition.origin} is {partition.type}; a partition "
                        "column holds integers, strings or dates")

    history_columns: dict[str, tuple[str, str]] = {}
    history_check = None
    if histories:
        if not user or not time:
            raise ConfigError.single("--history", "", "histories need the user column and the time column: "
                                     "give --user COLUMN and --time COLUMN")
        user_b = impressions_column(user, f"--user {user}")
        time_b = impressions_column(time, f"--time {time}")
        if not (time_b.type in INTEGERS or time_b.type in FLOATS or time_b.type in TIMES):
            raise DataError(f"--time {time}: {time_b.origin} is {time_b.type}; expected a number or a timestamp")
        history_check = (f"SELECT count(*) FROM {numbered} AS {IMPRESSIONS} "
                         f"WHERE {user_b.sql} IS NULL OR {time_b.sql} IS NULL")
        bound_items: list[tuple[Bound, Bound | None]] = []
        for history in histories:
            where = f"--history {history.text}"
            if history.name in history_columns or history.name in ns.derived or \
                    sum(h.name == history.name for h in histories) > 1:
                raise ConfigError.single(where, "", f"'{history.name}' is derived twice")
            item = impressions_column(history.item, where)
            if _element(item.type) is not None or not (item.type in INTEGERS or item.type in STRINGS):
                raise DataError(f"{where}: {item.origin} is {item.type}; history items are integer or string ids")
            label = impressions_column(history.label, where) if history.label else None
            if label is not None and not (label.type in INTEGERS or label.type == "BOOLEAN"):
                raise DataError(f"{where}: {label.origin} is {label.type}; a history label is 0/1 or boolean")
            bound_items.append((item, label))
        columns = "".join(f", {item.sql} AS i{k}" + (f", {label.sql} AS l{k}" if label else "")
                          for k, (item, label) in enumerate(bound_items))
        events = (f"(SELECT {IMPRESSIONS}.{ROW} AS {ROW}, {user_b.sql} AS u, {time_b.sql} AS t{columns} "
                  f"FROM {numbered} AS {IMPRESSIONS})")
        positions = [f"{position_sql(f'i{k}', f'l{k}' if label else None)} AS __k{k}"
                     for k, (_, label) in enumerate(bound_items)]
        blocks = [blocks_sql(history, events, f"i{k}", f"l{k}" if label else None)
                  for k, (history, (_, label)) in enumerate(zip(histories, bound_items))]
        window = POSITION_WINDOW.format(user="u", time="t")
        from_sql += (f" LEFT JOIN (SELECT {ROW}, {', '.join(positions)} FROM {events} WHERE u IS NOT NULL AND "
                     f"t IS NOT NULL {window}) AS __positions ON {IMPRESSIONS}.{ROW} = __positions.{ROW}")
        for k, history in enumerate(histories):
            position = f"__positions.__k{k}"
            low, high = block_keys(history, position)
            for alias, key in ((f"__low{k}", low), (f"__high{k}", high)):
                from_sql += (f" LEFT JOIN ({blocks[k]}) AS {alias} ON {user_b.sql} = {alias}.__user AND "
                             f"{key} = {alias}.__block")
            element = "BIGINT" if bound_items[k][0].type in INTEGERS else "VARCHAR"
            value = history_value_sql(history, position, f"__low{k}", f"__high{k}")
            history_columns[history.name] = (f"coalesce(CAST({value} AS {element}[]), CAST([] AS {element}[]))",
                                             f"{element}[]")
        ns.from_sql = from_sql

    wanted = list(readers) + [c for c in keep if c not in readers]
    outputs = []
    for name in dict.fromkeys(wanted):
        col = readers.get(name)
        if name in history_columns:
            sql, kind = history_columns[name]
            origin = f"--history {next(h.text for h in histories if h.name == name)}"
        else:
            bound = ns.bound(name)
            if bound is None:
                read = f" (needed by {col.read_by})" if col else " (asked for by --keep)"
                raise DataError(f"column '{name}'{read} is in none of the tables: {table.label}"
                                + "".join(f", {j.label}" for j in joins) + "; join the table that has it "
                                "(--join), or derive it (--derive, --history)")
            sql, kind, origin = bound.sql, bound.type, bound.origin
        outputs.append(OutputColumn(name, *_cast(sql, kind, col, name, origin), origin))
    return Plan(files, numbered, from_sql, outputs, partition, partition_by, history_check, side)


def _key_family(kind: str) -> str:
    return "integer" if kind in INTEGERS else "string" if kind in STRINGS else kind


def _cast(sql: str, kind: str, col: RawColumn | None, name: str, origin: str) -> tuple[str, str]:
    """(SQL cast to the written type, the written type) of a column read by `col` (None: a kept column)."""
    element = _element(kind)
    numeric = kind in INTEGERS or kind in FLOATS or _is_decimal(kind) or kind == "BOOLEAN"

    def refuse(expected: str, hint: str = "") -> None:
        who = col.read_by if col else "--keep"
        raise DataError(f"{origin} is {kind}, but {who} expects {expected}" + (f"; {hint}" if hint else ""))

    if col is None:  # a kept column: written with its own type
        if kind in INTEGERS or kind == "BOOLEAN":
            return f"CAST({sql} AS BIGINT)", "BIGINT"
        if kind in FLOATS:
            return sql, kind
        if _is_decimal(kind):
            return f"CAST({sql} AS DOUBLE)", "DOUBLE"
        if kind in STRINGS:
            return sql, "VARCHAR"
        if element is not None and (element in INTEGERS or element in STRINGS or element in FLOATS):
            written = "BIGINT" if element in INTEGERS else element
            return f"CAST({sql} AS {written}[])", f"{written}[]"
        refuse("an integer, a float, a string or a list of them")
    if col.shape == "list":
        want = "BIGINT" if col.dtype == "int64" else "VARCHAR"
        family = (INTEGERS if col.dtype == "int64" else STRINGS) + ("NULL",)
        if element is None or element not in family:
            hint = (f"derive it from a delimited text with --derive {name}=split({name}, ',')"
                    if kind in STRINGS else "")
            refuse(f"a list of {col.dtype} ids", hint)
        return f"coalesce(CAST({sql} AS {want}[]), CAST([] AS {want}[]))", f"{want}[]"
    if col.shape == "vector":
        if element is None or not (element in INTEGERS or element in FLOATS or _is_decimal(element)):
            refuse(f"a list of {col.length} numbers")
        return f"CAST({sql} AS FLOAT[])", "FLOAT[]"
    if not col.is_input:  # label, weight and group-only columns
        if col.dtype == "float32" and not numeric:
            refuse("a number (0/1 for a binary label)", f"derive a label with --derive, e.g. {name}=x >= 1"
                   if kind in STRINGS else "")
        if col.dtype == "string" and not (numeric or kind in STRINGS or kind == "DATE"):
            refuse("a number, a string or a date")
        if kind in INTEGERS or kind == "BOOLEAN":
            return f"CAST({sql} AS BIGINT)", "BIGINT"
        if _is_decimal(kind):
            return f"CAST({sql} AS DOUBLE)", "DOUBLE"
        if kind == "DATE":
            return f"CAST({sql} AS VARCHAR)", "VARCHAR"
        return sql, kind
    if col.dtype == "int64":
        if kind in INTEGERS or kind == "BOOLEAN":
            return f"CAST({sql} AS BIGINT)", "BIGINT"
        hint = {True: f"if it holds integer codes, derive them with --derive {name}=int({name})"}.get(
            kind in FLOATS or _is_decimal(kind) or kind in STRINGS, "")
        if kind in TIMES:
            hint = f"derive a day or an hour with --derive {name}=date({name}) or hour({name})"
        refuse("int64 ids", hint)
    if col.dtype == "string":
        if kind in STRINGS:
            return sql, "VARCHAR"
        refuse("string ids", f"derive text ids with --derive {name}=str({name})" if numeric else "")
    if numeric:  # float32 features: numbers of any width (integers stay integers)
        if kind in INTEGERS or kind == "BOOLEAN":
            return f"CAST({sql} AS BIGINT)", "BIGINT"
        if _is_decimal(kind):
            return f"CAST({sql} AS DOUBLE)", "DOUBLE"
        return sql, kind
    refuse("a number", f"derive numbers with --derive {name}=float({name})" if kind in STRINGS else "")
    raise AssertionError
