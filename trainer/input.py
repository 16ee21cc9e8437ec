"""The tf.data input pipeline: files -> batches of raw features, labels, weights, groups.

Records are read file-parallel (interleave), shuffled, batched, and only then
parsed with one vectorised op per batch. Every record carries its origin
(`file#record` or `file:line`) so a parse error names the file. Each element
is a dict:

- ``features``: raw input columns keyed by column name (ids int64/string [B],
  numbers float32 [B], vectors float32 [B, dim], sequences ragged [B, None]
  or padded [B, max_length]);
- ``labels``: float32 [B] per label name;
- ``sample_weight``: float32 [B] (ones unless the spec names a weight column);
- ``group``: string [B], the group key columns joined by ``|`` ("" without one).
"""
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
    dataset = _records(files, plan, config, skipped)
    if config.shuffle_buffer > 0:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed,
                                  reshuffle_each_iteration=not config.deterministic)
    dataset = dataset.repeat(config.epochs)
    dataset = dataset.batch(config.batch_size, drop_remainder=config.drop_remainder)
    parse = _batch_parser(spec, plan, config)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)
    options = tf.data.Options()
    options.deterministic = config.deterministic
    dataset = dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
    return InputPipeline(spec, files, plan, dataset, skipped)


def _records(files: list[str], plan: ParsePlan, config: InputConfig,
             skipped: list[corrupt.Skipped]) -> tf.data.Dataset:
    """(record, origin file, record index) triples, read file-parallel."""
    names = tf.data.Dataset.from_tensor_slices(files)
    if config.num_workers > 1:
        names = names.shard(config.num_workers, config.worker_index)
    if config.shuffle_buffer > 0:
        names = names.shuffle(len(files), seed=config.seed, reshuffle_each_iteration=not config.deterministic)
    keep = corrupt.keep_predicate(skipped)
    limit = corrupt.record_limits(skipped, files)

    def read(path: tf.Tensor) -> tf.data.Dataset:
        if plan.format == "csv":
            lines = tf.data.TextLineDataset(path, compression_type=_compression(plan)).skip(1)
            first = 2  # line numbers, after the header
        else:
            lines = tf.data.TFRecordDataset(path, compression_type=_compression(plan))
            first = 0
            if limit is not None:
                lines = lines.take(limit.lookup(path))
        triples = tf.data.Dataset.zip((lines, tf.data.Dataset.from_tensors(path).repeat(),
                                       tf.data.Dataset.range(first, tf.int64.max)))
        return triples.filter(keep) if keep is not None else triples

    return names.interleave(read, cycle_length=min(config.cycle_length, len(files)),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)


def _compression(plan: ParsePlan) -> str:
    return "" if plan.compression == "none" else plan.compression


def _batch_parser(spec: Spec, plan: ParsePlan, config: InputConfig):
    columns = raw_columns(spec)
    max_length: dict[str, int] = {}
    for f in spec.features:
        if f.kind == "sequence":
            max_length[f.columns[0]] = max(max_length.get(f.columns[0], 0), f.max_length)

    def parse(records: tf.Tensor, paths: tf.Tensor, index: tf.Tensor) -> dict:
        sep = ":" if plan.format == "csv" else "#"
        origins = tf.strings.join([paths, tf.strings.as_string(index)], separator=sep)
        raw = _parse_csv(records, plan, columns, spec.data.list_delimiter) if plan.format == "csv" \
            else _parse_examples(records, origins, plan, columns)
        values: dict[str, tf.Tensor] = {}
        for name, col in columns.items():
            value = raw[name]
            if col.shape == "list":
                value = value[:, -max_length[name]:] if spec_keep_last(spec, name) else value[:, :max_length[name]]
                if config.pad_sequences:
                    pad = PAD_STRING if col.dtype == "string" else PAD_ID
                    value = value.to_tensor(default_value=pad, shape=[None, max_length[name]])
            elif col.dtype == "float32":
                value = tf.cast(value, tf.float32)
            values[name] = value
        if config.check_values:
            _check_values(spec, columns, values, origins)
        labels = {label.name: tf.cast(values[label.column], tf.float32) for label in spec.labels}
        weight = values[spec.sample_weight] if spec.sample_weight else tf.ones_like(origins, tf.float32)
        if spec.group_key:
            group = tf.strings.join([_as_string(values[c]) for c in spec.group_key], separator="|")
        else:
            group = tf.fill(tf.shape(origins), "")
        features = {n: values[n] for n, c in columns.items() if c.is_input}
        return {"features": features, "labels": labels, "sample_weight": weight, "group": group}

    return parse


