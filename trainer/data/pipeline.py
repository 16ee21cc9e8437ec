"""The tf.data input pipeline: files -> batches of raw features, labels, weights, groups.

Records are read file-parallel (interleave) in small chunks, unbatched,
shuffled, batched, and only then parsed with one vectorised op per batch.
Parquet files are read by row group (`trainer.data.parquet`): the unit of
work, of sharding and of the interleave is a (file, row group) pair, and a
record is a row packed into a few tensors, unpacked once per batch.
Every record carries an int64 id (file index and record / line / row number)
from which a parse error's origin (`file#record`, `file:line` or `file#row N`)
is rebuilt, so errors name the file. Each element is a dict:

- ``features``: raw input columns keyed by column name (ids int64/string [B],
  numbers float32 [B], vectors float32 [B, dim], sequences ragged [B, None]
  or padded [B, max_length]);
- ``labels``: float32 [B] per label name;
- ``sample_weight``: float32 [B] (ones unless the spec names a weight column);
- ``group``: string [B], the group key columns joined by ``|`` ("" without one).
"""
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import tensorflow as tf

from trainer.data import corrupt, parquet
from trainer.data.input_config import InputConfig
from trainer.data.parse import batch_parser
from trainer.data.probe import ParsePlan, probe_files
from trainer.data.read_errors import translate_errors
from trainer.data.records import RECORD_BITS, tfrecord_compression
from trainer.errors import DataError
from trainer.spec.columns import raw_columns
from trainer.spec.types import Spec

_CHUNK = 256  # records read from a file per interleave step (then unbatched): far cheaper than one by one


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
                  fmt: str | None = None, compression: str | None = None,
                  probed: InputPipeline | None = None) -> InputPipeline:
    """Build the pipeline over the files matching `patterns` (format defaults to the spec's; the compression
    too, for TFRecord and CSV: Parquet compresses inside its files). `probed`: an earlier pipeline over the same
    files, whose files, probe and corrupt records are reused instead of reading the files again (a pipeline
    built inside a tf.function, e.g. on a parameter-server job's workers, cannot probe them)."""
    if probed is not None:
        files, plan, skipped = probed.files, probed.plan, probed.skipped
    else:
        fmt = fmt or spec.data.format
        compression = compression or spec.data.compression
        files = resolve_files(patterns)
        plan = probe_files(spec, files, fmt, compression, skip_corrupt=config.skip_corrupt)
        skipped = corrupt.scan(spec, plan, files) if config.skip_corrupt else []
    dataset = read_records(files, plan, config, skipped, raw_columns(spec))
    if config.shuffle_buffer > 0:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed,
                                  reshuffle_each_iteration=not config.deterministic)
    dataset = dataset.repeat(config.epochs)
    dataset = dataset.batch(config.batch_size, drop_remainder=config.drop_remainder)
    parse = batch_parser(spec, plan, config, files)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)
    options = tf.data.Options()
    options.deterministic = config.deterministic
    if plan.format == "parquet":
        # Row groups are read by a tf.py_function, stateful to TensorFlow, which refuses to checkpoint an iterator
        # over it by default. The read is a pure function of its (file, row group) input, which the iterator's
        # state holds: a restore reads the same rows again. So the iterator may be saved (training resumes).
        options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    dataset = dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
    return InputPipeline(spec, files, plan, dataset, skipped)


def read_records(files: list[str], plan: ParsePlan, config: InputConfig,
                 skipped: list[corrupt.Skipped] = (), columns: dict | None = None) -> tf.data.Dataset:
    """(record, record id) pairs, read file-parallel; corrupt records in `skipped` are left out.

    A record is a serialized tf.Example, a CSV line or a packed Parquet row (which needs the spec's
    `columns`, `trainer.spec.columns.raw_columns`)."""
    if plan.format == "parquet":
        index = {path: i for i, path in enumerate(files)}
        skipped_groups = {index[s.file]: set(s.row_groups) for s in skipped if s.file in index}
        return parquet.read_rows(files, columns, plan.stored, plan.row_groups, config, skipped_groups)
    if config.num_workers > 1 and len(files) < config.num_workers:
        raise DataError(f"{len(files)} file(s) cannot be sharded over {config.num_workers} workers; "
                        "write at least one file per worker")
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
            lines = tf.data.TextLineDataset(path, compression_type=tfrecord_compression(plan.compression)).skip(1)
            first = 2  # line numbers, after the header
        else:
            lines = tf.data.TFRecordDataset(path, compression_type=tfrecord_compression(plan.compression))
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
