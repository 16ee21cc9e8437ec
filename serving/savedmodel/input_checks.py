"""The serving signatures' input checks, inside the graph: a request TF Serving hands a signature is scored
only if it keeps the rules below; otherwise the signature fails with a message naming the column and what
was expected (TF Serving answers INVALID_ARGUMENT; see `signatures`).

The rules (the padding values are `trainer.data.records.PAD_ID` and `PAD_STRING`):

- Shapes: a scalar column is [B], a sequence [B, L], a dense vector [B, dim]. TF Serving does not compare a
  request's shapes with the signature's, so the graph does.
- Rows: every column of a group holds the same number of rows B (`RowGroup`); `prerank`'s user and
  context columns hold exactly one row (one user), its item columns one row per candidate.
- Numbers: float32 columns (numbers, dense vectors) are finite; NaN and inf are refused.
- Ids: int64 columns hold ids >= 0. A scalar int64 column whose feature declares a negative `default`
  (`default: -1`: the value a record lacking the column gets, with its own vocabulary row) also accepts
  exactly that value. Any other negative id is refused.
- Padding: sequences are RIGHT-padded: each row holds its ids first, then PAD_ID (-1, int64) or PAD_STRING
  ("", string) up to L. Padding before an id (left padding, a hole) is refused, and so is a negative int64
  id other than -1 in a sequence. (The encoder strips trailing padding only, so a left-padded row would
  otherwise look up -1 as an id: silent garbage.)

Cost: the shape rules are one ShapeN per dtype and a few vector ops over all the columns at once; the
value rules are one elementwise test per dtype and row group (its scalar columns laid into one [k, B]
tensor) plus one per sequence or vector column. Everything reduces to one boolean and one `tf.cond`, whose
failing branch alone builds the messages (the first bad row and value of each failed rule) from a few
fused tensors; a good request pays for none of that. The value rules read the inputs through shapes forced
to 0 rows when a shape rule failed, so a malformed request cannot crash them before the message is built;
the model reads the inputs only once every rule holds (control dependencies), so a refused request never
reaches a lookup.
"""
from dataclasses import dataclass

import tensorflow as tf

from trainer.data.records import PAD_ID, PAD_STRING
from trainer.spec.columns import RawColumn

_MARK = -1  # follows each column's dims in the fused shape vector (dims are >= 0)
_ANY = 2**62  # no upper bound on a dim
SHOWN = 3  # failed rules a message spells out (then: "and N more")


@dataclass(frozen=True)
class RowGroup:
    """Columns of one request that hold the same number of rows.

    Attributes:
      columns: the group's raw columns.
      holds: what the rows are, for messages: "item columns hold one row per candidate".
      rows: the exact number of rows required (prerank's user side: 1), or None (any, but the same).
    """

    columns: tuple[RawColumn, ...]
    holds: str
    rows: int | None = None


def input_rule(column: RawColumn) -> str:
    """The rule one column's values keep, in words (the export's manifest and `verify-export` list it)."""
    if column.dtype == "float32":
        return "finite numbers" if column.shape == "scalar" else f"{column.length} finite numbers per row"
    if column.shape == "list":
        pad = PAD_ID if column.dtype == "int64" else repr(PAD_STRING)
        ids = "ids >= 0, " if column.dtype == "int64" else ""
        return f"{ids}right-padded with {pad}"
    if column.dtype == "int64":
        default = column.negative_default
        return "ids >= 0" if default is None else f"ids >= 0 or {default} (the declared default)"
    return "any string"


def _rank(column: RawColumn) -> int:
    return 1 if column.shape == "scalar" else 2


def _shape_text(column: RawColumn) -> str:
    if column.shape == "list":
        return f"{column.dtype} [B, L] (one sequence per row)"
    if column.shape == "vector":
        return f"float32 [B, {column.length}]"
    return f"{column.dtype} [B] (one value per row)"


def _format(template: str, *values) -> tf.Tensor:
    return tf.strings.format(template, values)