def spec_keep_last(spec: Spec, column: str) -> bool:
    """Whether sequences in `column` keep their most recent (last) ids."""
    return next(f.keep for f in spec.features if f.kind == "sequence" and f.columns[0] == column) == "last"


def _as_string(value: tf.Tensor) -> tf.Tensor:
    return value if value.dtype == tf.string else tf.strings.as_string(value)


def _parse_examples(records: tf.Tensor, origins: tf.Tensor, plan: ParsePlan,
                    columns: dict[str, RawColumn]) -> dict[str, tf.Tensor]:
    description = {}
    for name, col in columns.items():
        stored = tf.as_dtype(plan.stored[name])
        if col.shape == "list":
            description[name] = tf.io.RaggedFeature(stored, row_splits_dtype=tf.int64)
        elif col.shape == "vector":
            description[name] = tf.io.FixedLenFeature([col.length], stored)
        else:
            default = None if col.default is None else tf.constant(col.default, stored)
            description[name] = tf.io.FixedLenFeature([], stored, default_value=default)
    return tf.io.parse_example(records, description, example_names=origins)


def _parse_csv(lines: tf.Tensor, plan: ParsePlan, columns: dict[str, RawColumn],
               list_delimiter: str) -> dict[str, tf.Tensor]:
    order = sorted(columns, key=lambda n: plan.csv_index[n])
    defaults = []
    for name in order:
        col = columns[name]
        stored = tf.as_dtype(plan.stored[name])
        if col.shape != "scalar":
            defaults.append(tf.constant([""], tf.string))  # may be empty: an empty list
        elif col.default is not None:
            defaults.append(tf.constant([col.default], stored))
        else:
            defaults.append(tf.constant([], stored))  # required
    cells = tf.io.decode_csv(lines, defaults, select_cols=[plan.csv_index[n] for n in order])
    out = {}
    for name, cell in zip(order, cells):
        col = columns[name]
        if col.shape == "scalar":
            out[name] = cell
            continue
        parts = tf.strings.split(cell, sep=list_delimiter)
        parts = tf.ragged.boolean_mask(parts, tf.strings.length(parts) > 0)
        if col.dtype != "string":
            parts = tf.strings.to_number(parts, out_type=tf.as_dtype(plan.stored[name]))
        out[name] = parts if col.shape == "list" else parts.to_tensor(shape=[None, col.length])
    return out


def _check_values(spec: Spec, columns: dict[str, RawColumn], values: dict, origins: tf.Tensor) -> None:
    """Fail (naming the column, its users and the first bad record) on NaN/inf and non-0/1 binary labels."""
    for name, col in columns.items():
        if col.dtype != "float32":
            continue
        value = values[name]
        finite = tf.math.is_finite(value)
        if col.shape == "vector":
            finite = tf.reduce_all(finite, axis=1)
        tf.debugging.Assert(tf.reduce_all(finite), [
            f"NaN or inf in column '{name}' (read by {', '.join(col.users)}); first bad record:",
            tf.boolean_mask(origins, tf.logical_not(finite))[:1]], summarize=1)
    for label in spec.labels:
        if label.type != "binary":
            continue
        value = tf.cast(values[label.column], tf.float32)
        ok = tf.logical_or(tf.equal(value, 0.0), tf.equal(value, 1.0))
        tf.debugging.Assert(tf.reduce_all(ok), [
            f"binary label '{label.name}' (column '{label.column}') must be 0 or 1; first bad record:",
            tf.boolean_mask(origins, tf.logical_not(ok))[:1], "value:",
            tf.boolean_mask(value, tf.logical_not(ok))[:1]], summarize=1)


@contextmanager
def translate_errors(spec: Spec, files: list[str], plan: ParsePlan):
    """Turn TensorFlow data errors raised while iterating into DataErrors that name the file."""
    try:
        yield
    except tf.errors.DataLossError as exc:
        raise corrupt.describe_corruption(spec, plan, files, exc) from None
    except tf.errors.InvalidArgumentError as exc:
        message = _useful_line(exc.message)
        if plan.format == "csv" and "Name:" not in message and "first bad record" not in message:
            raise corrupt.describe_corruption(spec, plan, files, exc) from None
        raise DataError(message) from None


def _useful_line(message: str) -> str:
    """The part of a TF error message that says what is wrong (drops op names and tracebacks)."""
    for line in message.splitlines():
        line = line.strip()
        if "Name:" in line or "first bad record" in line or "Expect" in line:
            return line.split(" [[")[0].replace("{{function_node", "").strip()
    return message.splitlines()[0] if message else "data error"


__all__ = ["InputConfig", "InputPipeline", "make_pipeline", "resolve_files", "translate_errors", "PAD_ID",
           "PAD_STRING"]
