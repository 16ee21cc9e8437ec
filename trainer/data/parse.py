"""Parsing a batch of records into the batch dict, with one vectorised op per batch, and checking its values.

TFRecord: `tf.io.parse_example` with a description derived from the spec's raw
columns; CSV: `decode_csv` of every field as text, then conversion; Parquet:
rows read already typed, unpacked (`trainer.data.parquet.unpack_batch`). Then
sequences are truncated (and padded with `pad_sequences`), numbers cast, and
NaN / inf, ids that break the id rule (`trainer.data.records`: negative ids
other than a column's declared default, empty strings in sequences) and
non-0/1 binary labels fail naming the first bad record.
"""
import tensorflow as tf

from trainer.data import parquet
from trainer.data.input_config import InputConfig
from trainer.data.probe import ParsePlan
from trainer.data.records import PAD_ID, PAD_STRING, record_origins
from trainer.spec.columns import RawColumn, raw_columns
from trainer.spec.types import Spec


def batch_parser(spec: Spec, plan: ParsePlan, config: InputConfig, files: list[str]):
    """The map function of the pipeline: (records [B], record ids [B]) -> the batch dict. Records are
    serialized tf.Examples, CSV lines, or packed Parquet rows."""
    columns = raw_columns(spec)
    finish = batch_finisher(spec, config)
    paths = tf.constant(files)
    description = example_description(plan, columns) if plan.format == "tfrecord" else None

    @tf.autograph.experimental.do_not_convert  # plain Python control flow: tracing stays quick
    def parse(records, ids: tf.Tensor) -> dict:
        origins = record_origins(ids, paths, plan.format)
        if plan.format == "parquet":
            raw, checks = parquet.unpack_batch(columns, plan.stored, records)
        elif plan.format == "csv":
            raw, checks = _parse_csv(records, plan, columns, spec.data.list_delimiter)
        else:
            raw = tf.io.parse_example(records, description, example_names=origins)
            checks = fill_scalars(raw, plan, columns)
        return finish(raw, origins, checks)

    return parse


def example_description(plan: ParsePlan, columns: dict[str, RawColumn]) -> dict:
    """The tf.Example parsing description of the needed columns, with their stored dtypes.

    A number stored as int64 whose default is not an integer is parsed as a list and filled
    by `fill_scalars` (parse_example wants a default of the stored type)."""
    description = {}
    for name, col in columns.items():
        stored = tf.as_dtype(plan.stored[name])
        if col.shape == "list" or name in scalars_to_fill(plan, columns):
            description[name] = tf.io.RaggedFeature(stored, row_splits_dtype=tf.int64)
        elif col.shape == "vector":
            description[name] = tf.io.FixedLenFeature([col.length], stored)
        else:
            default = col.default
            if default is not None and stored.is_integer:
                default = int(default)  # an integral float default of a number stored as int64
            default = None if default is None else tf.constant(default, stored)
            description[name] = tf.io.FixedLenFeature([], stored, default_value=default)
    return description


def scalars_to_fill(plan: ParsePlan, columns: dict[str, RawColumn]) -> dict[str, float]:
    """Scalar columns stored as int64 with a non-integral default (see `fill_scalars`)."""
    return {name: float(col.default) for name, col in columns.items()
            if col.shape == "scalar" and col.default is not None and tf.as_dtype(plan.stored[name]).is_integer
            and not float(col.default).is_integer()}


def fill_scalars(raw: dict, plan: ParsePlan, columns: dict[str, RawColumn]) -> list:
    """Turn the scalar columns parsed as lists (`scalars_to_fill`) into float32 [B] with their default
    where the value is absent; returns the checks that each record holds at most one value."""
    checks = []
    for name, default in scalars_to_fill(plan, columns).items():
        value, lengths = raw[name], raw[name].row_lengths()
        checks.append((lengths <= 1, f"column '{name}' (read by {columns[name].read_by}) must hold one value", None))
        first = tf.cast(value.to_tensor(default_value=0, shape=[None, 1])[:, 0], tf.float32)
        raw[name] = tf.where(lengths == 0, tf.constant(default, tf.float32), first)
    return checks


