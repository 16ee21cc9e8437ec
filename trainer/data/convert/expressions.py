"""Derived columns: `NAME=EXPR` in a small declared grammar, compiled to the engine's SQL.

An expression is parsed as a Python expression and only these forms are
accepted (anything else is refused naming the derive and the form):

- column names (of the impressions table, of a joined table after its prefix,
  or an earlier derive), numbers, 'strings' / "strings", True, False, None,
  lists of constants (`[]` is an empty list: `coalesce(seq, [])`);
- arithmetic `+ - * / // %` (`/` divides as floats, `//` rounds down), unary `-`;
- comparisons `== != < <= > >=` (chained: `0 <= x < 5`), `and`, `or`, `not`,
  and `A if CONDITION else B`;
- the functions of `FUNCTIONS` (their docs below).

Examples: `long_view=play_time_ms >= 18000`, `date=date(time_ms)`,
`tags=split(tag, ",")`, `music_type=int(music_type)`, `history_len=coalesce(history_len, 0)`.
A comparison gives a boolean, written as 0 / 1. Missing values (nulls) stay
missing through arithmetic and comparisons, as in SQL.
"""
import ast
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from trainer.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")  # a derived column's name
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT")
TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000}  # epoch units of date() / hour() on integer times


def quote_identifier(name: str) -> str:
    """A column name as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_string(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Derive:
    """One derived column: `name` computed by `expression` (the text after `NAME=`)."""

    name: str
    expression: str

    @property
    def text(self) -> str:
        return f"{self.name}={self.expression}"

    @classmethod
    def parse(cls, text: str) -> "Derive":
        """`NAME=EXPR` from the command line (ConfigError naming it when malformed)."""
        name, sep, expression = text.partition("=")
        name, expression = name.strip(), expression.strip()
        if not sep or not expression or not NAME_PATTERN.match(name):
            raise ConfigError.single(f"--derive {text}", "", "expected NAME=EXPRESSION, e.g. "
                                     "long_view=play_time_ms >= 18000 (NAME: letters, digits, _ . -)")
        return cls(name, expression)


TIMESTAMP_TYPES = ("TIMESTAMP", "DATE", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS")


@dataclass(frozen=True)
class Context:
    """What a function's SQL may ask: `fail(message)` raises the derive's error, `type_of(sql)` is the engine type
    of an SQL expression (e.g. BIGINT, TIMESTAMP)."""

    fail: Callable[[str], None]
    type_of: Callable[[str], str]
    where: str  # the derive, for errors raised by the engine while it computes the column


def _timestamp(sql: str, args: list[ast.expr], ctx: Context, function: str) -> str:
    """SQL of a TIMESTAMP from a TIMESTAMP / DATE, or from an integer epoch time in the unit args[1] names."""
    unit = "ms"
    if len(args) > 1:
        if not (isinstance(args[1], ast.Constant) and args[1].value in TIME_UNITS):
            ctx.fail(f"{function}(): the time unit must be one of {', '.join(repr(u) for u in TIME_UNITS)}")
        unit = args[1].value
    kind = ctx.type_of(sql)
    if kind in TIMESTAMP_TYPES:
        return f"CAST({sql} AS TIMESTAMP)"
    if kind in INTEGER_TYPES:
        return f"make_timestamp(CAST({sql} AS BIGINT) * {1_000_000 // TIME_UNITS[unit]})"
    ctx.fail(f"{function}() takes a TIMESTAMP, a DATE or an integer epoch time, got {kind}")
    raise AssertionError


@dataclass(frozen=True)
class Function:
    """A function of the grammar: its argument counts, what it computes (doc) and its SQL."""

    min_args: int
    max_args: int
    doc: str
    sql: Callable[[list[str], list[ast.expr], Context], str]


FUNCTIONS: dict[str, Function] = {
    "date": Function(1, 2, "date(t[, unit]): the UTC day of a time as an integer yyyymmdd; t is a TIMESTAMP / DATE "
                           "or an integer epoch time in unit 's', 'ms' (default) or 'us'",
                     lambda s, a, c: f"CAST(strftime({_timestamp(s[0], a, c, 'date')}, '%Y%m%d') AS BIGINT)"),
    "hour": Function(1, 2, "hour(t[, unit]): the UTC hour of a time, 0..23 (t as for date)",
                     lambda s, a, c: f"CAST(hour({_timestamp(s[0], a, c, 'hour')}) AS BIGINT)"),
    "int": Function(1, 1, "int(x): x as a 64-bit integer; a number with a fraction, or text that is not an "
                          "integer, is an error naming the value",
                    lambda s, a, c: (f"(CASE WHEN {s[0]} IS NULL THEN NULL "
                                     f"WHEN TRY_CAST({s[0]} AS DOUBLE) = TRY_CAST(TRY_CAST({s[0]} AS DOUBLE) AS "
                                     f"BIGINT) THEN CAST(TRY_CAST({s[0]} AS DOUBLE) AS BIGINT) "
                                     f"ELSE error({quote_string(c.where + ': int(): ')} || CAST({s[0]} AS VARCHAR) || "
                                     f"' is not an integer') "
                                     f"END)")),
    "float": Function(1, 1, "float(x): x as a 64-bit float", lambda s, a, c: f"CAST({s[0]} AS DOUBLE)"),
    "str": Function(1, 1, "str(x): x as text", lambda s, a, c: f"CAST({s[0]} AS VARCHAR)"),
    "split": Function(2, 2, "split(text, 'sep'): a list of the parts of a delimited text",
                      lambda s, a, c: f"string_split({s[0]}, {s[1]})"),
    "coalesce": Function(2, 8, "coalesce(x, y, ...): the first of its arguments that is not missing",
                         lambda s, a, c: f"coalesce({', '.join(s)})"),
    "nan_to_null": Function(1, 1, "nan_to_null(x): a NaN float as a missing value",
                            lambda s, a, c: f"(CASE WHEN isnan({s[0]}) THEN NULL ELSE {s[0]} END)"),
    "len": Function(1, 1, "len(list): the number of elements of a list", lambda s, a, c: f"len({s[0]})"),
    "abs": Function(1, 1, "abs(x)", lambda s, a, c: f"abs({s[0]})"),
    "min": Function(2, 8, "min(x, y, ...)", lambda s, a, c: f"least({', '.join(s)})"),
    "max": Function(2, 8, "max(x, y, ...)", lambda s, a, c: f"greatest({', '.join(s)})"),
}

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}
_COMPARE = {ast.Eq: "=", ast.NotEq: "<>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_INT64 = (-(2**63), 2**63 - 1)


def compile_expression(derive: Derive, resolve: Callable[[str], str | None], known: Callable[[], list[str]],
                       type_of: Callable[[str], str], read_by: str = "") -> tuple[str, set[str]]:
    """The SQL of `derive.expression` and the column names it reads.

    Args:
      derive: the derived column.
      resolve: a column name -> its SQL (a qualified column or an earlier derive's SQL); None if unknown.
      known: the names that may be used, for the message about an unknown one.
      type_of: the engine type of an SQL expression over the tables (functions that depend on it ask).
      read_by: who reads the derived column ("feature 'x'"), for messages.
    Raises ConfigError naming the derive for anything outside the grammar.
    """
    where = f"--derive {derive.text}" + (f" (read by {read_by})" if read_by else "")

    def fail(message: str) -> None:
        raise ConfigError.single(where, "", message)

    try:
        tree = ast.parse(derive.expression, mode="eval")
    except SyntaxError as exc:
        fail(f"not an expression ({exc.msg} at column {exc.offset})")
    used: set[str] = set()

    def visit(node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            sql = resolve(node.id)
            if sql is None:
                names = known()
                fail(f"unknown column '{node.id}'; the tables and earlier derives have: "
                     f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
            used.add(node.id)
            return sql
        if isinstance(node, ast.Constant):
            value = node.value
            if value is None:
                return "NULL"
            if isinstance(value, bool):
                return "TRUE" if value else "FALSE"
            if isinstance(value, int):
                if not _INT64[0] <= value <= _INT64[1]:
                    fail(f"the integer {value} does not fit in 64 bits")
                return str(value)
            if isinstance(value, float):
                if value != value or value in (float("inf"), float("-inf")):
                    fail("numbers must be finite")
                return f"CAST({value!r} AS DOUBLE)"
            if isinstance(value, str):
                return quote_string(value)
            fail(f"the constant {value!r} is not a number, a string, True, False or None")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return f"({visit(node.left)} {_BINARY[type(node.op)]} {visit(node.right)})"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{visit(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return visit(node.operand)
            if isinstance(node.op, ast.Not):
                return f"(NOT {visit(node.operand)})"
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            terms = [visit(node.left)] + [visit(c) for c in node.comparators]
            parts = [f"({a} {_COMPARE[type(op)]} {b})" for a, op, b in zip(terms, node.ops, terms[1:])]
            return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
        if isinstance(node, ast.BoolOp):
            joiner = " AND " if isinstance(node.op, ast.And) else " OR "
            return "(" + joiner.join(visit(v) for v in node.values) + ")"
        if isinstance(node, ast.List) and all(isinstance(e, ast.Constant) for e in node.elts):
            return "[" + ", ".join(visit(e) for e in node.elts) + "]"
        if isinstance(node, ast.IfExp):
            return f"(CASE WHEN {visit(node.test)} THEN {visit(node.body)} ELSE {visit(node.orelse)} END)"
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                fail(f"unknown function '{name}'; the functions are: {', '.join(FUNCTIONS)}")
            function = FUNCTIONS[node.func.id]
            if node.keywords:
                fail(f"{node.func.id}() takes no keyword arguments ({function.doc})")
            if not function.min_args <= len(node.args) <= function.max_args:
                fail(f"{node.func.id}() takes {function.min_args}"
                     f"{'' if function.max_args == function.min_args else f'..{function.max_args}'} "
                     f"argument(s), got {len(node.args)} ({function.doc})")
            return function.sql([visit(a) for a in node.args], node.args, Context(fail, type_of, where))
        fail(f"'{ast.unparse(node)}' is outside the derive grammar (columns, numbers, strings, + - * / // %, "
             f"comparisons, and / or / not, A if C else B, [constants], and the functions {', '.join(FUNCTIONS)})")
        raise AssertionError  # fail() raised

    return visit(tree.body), used


def describe_functions() -> Mapping[str, str]:
    """Each function's doc, for --help."""
    return {name: f.doc for name, f in FUNCTIONS.items()}