def _joined(texts: list[tf.Tensor], bad: tf.Tensor) -> tf.Tensor:
    """The texts where `bad` holds, the first SHOWN of them joined, then "and N more"."""
    failed = tf.boolean_mask(tf.stack(texts), bad)
    more = tf.size(failed) - SHOWN
    return tf.strings.join([tf.strings.reduce_join(failed[:SHOWN], separator="; "),
                            tf.where(more > 0, tf.strings.format("; and {} more", more), "")])


def _first(bad: tf.Tensor) -> tf.Tensor:
    """The first index where `bad` ([n], or [n, m]: any along the last axis) holds; n if none. (Every
    message is built in the failing branch, also those of the checks that passed, so on any input.)"""
    if bad.shape.rank == 2:
        bad = tf.reduce_any(bad, axis=1)
    return tf.argmax(tf.concat([tf.cast(bad, tf.int32), [1]], 0), output_type=tf.int32)


def _at(values: tf.Tensor, i) -> tf.Tensor:
    """values[i], or zeros (False) past the end."""
    return tf.pad(values, [[0, i + 1]] + [[0, 0]] * (values.shape.rank - 1))[i]


class _Checks:
    """The checks of one signature: a bool vector per rule set (True: failed) and, per element, a callable
    building its message (called only in the failing branch)."""

    def __init__(self):
        self.bads: list[tf.Tensor] = []
        self.messages: list = []

    def add(self, bad: tf.Tensor, messages: list) -> None:
        self.bads.append(tf.reshape(bad, [-1]))
        self.messages.extend(messages)


class _Shapes:
    """Every shape rule from one ShapeN per dtype.

    The columns' shapes are laid end to end in one vector, each followed by a -1 mark; every place holds
    what is expected (a mark, a dim >= 0, a vector's width) only if every column has its expected shape,
    since dims are never negative. A tail of marks keeps every expected place inside the vector whatever
    the actual ranks, and the failing branch finds each column's actual shape between the marks. (The
    graph's static shapes cannot be used: they are the signature's, while TF Serving feeds whatever the
    client sent, unchecked.)"""

    def __init__(self, groups: list[RowGroup], cols: dict[str, tf.Tensor], checks: _Checks):
        self.columns = [c for g in groups for c in g.columns]
        shape_of = {}
        for dtype in sorted({c.dtype for c in self.columns}):
            named = [c.name for c in self.columns if c.dtype == dtype]
            shape_of.update(zip(named, tf.shape_n([cols[n] for n in named], out_type=tf.int64)))
        low, high, self.at = [], [], {}
        for c in self.columns:
            self.at[c.name] = len(low)
            second = (c.length, c.length) if c.shape == "vector" else (0, _ANY)
            for lo, hi in [(0, _ANY)] + ([second] if _rank(c) == 2 else []) + [(_MARK, _MARK)]:
                low.append(lo)
                high.append(hi)
        tail = tf.fill([len(low)], tf.constant(_MARK, tf.int64))
        mark = tf.constant([_MARK], tf.int64)
        self.flat = tf.concat([p for c in self.columns for p in (shape_of[c.name], mark)] + [tail], 0)
        self.laid = self.flat[:len(low)]
        shape_bad = tf.reduce_any(tf.logical_or(self.laid < low, self.laid > high))
        checks.add(shape_bad, [self._shape_message])
        # rows: each column against its group's required rows, or its group's first column; one check (and
        # message: the first column that differs) per group
        self.rows = tf.gather(self.laid, [self.at[c.name] for c in self.columns])
        index = self.index = {c.name: i for i, c in enumerate(self.columns)}
        group_of = {c.name: k for k, g in enumerate(groups) for c in g.columns}
        required = tf.constant([-1 if groups[group_of[c.name]].rows is None else groups[group_of[c.name]].rows
                                for c in self.columns], tf.int64)
        reference = [index[groups[group_of[c.name]].columns[0].name] for c in self.columns]
        expected = tf.where(required >= 0, required, tf.gather(self.rows, reference))
        wrong_rows = tf.logical_and(tf.not_equal(self.rows, expected), tf.logical_not(shape_bad))
        segments = tf.constant([group_of[c.name] for c in self.columns])
        checks.add(tf.math.unsorted_segment_max(tf.cast(wrong_rows, tf.int32), segments, len(groups)) > 0,
                   [lambda k=k, g=g: self._rows_message(g, tf.logical_and(wrong_rows, tf.equal(segments, k)),
                                                        index[g.columns[0].name])
                    for k, g in enumerate(groups)])
        self.ok = tf.logical_not(tf.logical_or(shape_bad, tf.reduce_any(wrong_rows)))
        # the [-1, width] each sequence or vector is read as: [-1, 1] once a shape rule failed (or the width
        # is 0), which any tensor can be reshaped to, so the value rules never fail on a malformed request
        wide = [c for c in self.columns if _rank(c) == 2]
        self.view = {}
        if wide:
            widths = tf.gather(self.laid, [self.at[c.name] + 1 for c in wide])
            widths = tf.where(tf.logical_and(self.ok, widths > 0), widths, 1)
            views = tf.stack([tf.fill(tf.shape(widths), tf.constant(-1, tf.int64)), widths], axis=1)
            self.view = {c.name: views[i] for i, c in enumerate(wide)}

    def _shape_message(self) -> tf.Tensor:
        marks = tf.reshape(tf.where(tf.equal(self.flat, _MARK)), [-1])
        texts, wrong = [], []
        for i, c in enumerate(self.columns):
            start = marks[i - 1] + 1 if i else tf.constant(0, tf.int64)
            shape = self.flat[start:marks[i]]
            bad = tf.not_equal(tf.size(shape, out_type=tf.int64), _rank(c))
            if c.shape == "vector":
                bad = tf.logical_or(bad, tf.not_equal(tf.concat([shape, [-1, -1]], 0)[1], c.length))
            wrong.append(bad)
            texts.append(_format(f"column {c.name} must be {_shape_text(c)}, got shape {{}}", shape))
        return _joined(texts, tf.stack(wrong))

    def _rows_message(self, group: RowGroup, wrong: tf.Tensor, first: int) -> tf.Tensor:
        """The first column of `group` whose rows are wrong, its rows and what they should be."""
        i = _first(wrong)
        names = tf.constant([c.name for c in self.columns])
        have = ["column ", _at(names, i), " has ", tf.strings.as_string(_at(self.rows, i)), " rows"]
        if group.rows is None:
            have += [f" but column {group.columns[0].name} has ", tf.strings.as_string(self.rows[first])]
        return tf.strings.join(have + [f"; {group.holds}"])