def batch_finisher(spec: Spec, config: InputConfig):
    """finish(raw parsed columns, origins, checks) -> the batch dict: truncates, casts and checks values."""
    columns = raw_columns(spec)
    max_length: dict[str, int] = {}
    for f in spec.features:
        if f.kind == "sequence":
            max_length[f.columns[0]] = max(max_length.get(f.columns[0], 0), f.max_length)

    def finish(raw: dict, origins: tf.Tensor, checks: list) -> dict:
        if config.check_values:  # on the ids as stored, before truncation and padding
            checks = list(checks) + _id_checks(columns, raw)
        values: dict[str, tf.Tensor] = {}
        for name, col in columns.items():
            value = raw[name]
            if col.shape == "list":
                value = value[:, -max_length[name]:] if spec_keep_last(spec, name) else value[:, :max_length[name]]
                if config.pad_sequences:
                    pad = PAD_STRING if col.dtype == "string" else PAD_ID
                    value = value.to_tensor(default_value=pad, shape=[None, max_length[name]])
            elif col.dtype == "float32" and value.dtype != tf.float32:
                value = tf.cast(value, tf.float32)
            values[name] = value
        checks = list(checks) + (_value_checks(spec, columns, values) if config.check_values else [])
        _enforce(checks, origins)
        labels = {label.name: tf.cast(values[label.column], tf.float32) for label in spec.labels}
        weight = values[spec.sample_weight] if spec.sample_weight else tf.ones(tf.shape(origins), tf.float32)
        if spec.group_key:
            group = tf.strings.join([_as_string(values[c]) for c in spec.group_key], separator="|")
        else:
            group = tf.fill(tf.shape(origins), "")
        features = {n: values[n] for n, c in columns.items() if c.is_input}
        return {"features": features, "labels": labels, "sample_weight": weight, "group": group}

    return finish


def spec_keep_last(spec: Spec, column: str) -> bool:
    """Whether sequences in `column` keep their most recent (last) ids."""
    return next(f.keep for f in spec.features if f.kind == "sequence" and f.columns[0] == column) == "last"


def _as_string(value: tf.Tensor) -> tf.Tensor:
    return value if value.dtype == tf.string else tf.strings.as_string(value)


def _parse_csv(lines: tf.Tensor, plan: ParsePlan, columns: dict[str, RawColumn],
               list_delimiter: str) -> tuple[dict[str, tf.Tensor], list]:
    """Parse CSV lines: every field is read as text (so the field count is checked), then converted."""
    if plan.csv_fields:
        cells = tf.io.decode_csv(lines, [tf.constant([""], tf.string)] * plan.csv_fields)
        cell_of = {n: cells[plan.csv_index[n]] for n in columns}
    else:  # a plan built without the header length: read only the needed fields
        order = sorted(columns, key=lambda n: plan.csv_index[n])
        cells = tf.io.decode_csv(lines, [tf.constant([""], tf.string)] * len(order),
                                 select_cols=[plan.csv_index[n] for n in order])
        cell_of = dict(zip(order, cells))
    out, checks = {}, []
    for name, col in columns.items():
        cell = cell_of[name]
        stored = tf.as_dtype(plan.stored[name])
        if col.shape == "scalar":
            empty = tf.equal(cell, "")
            if col.default is None:
                checks.append((tf.logical_not(empty), f"column '{name}' (needed by {col.read_by}) is empty; "
                                                      "the spec declares no default for it", None))
            if stored == tf.string:
                value = cell if col.default is None else tf.where(empty, str(col.default), cell)
            else:
                value = tf.strings.to_number(tf.where(empty, "0", cell), out_type=stored)
                if col.default is not None:
                    value = tf.where(empty, tf.constant(col.default, stored), value)
            out[name] = value
            continue
        parts = tf.strings.split(cell, sep=list_delimiter)
        parts = tf.ragged.boolean_mask(parts, tf.strings.length(parts) > 0)
        if stored != tf.string:
            parts = tf.strings.to_number(parts, out_type=stored)
        if col.shape == "list":
            out[name] = parts
        else:
            checks.append((tf.equal(parts.row_lengths(), col.length),
                           f"column '{name}' (read by {col.read_by}) must hold {col.length} values", None))
            out[name] = parts.to_tensor(shape=[None, col.length])
    return out, checks


