"""Conversion rate (impressions/s) and peak memory of `prerank convert` on synthetic raw tables.

Writes raw, unjoined tables shaped like the sample's (`feature_specs/sample.yaml`: impressions with a time,
users, items) with --rows impressions and large id tables (streamed: bounded memory), then converts them as the
README's "Bring your own data" commands do (joins, derived date / hour / label, two histories, partitions by
date), each variant in a process of its own:

- parquet, the default 2GB engine memory limit;
- tfrecord (GZIP), the same limit;
- parquet with a small engine memory limit (--small-memory): the joins, windows and sort spill to disk;
- parquet without the histories (their cost).

For each: seconds, impressions/s, the process's peak RSS, the engine's peak memory and spilled bytes, output
size. Then the tf.Example encoder against the per-row writer it replaced, on the same rows (ratio).
Logic in `scripts/benchmarks/convert_bench.py`.

Examples:
    .venv/bin/python scripts/bench_convert.py                         # 5M impressions (about 10 minutes here)
    .venv/bin/python scripts/bench_convert.py --rows 500000 --keep /tmp/raw5m
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

from benchmarks import convert_bench as cb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "feature_specs", "sample.yaml")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="impressions (default 5,000,000)")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--small-memory", default="512MB", help="the out-of-core variant's engine memory limit")
    parser.add_argument("--threads", type=int, help="engine threads (default: one per core)")
    parser.add_argument("--keep", help="folder for the raw tables, kept (and reused when it holds them)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(cb.run_child(json.loads(args.child))))
        return

    scratch = tempfile.mkdtemp(prefix="bench_convert_")
    try:
        tables = args.keep or os.path.join(scratch, "raw")
        if not os.path.isfile(os.path.join(tables, "impressions.parquet")):
            from trainer.data.datasets.synthetic import generate_tables
            from trainer.spec import load_spec
            print(f"writing {args.rows:,} impressions, {args.users:,} users, {args.items:,} items -> {tables}",
                  flush=True)
            start = time.perf_counter()
            generate_tables(load_spec(SPEC), args.rows, tables, derived=cb.SAMPLE_DERIVED,
                            cardinalities={"user": args.users, "video": args.items, "author": args.items // 5})
            print(f"  {time.perf_counter() - start:.0f} s, generator peak RSS "
                  f"{cb.self_peak_rss() / 2**20:,.0f} MiB", flush=True)
        raw_bytes = sum(os.path.getsize(os.path.join(tables, f)) for f in os.listdir(tables))
        variants = [cb.Variant("parquet", "parquet", "2GB"), cb.Variant("tfrecord (GZIP)", "tfrecord", "2GB"),
                    cb.Variant(f"parquet, engine limit {args.small_memory}", "parquet", args.small_memory),
                    cb.Variant("parquet, no histories", "parquet", "2GB", histories=False)]
        imports = cb.measure(os.path.abspath(__file__), [], cb.Variant("imports only", "", ""))
        assert isinstance(imports, cb.Measured), imports
        results = []
        for k, variant in enumerate(variants):
            out = os.path.join(scratch, f"out{k}")
            print(f"converting: {variant.name} ...", flush=True)
            results.append(cb.measure(os.path.abspath(__file__),
                                      cb.convert_command(SPEC, tables, out, variant, args.threads), variant))
            shutil.rmtree(out, ignore_errors=True)
        print(f"\n{args.rows:,} impressions ({raw_bytes / 2**20:,.0f} MiB of raw Parquet), {os.cpu_count()} cores:")
        print("| variant | seconds | impressions/s | process peak RSS | engine peak | engine spilled | output |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for variant, r in zip(variants, results):
            if not isinstance(r, cb.Measured):
                print(f"| {variant.name} | failed: {r} | | | | | |")
                continue
            print(f"| {r.variant.name} | {r.seconds:,.1f} | {r.rate:,.0f} | {r.process_peak_rss / 2**20:,.0f} MiB | "
                  f"{r.engine_peak / 2**20:,.0f} MiB | {r.engine_spilled / 2**20:,.0f} MiB | "
                  f"{r.output_bytes / 2**20:,.0f} MiB in {r.files} files |")
        print(f"The process's RSS includes {imports.process_peak_rss / 2**20:,.0f} MiB of imports (TensorFlow, "
              "DuckDB, pyarrow: a process that imports and converts nothing).")
        base = results[0]
        for r in results[1:]:
            if isinstance(r, cb.Measured) and isinstance(base, cb.Measured):
                print(f"{r.variant.name} / parquet: {r.seconds / base.seconds:.2f}x the time")
        new, old = cb.encoder_rates()
        print(f"tf.Example encoding, 50,000 rows of 11 columns: vectorised {new:,.0f} rows/s, per-row writer "
              f"{old:,.0f} rows/s ({new / old:.1f}x)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