def _scalar_checks(columns: list[RawColumn], cols: dict, shapes: _Shapes, checks: _Checks) -> None:
    """The float32 and int64 scalar columns of one row group laid into one [k, B] tensor per dtype (read as
    [1, all values] once a shape rule failed: then these checks are off, and cannot fail)."""
    def laid(group: list[RawColumn]) -> tf.Tensor:
        flat = tf.concat([tf.reshape(cols[c.name], [-1, 1]) for c in group], 0)  # [k * B, 1] if shapes hold
        rows = tf.where(tf.logical_and(shapes.ok, shapes.rows[shapes.index[group[0].name]] > 0), len(group), 1)
        return tf.reshape(flat, tf.stack([rows, -1]))

    def per_column(bad: tf.Tensor, k: int) -> tf.Tensor:  # [k] whatever `bad`'s rows, False once shapes fail
        rows = tf.slice(tf.concat([tf.reduce_any(bad, axis=1), tf.zeros([k], tf.bool)], 0), [0], [k])
        return tf.logical_and(rows, shapes.ok)

    floats = [c for c in columns if c.shape == "scalar" and c.dtype == "float32"]
    if floats:
        x = laid(floats)
        checks.add(per_column(tf.logical_not(tf.math.is_finite(x)), len(floats)), [
            lambda j=j, c=c, x=x: _row_message(
                f"column {c.name} holds {{}} in row {{}}; expected finite float32 numbers", _at(x, j),
                tf.logical_not(tf.math.is_finite(_at(x, j))))
            for j, c in enumerate(floats)])
    ids = [c for c in columns if c.shape == "scalar" and c.dtype == "int64"]
    if ids:
        x = laid(ids)
        allowed = tf.constant([[c.negative_default or 0] for c in ids], tf.int64)
        bad = tf.logical_and(x < 0, tf.not_equal(x, allowed))
        checks.add(per_column(bad, len(ids)), [
            lambda j=j, c=c, x=x: _row_message(
                f"column {c.name} holds id {{}} in row {{}}; ids are >= 0{_also(c)}", _at(x, j),
                tf.logical_and(_at(x, j) < 0, tf.not_equal(_at(x, j), allowed[j])))
            for j, c in enumerate(ids)])


