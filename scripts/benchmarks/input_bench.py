"""Throughput of the input pipeline (examples/second), for `scripts/bench_input.py`.

Compares, over the same files and with the same reading and shuffling:

- ``batch->parse``: the real pipeline (`trainer.data.pipeline.make_pipeline`): records are
  batched, then parsed with one `tf.io.parse_example` per batch;
- ``parse->batch``: each record parsed on its own (`tf.io.parse_single_example`
  with the same description), then `padded_batch` (sequences rebuilt as ragged
  tensors from their lengths), then the same finishing step;

and, as ablations, what each stage of the real pipeline costs: without value
checks, without record ids (no error naming), reading only (no parsing), and the
former reader that zipped (record, path, index) per record, and parse->batch
with `ragged_batch` instead of `padded_batch`.

The formats compare the real pipeline on the same rows stored as TFRecord,
Parquet and CSV (`same_rows` rewrites TFRecord files; `on_files` binds a
variant to its own files).
"""
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import os

import tensorflow as tf

from trainer.data import parse as batch_parse
from trainer.data import records
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline, read_records, resolve_files
from trainer.data.probe import probe_files
from trainer.data.writers import Column, write_csv, write_parquet
from trainer.spec.columns import raw_columns
from trainer.spec.types import Spec


@dataclass(frozen=True)
class Rate:
    """Examples per second of one variant (best of the repeats), with every repeat's figure."""

    name: str
    per_second: float
    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def _rows(batch) -> int:
    if isinstance(batch, dict) and "sample_weight" in batch:
        return int(batch["sample_weight"].shape[0])
    first = tf.nest.flatten(batch, expand_composites=False)[0]
    return int(first.nrows()) if isinstance(first, tf.RaggedTensor) else int(first.shape[0])


def measure(dataset: tf.data.Dataset, seconds: float = 5.0, warmup_batches: int = 10) -> float:
    """Examples/second over `seconds` of iteration, after `warmup_batches` (the dataset must not end)."""
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    rows, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        rows += _rows(next(iterator))
    return rows / elapsed


def _endless(config: InputConfig) -> InputConfig:
    return replace(config, epochs=None)


def batch_then_parse(spec: Spec, files: list[str], config: InputConfig, fmt: str, compression: str,
                     **changes) -> tf.data.Dataset:
    """The real pipeline (with `changes` to its config)."""
    return make_pipeline(spec, files, _endless(replace(config, **changes)), fmt, compression).dataset


def parse_then_batch(spec: Spec, files: list[str], config: InputConfig, fmt: str, compression: str,
                     ragged: bool = False) -> tf.data.Dataset:
    """Same reading and shuffling as the pipeline, but one `parse_single_example` per record, then batching.

    Sequences come out of `parse_single_example` as 1-D tensors of varying length: they are batched
    with `padded_batch` (plus their lengths, to rebuild ragged tensors), or, with `ragged=True`,
    with `ragged_batch` (far slower: it converts every element to a ragged tensor first).
    """
    if fmt != "tfrecord":
        raise ValueError("parse->batch is only built for TFRecord files")
    config = _endless(config)
    plan = probe_files(spec, files, fmt, compression)
    columns = raw_columns(spec)
    lists = [n for n, c in columns.items() if c.shape == "list"] + list(batch_parse.scalars_to_fill(plan, columns))
    description = batch_parse.example_description(plan, columns)
    finish = batch_parse.batch_finisher(spec, config)
    paths = tf.constant(files)

    def parse_one(record: tf.Tensor, record_id: tf.Tensor):
        origin = records.record_origins(record_id, paths, fmt)
        raw = tf.io.parse_single_example(record, description, example_names=origin)
        return raw, {n: tf.size(raw[n], out_type=tf.int64) for n in lists}, origin

    def finish_batch(raw: dict, lengths: dict, origins: tf.Tensor) -> dict:
        if not ragged:
            raw = {**raw, **{n: tf.RaggedTensor.from_tensor(raw[n], lengths=lengths[n]) for n in lists}}
        return finish(raw, origins, batch_parse.fill_scalars(raw, plan, columns))

    dataset = _shuffled_records(files, plan, config)
    dataset = dataset.map(parse_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)
    if ragged:
        dataset = dataset.ragged_batch(config.batch_size, drop_remainder=config.drop_remainder)
    else:
        dataset = dataset.padded_batch(config.batch_size, drop_remainder=config.drop_remainder)
    dataset = dataset.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=config.deterministic)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _shuffled_records(files: list[str], plan, config: InputConfig) -> tf.data.Dataset:
    dataset = read_records(files, plan, config)
    if config.shuffle_buffer > 0:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed)
    return dataset.repeat(config.epochs)