def _value_checks(spec: Spec, columns: dict[str, RawColumn], values: dict) -> list:
    """(ok per record, message, value) for NaN/inf numbers and non-0/1 binary labels."""
    checks = []
    for name, col in columns.items():
        if col.dtype != "float32":
            continue
        finite = tf.math.is_finite(values[name])
        if col.shape == "vector":
            finite = tf.reduce_all(finite, axis=1)
        checks.append((finite, f"NaN or inf in column '{name}' (read by {col.read_by})", None))
    for label in spec.labels:
        if label.type != "binary":
            continue
        value = tf.cast(values[label.column], tf.float32)
        ok = tf.logical_or(tf.equal(value, 0.0), tf.equal(value, 1.0))
        checks.append((ok, f"binary label '{label.name}' (column '{label.column}') must be 0 or 1", value))
    return checks


def _id_checks(columns: dict[str, RawColumn], raw: dict) -> list:
    """(ok per record, message, value) for the id rule: int64 ids >= 0 or the column's declared default;
    no empty string inside a string sequence (the padding value)."""
    checks = []
    for name, col in columns.items():
        value = raw[name]
        if col.dtype == "int64":
            ok = value >= 0
            allowed = "ids are >= 0"
            if col.negative_default is not None:
                ok = tf.logical_or(ok, tf.equal(value, col.negative_default))
                allowed += f" or the declared default {col.negative_default}"
            shown = value
            if col.shape == "list":
                ok, shown = tf.reduce_all(ok, axis=1), tf.reduce_min(value, axis=1)
            checks.append((ok, f"negative id in column '{name}' (read by {col.read_by}): {allowed} "
                               f"({PAD_ID} pads sequences at serving)", shown))
        elif col.dtype == "string" and col.shape == "list":
            ok = tf.reduce_all(tf.strings.length(value) > 0, axis=1)
            checks.append((ok, f"empty string in sequence column '{name}' (read by {col.read_by}): "
                               "the empty string pads sequences at serving, so it cannot be an id", None))
    return checks


def _enforce(checks: list, origins: tf.Tensor) -> None:
    """Fail naming the first bad record of the first failed check: one fused test per batch; the
    failing record and its message are only gathered (in a cond branch) when something failed."""
    if not checks:
        return
    oks = tf.stack([ok for ok, _, _ in checks])  # [checks, B]

    def report() -> tf.Tensor:
        failed = tf.argmax(tf.cast(tf.reduce_any(tf.logical_not(oks), axis=1), tf.int32), output_type=tf.int32)
        row = tf.argmax(tf.cast(tf.logical_not(tf.gather(oks, failed)), tf.int32), output_type=tf.int32)
        messages = tf.constant([f"{message}; first bad record:" for _, message, _ in checks])
        empty = tf.fill(tf.shape(origins), "")
        values = tf.stack([empty if v is None else
                           tf.strings.join(["value: ", tf.strings.as_string(v, shortest=v.dtype.is_floating)])
                           for _, _, v in checks])
        assertion = tf.debugging.Assert(tf.constant(False), [messages[failed], origins[row], values[failed, row]])
        with tf.control_dependencies([assertion]):
            return tf.constant(False)

    tf.cond(tf.reduce_all(oks), lambda: tf.constant(True), report)
