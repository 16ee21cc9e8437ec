"""Sweep FTRL's L1 strength on KuaiRand: train one model per value, prune, and compare with L1 = 0.

Trains on the tuning split (04-25..28) and scores on the validation day (04-29);
04-30 stays held out. Each model directory resumes if the sweep is killed.

    python scripts/sweep_l1.py --l1 0,0.003,0.01,0.03,0.1 --out runs/l1_sweep
"""
import argparse
import json
import os
import subprocess
import sys

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
from benchmarks.l1_sweep import best_point, measure, sweep_table
from trainer.spec import load_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=os.path.join(REPO, "feature_specs", "kuairand.yaml"))
    parser.add_argument("--l1", default="0,0.003,0.01,0.03,0.1", help="comma-separated L1 strengths; first = baseline")
    parser.add_argument("--train", default=os.path.join(REPO, "out/kuairand/tfrecord/date=2022042[5-8]/*.tfrecord.gz"))
    parser.add_argument("--validation", default=os.path.join(REPO, "out/kuairand/tfrecord/date=20220429/*.tfrecord.gz"))
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "l1_sweep"))
    parser.add_argument("--set", action="append", default=[], help="extra training overrides")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    points = []
    for l1 in (float(v) for v in args.l1.split(",")):
        model_dir = os.path.join(args.out, f"l1_{l1:g}")
        overrides = [f"model.ftrl.l1={l1}", "training.progress=false", *args.set]
        command = [sys.executable, "-m", "trainer.task", args.spec, "--model-dir", model_dir, "--data", args.train,
                   "--validation", args.validation] + [a for o in overrides for a in ("--set", o)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        points.append(measure(spec, model_dir, args.validation, l1))
        print(sweep_table(points), flush=True)
    with open(os.path.join(args.out, "sweep.json"), "w", encoding="utf-8") as fh:
        json.dump([p.as_dict() for p in points], fh, indent=2)
    best = best_point(points)
    print("best:", f"L1 {best.l1:g}" if best else "no L1 value meets both bars (>= 40% fewer student bytes, "
                                                 "<= 0.002 AUC lost)")


if __name__ == "__main__":
    main()
