"""Parquet files in the pipeline: probing their schemas, and reading row groups as columnar tensors.

The unit of work is a (file, row group) pair: the probe lists every file's
row groups, the pipeline shards and shuffles the pairs, and each pair is read
by a `tf.py_function` that is a pure function of the pair (pyarrow reads the
row group; numpy turns its columns into arrays, never a Python loop over
rows). Re-reading a pair gives the same rows, which is what lets a checkpointed
iterator restore exactly: on restore, tf.data calls the read again for the
pairs in flight and skips to the saved position (the pipeline saves iterators
with the external-state policy IGNORE, as a py_function is stateful to
TensorFlow).

What a column may hold (all files must agree on a column's type; integer and
float widths may differ between files):

- int64 ids: any integer type; string ids: string (large, view, dictionary);
- numbers, labels, weights: integers, float / double, bool;
- sequences: list / large_list of integers or of strings;
- dense vectors: list / large_list / fixed_size_list of floats (or integers)
  holding exactly `dim` values;
- group-key-only columns: integers, numbers, strings, bools, dates, timestamps
  (dates and timestamps as their ISO text).

A null means "missing", as an absent tf.Example feature does: the spec's
`default` applies, a null list is empty, and otherwise the record is an error
naming `file#row N` (rows numbered from 0 in the file); so is a null inside a
list and a vector of the wrong length. A file without a column that has a
default reads the default everywhere.

A row group reaches the pipeline packed, three tensors per row:

- `ints`, int64: the int64 scalars, then the byte length of each text cell,
  then `flaw`, the code of the row's first problem in column order (-1: none);
- `floats`, float32: the float32 scalars, then the vectors;
- `text`, one string: the row's text cells joined. The cells are the string
  scalars and, per sequence, the row's values as bytes: an int64 sequence as
  its little-endian int64 values (the Arrow values between the row's
  offsets), a string sequence as two cells, the byte lengths of its strings
  (int64) and their bytes.

Rows of a few fixed-shape tensors shuffle and batch fast: in micro-benchmarks
(a 10,000-row shuffle buffer), rows holding four sequences (up to 50 ids) as
ragged tensors went 4x slower than as byte cells, and rows of twelve string
cells about 1.5x slower than the same cells joined in one string.
`unpack_batch` cuts a batch's cells apart (`tf.strings.substr`) and turns each
sequence into a ragged tensor with one `decode_raw` over the joined cells.
"""
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf

from trainer.data.input_config import InputConfig
from trainer.data.records import RECORD_BITS
from trainer.errors import DataError
from trainer.spec.columns import RawColumn

CHUNK = 256  # rows of a row group handed to the interleave at a time (as the TFRecord reader's chunks)
READ_ERRORS = (OSError, ValueError, pa.ArrowException)  # pyarrow's errors (ArrowInvalid is a ValueError)
FIX_OR_SKIP = "Fix the file, or rerun with --skip-corrupt to skip and count corrupt records"

# What each use of a column accepts, by type family (see `family`).
_GROUP_ONLY = ("integer", "float", "string", "bool", "temporal")
_ACCEPTED = {"int64": ("integer",), "string": ("string",), "float32": ("integer", "float", "bool")}
_EXPECTED = {"int64": "integers", "string": "strings", "float32": "numbers (integer, float, double or bool)"}


def family(arrow_type: pa.DataType) -> str:
    """The kind of values an Arrow type holds: integer, float, string, bool, temporal, list<...>, or the type
    itself when it is none of those (a struct, a map, binary ...)."""
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "temporal"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{family(t.value_type)}>"
    return str(t)


def _group_only(col: RawColumn) -> bool:
    return not col.is_input and col.dtype == "string"


def _accepted(col: RawColumn) -> tuple[str, ...]:
    if col.shape == "list":
        return ("list<string>",) if col.dtype == "string" else ("list<integer>",)
    if col.shape == "vector":
        return "list<float>", "list<integer>"
    return _GROUP_ONLY if _group_only(col) else _ACCEPTED[col.dtype]


