"""Input pipeline throughput (examples/second): batch->parse (the pipeline) vs parse->batch, and by format.

Measures, on (i) KuaiRand TFRecords and (ii) synthetic data for a spec with
million-row vocabularies, the real pipeline against per-record parsing, and the
real pipeline on the same rows stored as Parquet and as CSV, in the same run and
after a warm-up (ratios against the TFRecord pipeline); `--ablations` also times
the pipeline without value checks, without record ids, reading only, and with the
former per-record zip reader.

Examples:
    .venv/bin/python scripts/bench_input.py
    .venv/bin/python scripts/bench_input.py --kuairand-dir out/kuairand/tfrecord --ablations
    .venv/bin/python scripts/bench_input.py --only synthetic --synthetic-rows 500000
    .venv/bin/python scripts/bench_input.py --formats parquet   # Parquet beside TFRecord, no CSV
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)
from benchmarks import input_bench
from benchmarks.input_bench import batch_then_parse, on_files, same_rows
from trainer.data.datasets.kuairand import convert_kuairand
from trainer.data.datasets.synthetic import generate
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import resolve_files
from trainer.errors import DataError
from trainer.spec import load_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUAIRAND_OUT = os.path.join(ROOT, "out", "kuairand", "tfrecord")  # where the demo writes the converted data


def _kuairand_files(args, scratch: str) -> str:
    """Glob of the KuaiRand TFRecords: --kuairand-dir, else out/kuairand/tfrecord, else converted now."""
    directory = args.kuairand_dir or KUAIRAND_OUT
    pattern = os.path.join(directory, "date=*", "*.tfrecord.gz")
    if args.kuairand_dir or resolve_glob(pattern):
        return pattern
    directory = os.path.join(scratch, "kuairand")
    print(f"converting {args.kuairand_src} into {directory} (no TFRecords under out/kuairand/tfrecord) ...",
          flush=True)
    start = time.perf_counter()
    result = convert_kuairand(args.kuairand_src, directory, max_rows=args.kuairand_rows)
    print(f"  {result.rows:,} rows in {time.perf_counter() - start:.0f} s", flush=True)
    return os.path.join(directory, "date=*", "*.tfrecord.gz")


def resolve_glob(pattern: str) -> list[str]:
    try:
        return resolve_files(pattern)
    except DataError:  # nothing matches
        return []


def _synthetic_files(args, spec, scratch: str, fmt: str = "tfrecord") -> str:
    """Glob of the synthetic rows as `fmt` (TFRecord in the folder, Parquet and CSV in sub-folders)."""
    base = args.synthetic_dir or os.path.join(scratch, "synthetic")
    directory = base if fmt == "tfrecord" else os.path.join(base, fmt)
    if resolve_glob(os.path.join(directory, "part-*")):
        return os.path.join(directory, "part-*")
    print(f"generating {args.synthetic_rows:,} synthetic rows for {spec.name} into {directory} ...", flush=True)
    start = time.perf_counter()
    generate(spec, args.synthetic_rows, directory, fmt=fmt, n_shards=4, seed=0)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return os.path.join(directory, "part-*")


def bench(title: str, spec, pattern: str, args, fmt: str, compression: str,
          other_formats: dict[str, list[str]]) -> None:
    """Time the variants on `pattern`'s files and the pipeline on the same rows in `other_formats` (format ->
    files); print examples/s and the ratios."""
    files = resolve_files(pattern)
    config = InputConfig(batch_size=args.batch_size, shuffle_buffer=args.shuffle_buffer)
    variants = dict(input_bench.MAIN)
    for other, other_files in other_formats.items():
        variants[f"pipeline, {other}"] = on_files(batch_then_parse, other_files, other)
    if args.ablations:
        variants.update(input_bench.ABLATIONS)
    print(f"\n== {title}: {len(files)} file(s) ({fmt}, {compression}), {len(spec.columns)} columns, "
          f"batch {args.batch_size}, shuffle {args.shuffle_buffer}, {os.cpu_count()} CPU(s); "
          f"{args.repeats} x {args.seconds:g} s per variant after {args.warmup} warm-up batches", flush=True)
    rates = input_bench.run(spec, files, config, variants, seconds=args.seconds, repeats=args.repeats,
                            warmup_batches=args.warmup, fmt=fmt, compression=compression,
                            report=print if args.verbose else None)
    width = max(len(r.name) for r in rates)
    for r in rates:
        runs = ", ".join(f"{x:,.0f}" for x in r.runs)
        print(f"  {r.name:<{width}}  {r.per_second:>9,.0f} ex/s   (runs: {runs})")
    by_name = {r.name: r.per_second for r in rates}
    fast, slow = by_name["batch->parse (pipeline)"], by_name["parse->batch"]
    print(f"  ratio batch->parse / parse->batch: {fast / slow:.1f}x", flush=True)
    for other in other_formats:
        print(f"  ratio pipeline {other} / pipeline {fmt}: {by_name[f'pipeline, {other}'] / fast:.2f}x", flush=True)


def _rewritten(spec, pattern: str, compression: str, scratch: str, name: str, formats: list[str]) -> dict:
    """The rows of the TFRecords matching `pattern` as each of `formats`: format -> files."""
    out = {}
    for fmt in formats:
        start = time.perf_counter()
        out[fmt] = same_rows(spec, resolve_files(pattern), compression, os.path.join(scratch, name, fmt), fmt)
        print(f"rewrote the {name} rows as {fmt} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("kuairand", "synthetic"), help="run one benchmark only")
    parser.add_argument("--kuairand-dir", help="converted KuaiRand TFRecords (date=*/*.tfrecord.gz); default "
                                               "out/kuairand/tfrecord, converted into a temp dir if absent")
    parser.add_argument("--kuairand-src", default=os.path.join(ROOT, "data", "kuairand"),
                        help="KuaiRand parquet files, to convert when no TFRecords exist")
    parser.add_argument("--kuairand-rows", type=int, default=None, help="convert only this many rows")
    parser.add_argument("--synthetic-spec", default=os.path.join(ROOT, "feature_specs", "synthetic_large.yaml"))
    parser.add_argument("--synthetic-rows", type=int, default=200_000)
    parser.add_argument("--synthetic-dir", help="reuse (or write) synthetic shards here instead of a temp dir")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--shuffle-buffer", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per variant and repeat")
    parser.add_argument("--repeats", type=int, default=2, help="round-robin repeats; the best run is reported")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up batches before timing")
    parser.add_argument("--ablations", action="store_true", help="also time what each pipeline stage costs")
    parser.add_argument("--verbose", action="store_true", help="print every run as it finishes")
    parser.add_argument("--formats", default="parquet,csv",
                        help="formats timed beside TFRecord on the same rows (comma-separated; '' for none)")
    args = parser.parse_args(argv)

    formats = [f for f in args.formats.split(",") if f]
    scratch = tempfile.mkdtemp(prefix="bench_input_")
    try:
        if args.only in (None, "kuairand"):
            spec = load_spec(os.path.join(ROOT, "feature_specs", "kuairand.yaml"))
            pattern = _kuairand_files(args, scratch)
            others = _rewritten(spec, pattern, "GZIP", scratch, "kuairand", formats)
            bench("KuaiRand", spec, pattern, args, "tfrecord", "GZIP", others)
        if args.only in (None, "synthetic"):
            spec = load_spec(args.synthetic_spec)
            pattern = _synthetic_files(args, spec, scratch)
            others = {fmt: resolve_files(_synthetic_files(args, spec, scratch, fmt)) for fmt in formats}
            bench(f"synthetic ({spec.name})", spec, pattern, args, "tfrecord", "GZIP", others)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
