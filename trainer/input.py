"""The tf.data input pipeline: files -> batches of raw features, labels, weights, groups.

Records are read file-parallel (interleave) in small chunks, unbatched,
shuffled, batched, and only then parsed with one vectorised op per batch.
Every record carries an int64 id (file index and record / line number) from
which a parse error's origin (`file#record` or `file:line`) is rebuilt, so
errors name the file. Each element is a dict:

- ``features``: raw input columns keyed by column name (ids int64/string [B],
  numbers float32 [B], vectors float32 [B, dim], sequences ragged [B, None]
  or padded [B, max_length]);
- ``labels``: float32 [B] per label name;
- ``sample_weight``: float32 [B] (ones unless the spec names a weight column);
- ``group``: string [B], the group key columns joined by ``|`` ("" without one).
"""
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import tensorflow as tf

from trainer import corrupt
from trainer.columns import RawColumn, raw_columns
from trainer.errors import DataError
from trainer.schema_probe import ParsePlan, probe_files
from trainer.spec import Spec

PAD_ID, PAD_STRING = -1, ""  # padding of `pad_sequences` batches; never a valid id
RECORD_BITS = 40  # a record id is file_index << RECORD_BITS | record number (TFRecord) or line number (CSV)
_CHUNK = 256  # records read from a file per interleave step (then unbatched): far cheaper than one by one


@dataclass(frozen=True)
class InputConfig:
    """Knobs of the pipeline."""

    batch_size: int = 1024
    shuffle_buffer: int = 10_000  # records; 0 disables shuffling
    epochs: int | None = 1  # passes over the data; None repeats forever
    deterministic: bool = False  # fixed order and seeded shuffles (tests, reproducible runs)
    seed: int = 0  # seed of the shuffles
    num_workers: int = 1  # file-level sharding across workers
    worker_index: int = 0
    cycle_length: int = 4  # files read in parallel
    drop_remainder: bool = False  # drop the last partial batch
    pad_sequences: bool = False  # sequences as dense [B, max_length] padded with PAD_ID / PAD_STRING
    skip_corrupt: bool = False  # skip (and count) corrupt records instead of failing
    check_values: bool = True  # fail on NaN/inf numbers and non-0/1 binary labels


@dataclass
class InputPipeline:
    """A batched dataset plus what was found while building it."""

    spec: Spec
    files: list[str]
    plan: ParsePlan
    dataset: tf.data.Dataset
    skipped: list[corrupt.Skipped] = field(default_factory=list)

    @property
    def skipped_records(self) -> int:
        return sum(s.records for s in self.skipped)

    def __iter__(self) -> Iterator[dict]:
        with translate_errors(self.spec, self.files, self.plan):
            yield from self.dataset


def resolve_files(patterns: str | Sequence[str]) -> list[str]:
    """Sorted files matching glob pattern(s); fails naming a pattern that matches nothing."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise DataError(f"no files match {pattern}")
        files += matched
    return sorted(set(files))


def make_pipeline(spec: Spec, patterns: str | Sequence[str], config: InputConfig = InputConfig(),
                  fmt: str | None = None, compression: str | None = None) -> InputPipeline:
    """Build the pipeline over the files matching `patterns` (format defaults to the spec's)."""
    fmt = fmt or spec.data.format
    compression = compression or spec.data.compression
    files = resolve_files(patterns)
    if config.num_workers > 1 and len(files) < config.num_workers:
        raise DataError(f"{len(files)} file(s) cannot be sharded over {config.num_workers} workers; "
                        "write at least one file per worker")
    plan = probe_files(spec, files, fmt, compression)
    skipped = corrupt.scan(spec, plan, files) if config.skip_corrupt else []
    dataset = read_records(files, plan, config, skipped)
    if config.shuffle_buffer > 0:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed,
                                  reshuffle_each_iteration=not config.deterministic)
    dataset = dataset.repeat(config.epochs)
    dataset = dataset.batch(config.batch_size, drop_remainder=config.drop_remainder)
    parse = batch_parser(spec, plan, config, files)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)
    options = tf.data.Options()
    options.deterministic = config.deterministic
    dataset = dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
    return InputPipeline(spec, files, plan, dataset, skipped)


