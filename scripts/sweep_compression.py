"""Sweep how an export stores its tables on KuaiRand: one trained model, exported float32 unpruned, float32
zero-pruned, float16, int8 (every table, and small tables float32), int8 with usage pruning at a few thresholds,
and student-only; each export's student AUC and table bytes, and the serving latency of int8 against float32.

Trains on the tuning split (04-25..28) and scores on the validation day (04-29); 04-30 stays held out. The
model directory resumes if the sweep is killed; the exports go to OUT/exports (new versions each run).

    python scripts/sweep_compression.py --out runs/compression_sweep
"""
import argparse
import json
import os
import subprocess
import sys

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
from benchmarks.compression_sweep import VARIANTS, export_variant, latency, latency_table, measure_export, \
    student_labels, sweep_table, trained_table_bytes
from trainer.spec import load_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=os.path.join(REPO, "feature_specs", "kuairand.yaml"))
    parser.add_argument("--train", default=os.path.join(REPO, "out/kuairand/tfrecord/date=2022042[5-8]/*.tfrecord.gz"))
    parser.add_argument("--validation", default=os.path.join(REPO, "out/kuairand/tfrecord/date=20220429/*.tfrecord.gz"))
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "compression_sweep"))
    parser.add_argument("--set", action="append", default=[], help="extra training overrides")
    parser.add_argument("--candidates", type=int, default=1000, help="candidates per prerank call")
    parser.add_argument("--reps", type=int, default=300, help="timed calls per signature and export")
    args = parser.parse_args()
    if "20220430" in args.train + args.validation:
        raise SystemExit("04-30 is held out: tune on 04-25..28 and score on 04-29")
    spec = load_spec(args.spec)
    model_dir = os.path.join(args.out, "model")
    overrides = ["training.progress=false", *args.set]
    command = [sys.executable, "-m", "trainer.task", args.spec, "--model-dir", model_dir, "--data", args.train,
               "--validation", args.validation] + [a for o in overrides for a in ("--set", o)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    trained_bytes = trained_table_bytes(spec, model_dir, args.validation)
    print(f"student tables: {', '.join(student_labels(spec, list(trained_bytes)))}", flush=True)
    base = os.path.join(args.out, "exports")
    points, paths = [], {}
    for variant in VARIANTS:
        result = export_variant(spec, model_dir, base, variant, args.validation)
        paths[variant.name] = result.path
        points.append(measure_export(spec, variant, result, args.validation, trained_bytes))
        print(f"{variant.name}: version {result.version}", flush=True)
    print(sweep_table(points), flush=True)
    timings = {}
    for other in ("int8, every table", "int8 zero-pruned"):
        rows = latency(spec, paths["float32 zero-pruned"], paths[other], args.validation, args.candidates, args.reps)
        print(f"serving latency (ms), {args.reps} calls each, {other} and float32 zero-pruned alternating:")
        print(latency_table(rows, "float32", "int8"), flush=True)
        timings[other] = [{"signature": r.signature, "rows": r.rows, "float32": vars(r.baseline),
                           "int8": vars(r.other), "max_diff": r.max_diff} for r in rows]
    with open(os.path.join(args.out, "sweep.json"), "w", encoding="utf-8") as fh:
        json.dump({"points": [p.as_dict() for p in points], "latency": timings}, fh, indent=2)


if __name__ == "__main__":
    main()