def _also(column: RawColumn) -> str:
    default = column.negative_default
    return "" if default is None else f" or {default}, its declared default"


def _row_message(template: str, values: tf.Tensor, bad: tf.Tensor) -> tf.Tensor:
    """`template` with the first bad row's value and the row."""
    row = _first(bad)
    return _format(template, _at(values, row), row)


def _holes(x: tf.Tensor, pad) -> tf.Tensor:
    """[B, L-1]: padding followed by an id."""
    padding = tf.equal(x, pad)
    return tf.logical_and(padding[:, :-1], tf.logical_not(padding[:, 1:]))


def _sequence_checks(c: RawColumn, x: tf.Tensor, checks: _Checks) -> None:
    """Right padding (no padding before an id) and, for int64 ids, no negative id other than the padding."""
    pad = PAD_ID if c.dtype == "int64" else PAD_STRING
    pad_text = PAD_ID if c.dtype == "int64" else "the empty string"
    bads = [tf.reduce_any(_holes(x, pad))]
    messages = [lambda: _format(f"column {c.name}: sequences are right-padded with {pad_text}: row {{}} has "
                                "padding before an id", _first(_holes(x, pad)))]
    if c.dtype == "int64":
        bads.append(tf.reduce_any(x < PAD_ID))
        messages.append(lambda: _row_message(
            f"column {c.name} holds id {{}} in row {{}}; sequence ids are >= 0, right-padded with {PAD_ID}",
            tf.reduce_min(x, axis=1), x < PAD_ID))
    checks.add(tf.stack(bads), messages)


def _vector_checks(c: RawColumn, x: tf.Tensor, checks: _Checks) -> None:
    checks.add(tf.reduce_any(tf.logical_not(tf.math.is_finite(x))), [lambda: _vector_message(c, x)])


def _vector_message(c: RawColumn, x: tf.Tensor) -> tf.Tensor:
    bad = tf.logical_not(tf.math.is_finite(x))
    row = _first(bad)
    return _format(f"column {c.name} holds {{}} in row {{}}; expected finite float32 numbers",
                   _at(tf.boolean_mask(_at(x, row), _at(bad, row)), 0), row)


@tf.autograph.experimental.do_not_convert  # plain Python control flow
def checked_inputs(signature: str, groups: list[RowGroup], cols: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """`cols` as the model may read them: passed on only once every rule holds; otherwise the signature fails
    with "<signature>: column <name> ...; <what was expected>" for the rules broken."""
    checks = _Checks()
    shapes = _Shapes(groups, cols, checks)
    for group in groups:
        _scalar_checks(list(group.columns), cols, shapes, checks)
        for c in group.columns:
            if c.shape == "vector":
                _vector_checks(c, tf.reshape(cols[c.name], shapes.view[c.name]), checks)
            elif c.shape == "list":
                _sequence_checks(c, tf.reshape(cols[c.name], shapes.view[c.name]), checks)
    bad = tf.concat(checks.bads, 0)

    # The messages are built in a function that is never inlined: the failing branch is then two nodes,
    # which a good request passes through as dead nodes (an inlined branch of hundreds of nodes cost more
    # than all the checks).
    @tf.function(autograph=False, experimental_attributes={"_noinline": True})
    def message() -> tf.Tensor:
        return tf.strings.join([f"{signature}: ", _joined([m() for m in checks.messages], bad)])

    def fail() -> tf.Tensor:
        with tf.control_dependencies([tf.debugging.Assert(tf.constant(False), [message()])]):
            return tf.constant(False)

    ok = tf.cond(tf.reduce_any(bad), fail, lambda: tf.constant(True))
    with tf.control_dependencies([ok]):
        return {k: tf.identity(v) for k, v in cols.items()}