def read_records(files: list[str], plan: ParsePlan, config: InputConfig,
                 skipped: list[corrupt.Skipped] = ()) -> tf.data.Dataset:
    """(record, record id) pairs, read file-parallel; corrupt records in `skipped` are left out."""
    indexes = tf.data.Dataset.range(len(files))
    if config.num_workers > 1:
        indexes = indexes.shard(config.num_workers, config.worker_index)
    if config.shuffle_buffer > 0:
        indexes = indexes.shuffle(len(files), seed=config.seed, reshuffle_each_iteration=not config.deterministic)
    paths = tf.constant(files)
    keep = corrupt.keep_predicate(skipped, files)
    limit = corrupt.record_limits(skipped, files)

    @tf.autograph.experimental.do_not_convert
    def read(index: tf.Tensor) -> tf.data.Dataset:
        path = tf.gather(paths, index)
        if plan.format == "csv":
            lines = tf.data.TextLineDataset(path, compression_type=_compression(plan)).skip(1)
            first = 2  # line numbers, after the header
        else:
            lines = tf.data.TFRecordDataset(path, compression_type=_compression(plan))
            first = 0
            if limit is not None:
                lines = lines.take(limit.lookup(path))
        starts = tf.data.Dataset.range(index * (1 << RECORD_BITS) + first, tf.int64.max, _CHUNK)

        @tf.autograph.experimental.do_not_convert
        def number(chunk: tf.Tensor, start: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            ids = start + tf.range(tf.size(chunk, out_type=tf.int64))
            if keep is None:
                return chunk, ids
            kept = keep(ids)
            return tf.boolean_mask(chunk, kept), tf.boolean_mask(ids, kept)

        return tf.data.Dataset.zip((lines.batch(_CHUNK), starts)).map(number)

    chunks = indexes.interleave(read, cycle_length=min(config.cycle_length, len(files)),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)
    return chunks.unbatch()


def _compression(plan: ParsePlan) -> str:
    return "" if plan.compression == "none" else plan.compression


def record_origins(ids: tf.Tensor, files: list[str] | tf.Tensor, fmt: str) -> tf.Tensor:
    """`file#record` (TFRecord) or `file:line` (CSV) for record ids."""
    paths = tf.constant(files) if isinstance(files, list) else files
    return tf.strings.join([tf.gather(paths, ids // (1 << RECORD_BITS)),
                            tf.strings.as_string(ids % (1 << RECORD_BITS))], separator=":" if fmt == "csv" else "#")


def batch_parser(spec: Spec, plan: ParsePlan, config: InputConfig, files: list[str]):
    """The map function of the pipeline: (serialized records [B], record ids [B]) -> the batch dict."""
    columns = raw_columns(spec)
    finish = batch_finisher(spec, config)
    paths = tf.constant(files)
    description = example_description(plan, columns)

    @tf.autograph.experimental.do_not_convert  # plain Python control flow: tracing stays quick
    def parse(records: tf.Tensor, ids: tf.Tensor) -> dict:
        origins = record_origins(ids, paths, plan.format)
        if plan.format == "csv":
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
        checks.append((lengths <= 1, f"column '{name}' (read by {_users(columns[name])}) must hold one value", None))
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


def _users(col: RawColumn) -> str:
    return ", ".join(col.users)


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
                checks.append((tf.logical_not(empty), f"column '{name}' (needed by {_users(col)}) is empty; "
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
                           f"column '{name}' (read by {_users(col)}) must hold {col.length} values", None))
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
        checks.append((finite, f"NaN or inf in column '{name}' (read by {_users(col)})", None))
    for label in spec.labels:
        if label.type != "binary":
            continue
        value = tf.cast(values[label.column], tf.float32)
        ok = tf.logical_or(tf.equal(value, 0.0), tf.equal(value, 1.0))
        checks.append((ok, f"binary label '{label.name}' (column '{label.column}') must be 0 or 1", value))
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
                           tf.strings.join(["value: ", tf.strings.as_string(v, shortest=True)])
                           for _, _, v in checks])
        assertion = tf.debugging.Assert(tf.constant(False), [messages[failed], origins[row], values[failed, row]])
        with tf.control_dependencies([assertion]):
            return tf.constant(False)

    tf.cond(tf.reduce_all(oks), lambda: tf.constant(True), report)


@contextmanager
def translate_errors(spec: Spec, files: list[str], plan: ParsePlan):
    """Turn TensorFlow data errors raised while iterating into DataErrors that name the file."""
    try:
        yield
    except tf.errors.DataLossError as exc:
        raise corrupt.describe_corruption(spec, plan, files, exc) from None
    except tf.errors.InvalidArgumentError as exc:
        raise _data_error(spec, files, plan, exc) from None


_ASSERTION = re.compile(r"assertion failed: \[(?P<what>.*?); first bad record:\] \[(?P<origin>[^\]]*)\]"
                        r"(?: \[value: (?P<value>[^\]]*)\])?")
_NAMED = re.compile(r"Name: (?P<origin>.+?), (?:Feature|Key): (?P<column>[^\s,]+)(?:,? Index: \d+\.)?\s*(?P<detail>.*)")


def _data_error(spec: Spec, files: list[str], plan: ParsePlan, exc: tf.errors.OpError) -> DataError:
    message = corrupt.clean_message(exc.message)
    if m := _ASSERTION.search(message):
        what = m["what"].replace("\\'", "'")
        return DataError(f"{m['origin']}: {what}" + (f" (value: {m['value']})" if m["value"] else ""))
    if m := _NAMED.search(message):
        col = raw_columns(spec).get(m["column"])
        users = f" (needed by {_users(col)})" if col else ""
        detail = re.sub(r"\s+", " ", m["detail"]).strip()
        if "required but could not be found" in detail:
            return DataError(f"{m['origin']}: column '{m['column']}'{users} is missing from the record; "
                             "every record must carry it, or the spec must declare a default")
        return DataError(f"{m['origin']}: column '{m['column']}'{users}: {detail}")
    # No record named (e.g. an unparsable CSV line or tf.Example): find the file by scanning.
    return corrupt.describe_corruption(spec, plan, files, exc)


__all__ = ["InputConfig", "InputPipeline", "make_pipeline", "resolve_files", "translate_errors", "PAD_ID",
           "PAD_STRING"]