def _expected(col: RawColumn) -> str:
    if col.shape == "list":
        return f"a list of {_EXPECTED[col.dtype]} (list or large_list)"
    if col.shape == "vector":
        return f"a list of {col.length} numbers (list or fixed_size_list of float)"
    return "integers, numbers, strings, bools, dates or timestamps" if _group_only(col) else _EXPECTED[col.dtype]


def _emitted(col: RawColumn, kind: str | None) -> str:
    """The dtype a column is read as: the spec's, except for group-key-only columns (kept as stored)."""
    if col.shape != "scalar" or not _group_only(col) or kind is None:
        return col.dtype
    return {"integer": "int64", "bool": "int64", "float": "float32"}.get(kind, "string")


def _reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def open_file(path: str) -> pq.ParquetFile:
    """The file, its footer read; page checksums (when the writer stored them) are verified on every read."""
    return pq.ParquetFile(path, page_checksum_verification=True)


# ---- the probe ----------------------------------------------------------------------------------------


def probe(columns: dict[str, RawColumn], files: list[str],
          skip_corrupt: bool = False) -> tuple[dict[str, str], tuple[tuple[int, ...], ...]]:
    """Check every file's schema against the columns the spec reads.

    Returns each column's dtype as read and, per file, the rows of each row group. A missing column
    (without a default), an unusable type, a fixed_size_list of another length than the vector's, or
    a column stored with another type than in an earlier file fails naming the file, the column and
    the features reading it. A file whose footer cannot be read fails naming it, or with
    `skip_corrupt` gets no row groups (the corruption scan reports it as skipped).
    """
    seen: dict[str, tuple[str, pa.DataType, str]] = {}  # column -> (family, type, first file)
    row_groups = []
    for path in files:
        try:
            with open_file(path) as pf:
                schema, metadata = pf.schema_arrow, pf.metadata
        except READ_ERRORS as exc:
            if skip_corrupt:
                row_groups.append(())
                continue
            raise DataError(f"{path}: not a readable Parquet file ({_reason(exc)}). {FIX_OR_SKIP}") from None
        for name, col in columns.items():
            count = schema.names.count(name)
            if count > 1:
                raise DataError(f"{path}: column '{name}' (needed by {col.read_by}) appears {count} times in the "
                                "Parquet schema; column names must be unique")
            if count == 0:
                if col.default is None:
                    raise DataError(f"{path}: column '{name}' (needed by {col.read_by}) is missing from the Parquet "
                                    "schema; every file must hold it, or the spec must declare a default")
                continue
            arrow_type = schema.field(name).type
            kind = family(arrow_type)
            if kind not in _accepted(col):
                raise DataError(f"{path}: column '{name}' is stored as {arrow_type}, but {col.read_by} expects "
                                f"{_expected(col)}")
            if col.shape == "vector" and pa.types.is_fixed_size_list(arrow_type) and arrow_type.list_size != col.length:
                raise DataError(f"{path}: column '{name}' is stored as {arrow_type}, but {col.read_by} expects "
                                f"{col.length} values")
            if name in seen and seen[name][0] != kind:
                raise DataError(f"{path}: column '{name}' is stored as {arrow_type}, but as {seen[name][1]} in "
                                f"{seen[name][2]}; every file must store a column with one type")
            seen.setdefault(name, (kind, arrow_type, path))
        row_groups.append(tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)))
    stored = {name: _emitted(col, seen[name][0] if name in seen else None) for name, col in columns.items()}
    return stored, tuple(row_groups)


# ---- how rows are packed ------------------------------------------------------------------------------


NULL, NULL_ITEM, LENGTH = "null", "null item", "length"  # the kinds of flaw a row's column can have


@dataclass(frozen=True)
class Flaw:
    """A problem a row can have (its code is its index in `RowLayout.flaws`)."""

    column: str
    kind: str  # NULL, NULL_ITEM or LENGTH
    message: str