def read_only(spec: Spec, files: list[str], config: InputConfig, fmt: str, compression: str) -> tf.data.Dataset:
    """Reading, record ids, shuffling and batching; no parsing (the pipeline's floor)."""
    config = _endless(config)
    plan = probe_files(spec, files, fmt, compression)
    return _shuffled_records(files, plan, config).batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def without_record_ids(spec: Spec, files: list[str], config: InputConfig, fmt: str,
                       compression: str) -> tf.data.Dataset:
    """The pipeline without record ids: read in chunks and unbatched, parsed without origins."""
    config = _endless(config)
    plan = probe_files(spec, files, fmt, compression)
    comp = records.tfrecord_compression(compression)
    parse = batch_parse.batch_parser(spec, plan, config, files)

    def read(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path, compression_type=comp).batch(256)

    dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=config.seed)
    dataset = dataset.interleave(read, cycle_length=min(config.cycle_length, len(files)),
                                 num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    if config.shuffle_buffer > 0:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed)
    dataset = dataset.repeat(config.epochs).batch(config.batch_size)
    # Every id 0: origins name the first file, so errors would name the wrong record; timing only.
    dataset = dataset.map(lambda records: parse(records, tf.zeros(tf.shape(records), tf.int64)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def zip_per_record(spec: Spec, files: list[str], config: InputConfig, fmt: str, compression: str) -> tf.data.Dataset:
    """The former reader: each file's records zipped one by one with (path, index), then the same parse."""
    config = _endless(config)
    plan = probe_files(spec, files, fmt, compression)
    comp = records.tfrecord_compression(compression)
    columns = raw_columns(spec)
    description = batch_parse.example_description(plan, columns)
    finish = batch_parse.batch_finisher(spec, config)

    def read(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.zip((tf.data.TFRecordDataset(path, compression_type=comp),
                                    tf.data.Dataset.from_tensors(path).repeat(),
                                    tf.data.Dataset.range(0, tf.int64.max)))

    def parse(records: tf.Tensor, paths: tf.Tensor, index: tf.Tensor) -> dict:
        origins = tf.strings.join([paths, tf.strings.as_string(index)], separator="#")
        return finish(tf.io.parse_example(records, description, example_names=origins), origins, [])

    dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=config.seed)
    dataset = dataset.interleave(read, cycle_length=min(config.cycle_length, len(files)),
                                 num_parallel_calls=tf.data.AUTOTUNE)
    if config.shuffle_buffer > 0:
        dataset = dataset.shuffle(config.shuffle_buffer, seed=config.seed)
    dataset = dataset.repeat(config.epochs).batch(config.batch_size)
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


Builder = Callable[[Spec, list[str], InputConfig, str, str], tf.data.Dataset]


def on_files(build: Builder, files: list[str], fmt: str, compression: str = "none") -> Builder:
    """`build` over its own files and format, whatever files `run` is given."""
    return lambda spec, _files, config, _fmt, _compression: build(spec, files, config, fmt, compression)


_COLUMN_TYPE = {"int64": "int", "float32": "float", "string": "str"}


def same_rows(spec: Spec, files: list[str], compression: str, out_dir: str, fmt: str) -> list[str]:
    """The rows of TFRecord `files` rewritten as `fmt` (parquet or csv) files, one per file, in the same order,
    with every column the spec reads (a value a record lacks stays missing: a null, an empty cell)."""
    plan = probe_files(spec, files, "tfrecord", compression)
    columns = raw_columns(spec)
    description = {name: tf.io.RaggedFeature(tf.as_dtype(plan.stored[name]), row_splits_dtype=tf.int64)
                   for name in columns}
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for k, path in enumerate(files):
        rows = tf.data.TFRecordDataset(path, compression_type=records.tfrecord_compression(compression))
        parsed = {name: [] for name in columns}
        for batch in rows.batch(4096):
            for name, value in tf.io.parse_example(batch, description).items():
                parsed[name] += value.to_list()
        table = []
        for name, col in columns.items():
            kind = _COLUMN_TYPE[plan.stored[name]]
            values = parsed[name]
            if kind == "str":
                values = [[v.decode() for v in row] for row in values]
            if col.shape == "scalar":
                table.append(Column(name, kind, [row[0] if row else None for row in values]))
            else:
                table.append(Column(name, f"{kind}_list", values))
        target = os.path.join(out_dir, f"part-{k:05d}.{fmt}")
        if fmt == "parquet":
            write_parquet(target, table, range(len(values)))
        else:
            write_csv(target, table, range(len(values)), spec.data.list_delimiter)
        out.append(target)
    return out

MAIN: dict[str, Builder] = {
    "batch->parse (pipeline)": batch_then_parse,
    "parse->batch": parse_then_batch,
}
ABLATIONS: dict[str, Builder] = {
    "parse->ragged_batch": lambda *a: parse_then_batch(*a, ragged=True),
    "pipeline, check_values=False": lambda *a: batch_then_parse(*a, check_values=False),
    "pipeline, no record ids": without_record_ids,
    "pipeline, per-record zip reader (old)": zip_per_record,
    "read+shuffle+batch only (no parse)": read_only,
}


def run(spec: Spec, patterns: str | Sequence[str], config: InputConfig, variants: dict[str, Builder],
        seconds: float = 5.0, repeats: int = 2, warmup_batches: int = 10,
        fmt: str | None = None, compression: str | None = None,
        report: Callable[[str], None] | None = None) -> list[Rate]:
    """Measure every variant `repeats` times, round-robin (so drifts hit all alike); best run wins."""
    fmt = fmt or spec.data.format
    compression = compression or spec.data.compression
    files = resolve_files(patterns)
    datasets = {name: build(spec, files, config, fmt, compression) for name, build in variants.items()}
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            runs[name].append(measure(dataset, seconds, warmup_batches))
            if report:
                report(f"  {name}: {runs[name][-1]:,.0f} ex/s")
    return [Rate(name, max(r), tuple(r)) for name, r in runs.items()]
