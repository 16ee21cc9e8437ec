"""Parameter-server scale: step time and memory of the job on a loopback cluster (a chief, 2 workers, 2 parameter
servers; real processes) with one id table of 100k, 1M and 10M rows, same batch; logic in benchmarks/scale_bench.py.

Prints, for each table size: the table's shards, the step time (and its ratio to the smallest table's: the issue's
target is 10M / 100k at most 1.5), examples/s, the peak RSS of each task against the table's bytes with FTRL's two
slots; and the same data trained on one machine (no TF_CONFIG) and on two workers under MultiWorkerMirroredStrategy
(`--mirrored`) for examples/s. On 2 cores every process of the cluster competes for the same CPUs: the figures
are as measured, not a cluster's.

Example:
    .venv/bin/python scripts/bench_scale.py                      # about 10 minutes on 2 cores
    .venv/bin/python scripts/bench_scale.py --sizes 100000,1000000 --steps 60
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trainer  # noqa: F401,E402  (legacy Keras before TensorFlow)

from benchmarks import scale_bench as sb  # noqa: E402
from trainer.data.datasets.synthetic import generate  # noqa: E402
from trainer.spec import load_spec  # noqa: E402
from trainer.spec.table_size import training_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="rows of the video table, comma-separated")
    parser.add_argument("--rows", type=int, default=20000, help="synthetic training rows per size")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--no-single", action="store_true", help="skip the single-machine runs")
    parser.add_argument("--mirrored", action="store_true", help="also run each size on 2 workers under "
                        "MultiWorkerMirroredStrategy")
    parser.add_argument("--steps-per-call", type=int, default=10, help="training.steps_per_call (steps a "
                        "scheduled call trains on a worker)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for rows in sizes:
            root = os.path.join(tmp, str(rows))
            os.makedirs(root)
            spec = os.path.join(root, "spec.yaml")
            with open(spec, "w") as fh:
                fh.write(sb.spec_text(rows))
            generate(load_spec(spec), args.rows, os.path.join(root, "data"), n_shards=4, seed=1)
            data = os.path.join(root, "data", "part-*")
            setups = ["ps"] + ([] if args.no_single else ["single"]) + (["mirrored"] if args.mirrored else [])
            for setup in setups:
                label = f"{rows:,} rows, {sb.SETUPS[setup]}"
                work = os.path.join(root, setup)
                job_args = sb.train_args(spec, data, os.path.join(work, "model"), args.batch, args.steps,
                                         args.log_every, args.steps_per_call)
                run = sb.job(label, job_args, work, args.batch, setup)
                print(f"{label}: {run.step_ms:.1f} ms/step, {run.examples_per_sec:,.0f} examples/s, peak RSS MB "
                      + ", ".join(f"{k} {v:,.0f}" for k, v in run.peak_rss_mb.items()) + f"; {run.shards}",
                      flush=True)
                results.append((rows, setup, run))
    print(f"\nbatch {args.batch}, {args.steps} steps (the first log window left out), dim {sb.DIM}; table bytes "
          "with FTRL's two slots (weights x 3)")
    base = {setup: r.step_ms for rows, setup, r in results if rows == sizes[0]}
    print(f"{'rows':>12} {'setup':>16} {'ms/step':>8} {'x smallest':>10} {'ex/s':>8} {'table MB':>9} "
          f"{'chief MB':>9} {'workers MB':>11} {'ps MB':>11}")
    for rows, setup, run in results:
        p = run.peak_rss_mb
        workers = "/".join(f"{p[k]:,.0f}" for k in ("worker0", "worker1") if k in p) or "-"
        ps = "/".join(f"{p[k]:,.0f}" for k in ("ps0", "ps1") if k in p) or "-"
        print(f"{rows:>12,} {sb.SETUPS[setup]:>16} {run.step_ms:>8.1f} {run.step_ms / base[setup]:>10.2f} "
              f"{run.examples_per_sec:>8,.0f} {training_bytes(rows, sb.DIM) / 2**20:>9,.0f} {p['chief']:>9,.0f} "
              f"{workers:>11} {ps:>11}")
    rate = {(rows, setup): r.examples_per_sec for rows, setup, r in results}
    for rows in sizes:
        for other in ("single", "mirrored"):
            if (rows, other) in rate:
                print(f"{rows:,} rows: PS cluster / {sb.SETUPS[other]} examples/s = "
                      f"{rate[rows, 'ps'] / rate[rows, other]:.2f}")


if __name__ == "__main__":
    main()