@dataclass
class RowLayout:
    """Where each column sits in a packed row, and the flaws a row can have."""

    columns: dict[str, RawColumn]
    stored: dict[str, str]
    ints: list[str] = field(default_factory=list)
    floats: list[str] = field(default_factory=list)  # scalars first, then `vectors` (each `length` wide)
    vectors: list[str] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)  # string scalars, then the sequences' byte cells
    lists: list[str] = field(default_factory=list)
    flaws: list[Flaw] = field(default_factory=list)

    def __post_init__(self):
        for name, col in self.columns.items():
            if col.shape == "list":
                self.lists.append(name)
            elif col.shape == "vector":
                self.vectors.append(name)
            else:
                {"int64": self.ints, "float32": self.floats, "string": self.strings}[self.stored[name]].append(name)
            if col.shape != "list" and col.default is None:
                self.flaws.append(Flaw(name, NULL, f"column '{name}' (needed by {col.read_by}) is null in the "
                                                   "record; every record must carry it, or the spec must declare "
                                                   "a default"))
            if col.shape != "scalar":
                self.flaws.append(Flaw(name, NULL_ITEM, f"column '{name}' (read by {col.read_by}) holds a null "
                                                        "inside its list (a null list reads as empty; its items "
                                                        "cannot be null)"))
            if col.shape == "vector":
                self.flaws.append(Flaw(name, LENGTH, f"column '{name}' (read by {col.read_by}) must hold "
                                                     f"{col.length} values"))

    @property
    def float_width(self) -> int:
        return len(self.floats) + sum(self.columns[v].length for v in self.vectors)

    @property
    def text_width(self) -> int:
        """Text cells of a row: the string scalars, one per int64 sequence, two per string sequence."""
        return len(self.strings) + sum(2 if self.columns[name].dtype == "string" else 1 for name in self.lists)

    @property
    def int_width(self) -> int:
        """Columns of `ints`: the int64 scalars, the text cells' lengths, the flaw."""
        return len(self.ints) + self.text_width + 1

    def code(self, column: str, kind: str) -> int:
        """The code of a column's flaw of `kind`."""
        return next(i for i, f in enumerate(self.flaws) if f.column == column and f.kind == kind)


# ---- reading a row group (numpy) ----------------------------------------------------------------------


def _string_offsets(arr: pa.Array) -> np.ndarray:
    """The [len + 1] offsets of a large_string array into its data buffer."""
    return np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]


class _Strings:
    """Byte cells cut from one shared buffer: (start, length) pairs into `data`."""

    def __init__(self):
        self.parts: list = []
        self.size = 0

    def add(self, buffer, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells `buffer[bounds[i]:bounds[i + 1]]`; their (starts, lengths) in the shared buffer."""
        first, last = int(bounds[0]), int(bounds[-1])
        if last > first:
            self.parts.append(memoryview(buffer)[first:last])
        starts = bounds[:-1] - first + self.size
        self.size += last - first
        return starts, np.diff(bounds)

    def add_strings(self, arr: pa.Array, splits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A large_string array without nulls as cells: one per string, or the strings of each of `splits`'
        rows joined."""
        offsets = _string_offsets(arr)
        return self.add(arr.buffers()[2] or b"", offsets if splits is None else offsets[splits])

    def add_ints(self, values: np.ndarray, splits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The little-endian int64 bytes of each row's `values[splits[i]:splits[i + 1]]`."""
        return self.add(memoryview(np.ascontiguousarray(values, "<i8")).cast("B"), splits * 8)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


class _RowGroup:
    """One row group's columns as packed numpy arrays (see the module docstring)."""

    def __init__(self, table: pa.Table, layout: RowLayout):
        self.table, self.layout, self.n = table, layout, table.num_rows
        self.names = set(table.column_names)
        self.flaw = np.full(self.n, -1, np.int32)
        self.strings = _Strings()

    def flag(self, code: int, bad: np.ndarray) -> None:
        """Mark `bad` rows with flaw `code` unless they have one of a lower code (an earlier column's)."""
        self.flaw[bad & ((self.flaw < 0) | (self.flaw > code))] = code

    def column(self, name: str) -> pa.Array | None:
        if name not in self.names:
            return None
        chunked = self.table.column(name)
        if pa.types.is_dictionary(chunked.type):  # chunks may have dictionaries of their own
            chunked = pa.chunked_array([c.dictionary_decode() for c in chunked.chunks], chunked.type.value_type)
        return chunked.combine_chunks()

    def scalar(self, name: str, arrow_type: pa.DataType, placeholder) -> pa.Array:
        """A scalar column cast to `arrow_type`, nulls replaced by the default (or flagged, if it has none)."""
        col = self.layout.columns[name]
        default = placeholder if col.default is None else col.default
        if arrow_type == pa.int64():
            default = int(default)
        elif arrow_type == pa.float32():
            default = float(default)
        else:
            default = str(default)
        arr = self.column(name)
        if arr is None:  # a file without the column (the probe checked that it has a default)
            return pa.repeat(pa.scalar(default, arrow_type), self.n)
        if pa.types.is_boolean(arr.type) and arrow_type == pa.int64():
            arr = arr.cast(pa.int8())
        arr = arr.cast(arrow_type, safe=arrow_type != pa.float32())  # int64 -> float32 rounds, as TensorFlow does
        if arr.null_count:
            if col.default is None:
                self.flag(self.layout.code(name, NULL), arr.is_null().to_numpy(zero_copy_only=False))
            arr = pc.fill_null(arr, pa.scalar(default, arrow_type))
        return arr

    def listed(self, name: str, value_type: pa.DataType, placeholder) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """A list column: (flat values without nulls, row splits [n + 1], row lengths [n]); a null list is empty,
        null items are flagged."""
        col = self.layout.columns[name]
        arr = self.column(name).cast(pa.large_list(value_type), safe=value_type != pa.float32())
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        if arr.null_count and col.shape == "vector" and col.default is None:
            self.flag(self.layout.code(name, NULL), arr.is_null().to_numpy(zero_copy_only=False))
        values = arr.flatten()
        if values.null_count:
            parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
            bad = np.zeros(self.n, bool)
            bad[parents[values.is_null().to_numpy(zero_copy_only=False)]] = True
            self.flag(self.layout.code(name, NULL_ITEM), bad)
            values = pc.fill_null(values, pa.scalar(placeholder, value_type))
        splits = np.zeros(self.n + 1, np.int64)
        np.cumsum(lengths, out=splits[1:])
        return values, splits, lengths

    def vector(self, name: str) -> np.ndarray:
        """A dense [n, dim] float32 vector column; rows of another length are zeros, flagged."""
        dim = self.layout.columns[name].length
        values, splits, lengths = self.listed(name, pa.float32(), 0.0)
        flat = values.to_numpy(zero_copy_only=False)
        wrong = lengths != dim
        if not wrong.any():
            return flat.reshape(self.n, dim)
        self.flag(self.layout.code(name, LENGTH), wrong)
        dense = np.zeros((self.n, dim), np.float32)
        good = ~wrong
        dense[good] = flat[splits[:-1][good, None] + np.arange(dim)]
        return dense

    def arrays(self) -> list:
        """The py_function's outputs after the error (see `_OUTPUT_TYPES`)."""
        layout, n = self.layout, self.n
        ints = np.empty((n, layout.int_width), np.int64)
        for j, name in enumerate(layout.ints):
            ints[:, j] = self.scalar(name, pa.int64(), 0).to_numpy(zero_copy_only=False)
        floats = np.empty((n, layout.float_width), np.float32)
        for j, name in enumerate(layout.floats):
            floats[:, j] = self.scalar(name, pa.float32(), 0.0).to_numpy(zero_copy_only=False)
        at = len(layout.floats)
        for name in layout.vectors:
            dim = layout.columns[name].length
            floats[:, at:at + dim] = self.vector(name)
            at += dim
        starts = np.empty((n, layout.text_width), np.int64)
        lengths = ints[:, len(layout.ints):-1]  # a view: the cells' lengths go into `ints`
        for j, name in enumerate(layout.strings):
            starts[:, j], lengths[:, j] = self.strings.add_strings(self.scalar(name, pa.large_string(), ""))
        at = len(layout.strings)
        for name in layout.lists:
            if layout.columns[name].dtype == "string":
                values, splits, _ = self.listed(name, pa.large_string(), "")
                starts[:, at], lengths[:, at] = self.strings.add_ints(np.diff(_string_offsets(values)), splits)
                starts[:, at + 1], lengths[:, at + 1] = self.strings.add_strings(values, splits)
                at += 2
            else:
                values, splits, _ = self.listed(name, pa.int64(), 0)
                starts[:, at], lengths[:, at] = self.strings.add_ints(values.to_numpy(zero_copy_only=False), splits)
                at += 1
        ints[:, -1] = self.flaw
        return [ints, floats, np.array(self.strings.data, dtype=object), starts]


def read_row_group(path: str, group: int, layout: RowLayout) -> list:
    """Row group `group` of `path` as packed numpy arrays (`_OUTPUT_TYPES` after the error); raises pyarrow's
    errors (`READ_ERRORS`) when it cannot be read or converted."""
    with open_file(path) as pf:
        names = set(pf.schema_arrow.names)
        table = pf.read_row_group(group, columns=[name for name in layout.columns if name in names])
    return _RowGroup(table, layout).arrays()


_OUTPUT_TYPES = [tf.string, tf.int64, tf.float32, tf.string, tf.int64]
# error, ints [n, int_width], floats [n, float_width], one buffer of every text cell, cell starts [n, text_width]


def _empty_outputs(layout: RowLayout) -> list:
    return [np.zeros((0, layout.int_width), np.int64), np.zeros((0, layout.float_width), np.float32),
            np.array(b"", dtype=object), np.zeros((0, layout.text_width), np.int64)]


# ---- the dataset --------------------------------------------------------------------------------------


def work_units(row_groups: tuple[tuple[int, ...], ...], skipped_groups: dict[int, set[int]]) -> np.ndarray:
    """[U, 3] int64: (file index, row group index, the group's first row in its file) of every row group to
    read, file by file; `skipped_groups` (file index -> row groups) are left out."""
    units = []
    for f, groups in enumerate(row_groups):
        first = 0
        for g, rows in enumerate(groups):
            if g not in skipped_groups.get(f, ()) and rows:
                units.append((f, g, first))
            first += rows
    return np.array(units, np.int64).reshape(-1, 3)


def read_rows(files: list[str], columns: dict[str, RawColumn], stored: dict[str, str],
              row_groups: tuple[tuple[int, ...], ...], config: InputConfig,
              skipped_groups: dict[int, set[int]]) -> tf.data.Dataset:
    """(packed row, record id) pairs of the files' row groups, sharded over `config.num_workers` by row group,
    read `config.cycle_length` row groups at a time (interleaved in chunks, as TFRecord files are)."""
    layout = RowLayout(columns, stored)
    units = work_units(row_groups, skipped_groups)
    if config.num_workers > 1 and len(units) < config.num_workers:
        raise DataError(f"{len(units)} row group(s) in {len(files)} Parquet file(s) cannot be sharded over "
                        f"{config.num_workers} workers; write at least one row group per worker")
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(units, tf.int64))
    if config.num_workers > 1:
        dataset = dataset.shard(config.num_workers, config.worker_index)
    if config.shuffle_buffer > 0 and len(units) > 1:
        dataset = dataset.shuffle(len(units), seed=config.seed, reshuffle_each_iteration=not config.deterministic)

    def read_py(file_index: tf.Tensor, group: tf.Tensor) -> list:
        path = files[int(file_index)]
        try:
            return [b"", *read_row_group(path, int(group), layout)]
        except READ_ERRORS as exc:
            return [f"{path}: row group {int(group)} cannot be read ({_reason(exc)})".encode(),
                    *_empty_outputs(layout)]

    @tf.autograph.experimental.do_not_convert
    def read(unit: tf.Tensor) -> tf.data.Dataset:
        error, *out = tf.py_function(read_py, [unit[0], unit[1]], _OUTPUT_TYPES)
        failed = tf.debugging.Assert(tf.equal(error, ""), [error])
        with tf.control_dependencies([failed]):
            ints, floats, data, starts = [tf.identity(t) for t in out]
        ints.set_shape([None, layout.int_width])
        floats.set_shape([None, layout.float_width])
        lengths = ints[:, len(layout.ints):-1]
        text = tf.strings.reduce_join(tf.strings.substr(data, starts, lengths), axis=1)  # each row's cells
        n = tf.shape(ints, out_type=tf.int64)[0]
        ids = unit[0] * (1 << RECORD_BITS) + unit[2] + tf.range(n, dtype=tf.int64)
        rows = {"ints": ints, "floats": floats, "text": text}

        @tf.autograph.experimental.do_not_convert
        def chunk(start: tf.Tensor) -> tuple[dict, tf.Tensor]:
            return tf.nest.map_structure(lambda t: t[start:start + CHUNK], rows), ids[start:start + CHUNK]

        return tf.data.Dataset.range(0, n, CHUNK).map(chunk)

    chunks = dataset.interleave(read, cycle_length=max(1, min(config.cycle_length, len(units))),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)
    return chunks.unbatch()


def unpack_batch(columns: dict[str, RawColumn], stored: dict[str, str], rows: dict) -> tuple[dict, list]:
    """A batch of packed rows -> (raw columns as the parser's finisher takes them, the flaw checks)."""
    layout = RowLayout(columns, stored)
    raw = {name: rows["ints"][:, j] for j, name in enumerate(layout.ints)}
    raw.update({name: rows["floats"][:, j] for j, name in enumerate(layout.floats)})
    at = len(layout.floats)
    for name in layout.vectors:
        dim = columns[name].length
        raw[name] = rows["floats"][:, at:at + dim]
        at += dim
    lengths = rows["ints"][:, len(layout.ints):-1]
    texts = tf.strings.substr(rows["text"][:, None], tf.cumsum(lengths, axis=1, exclusive=True), lengths)
    texts.set_shape([None, layout.text_width])  # (broadcasting leaves the shape unknown)
    raw.update({name: texts[:, j] for j, name in enumerate(layout.strings)})
    at = len(layout.strings)
    for name in layout.lists:
        cell = texts[:, at]
        counts = tf.cast(tf.strings.length(cell), tf.int64) // 8
        values = tf.io.decode_raw(tf.strings.reduce_join(cell), tf.int64, little_endian=True)
        if columns[name].dtype == "string":  # `values` are the byte lengths of the strings, the next cell their bytes
            starts = tf.cumsum(values, exclusive=True)
            values = tf.strings.substr(tf.strings.reduce_join(texts[:, at + 1]), starts, values)
            at += 1
        raw[name] = tf.RaggedTensor.from_row_lengths(values, counts, validate=False)
        at += 1
    flaw = rows["ints"][:, -1]
    checks = [(tf.not_equal(flaw, code), f.message, None) for code, f in enumerate(layout.flaws)]
    return raw, checks


# ---- corruption ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unreadable:
    """What a scan of one file found: its unreadable row groups (or the whole file)."""

    rows: int  # rows in the unreadable row groups (1 for a file whose footer cannot be read)
    readable: int  # rows that can be read
    detail: str
    row_groups: tuple[int, ...]  # empty for a whole file


def scan_file(path: str, columns: dict[str, RawColumn], stored: dict[str, str]) -> Unreadable | None:
    """Read every row group of `path` as the pipeline does; what cannot be read (None when all can)."""
    try:
        with open_file(path) as pf:
            groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except READ_ERRORS as exc:
        return Unreadable(1, 0, f"not a readable Parquet file ({_reason(exc)})", ())
    layout = RowLayout(columns, stored)
    bad, first = [], 0
    for g, rows in enumerate(groups):
        try:
            read_row_group(path, g, layout)
        except READ_ERRORS as exc:
            bad.append((g, first, rows, _reason(exc)))
        first += rows
    if not bad:
        return None
    g, start, rows, reason = bad[0]
    more = f"; and {len(bad) - 1} more row group(s)" if len(bad) > 1 else ""
    lost = sum(b[2] for b in bad)
    return Unreadable(lost, sum(groups) - lost, f"row group {g} (rows {start}-{start + rows - 1}) cannot be read "
                                                f"({reason}){more}", tuple(b[0] for b in bad))
