"""Daily retraining on KuaiRand: warm-start the new day from the model of the days before, against training from
scratch; logic in benchmarks/warm_start_bench.py.

Trains (each in its own process, wall time measured) and evaluates on the evaluation day: `previous` (04-25..28
from scratch), `warm` (--warm-start previous on 04-29, vocabularies grown), `warm_old` (the same, the previous
vocabularies kept), `full` (04-25..29 from scratch, today's demo) and `day` (04-29 from scratch). Prints each
run's training time and AUCs (teacher per task, student, consistency), how many ids the new day added to each
table, and the AUC on the evaluation rows whose user or video id was new on the new day, scored by every run.

Example (about 25 minutes on 2 cores; rerun to finish an interrupted one):
    .venv/bin/python scripts/bench_warm_start.py --out /tmp/warm_bench
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import trainer  # noqa: F401,E402  (legacy Keras before TensorFlow)

from benchmarks import warm_start_bench as wb  # noqa: E402
from benchmarks.cold_start import checkpoint_scores  # noqa: E402
from trainer.spec import load_spec  # noqa: E402
from trainer.spec.sides import id_feature  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAYS = os.path.join(REPO, "out", "kuairand", "tfrecord", "date={}", "*.tfrecord.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=os.path.join(REPO, "feature_specs", "kuairand.yaml"))
    parser.add_argument("--out", required=True, help="where the five model directories go")
    parser.add_argument("--before", default=DAYS.format("2022042[5-8]"), help="the days before the new one")
    parser.add_argument("--new-day", default=DAYS.format("20220429"))
    parser.add_argument("--all-days", default=DAYS.format("2022042[5-9]"))
    parser.add_argument("--eval", default=DAYS.format("20220430"))
    parser.add_argument("--set", action="append", default=["training.progress=false"], metavar="KEY=VALUE",
                        help="config overrides for every run")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    results = {}
    for run in wb.runs(args.out, args.before, args.new_day, args.all_days):
        results[run.name] = wb.train_and_evaluate(args.spec, args.out, run, args.eval, args.set)
        print(f"{run.name}: trained in {results[run.name]['seconds']:.0f} s: "
              + ", ".join(f"{k} {v:.4f}" for k, v in wb.headline(results[run.name]["evaluation"]).items()),
              flush=True)
    base = results["full"]["seconds"]
    print("\n| run | train s | vs full | " + " | ".join(wb.headline(results["full"]["evaluation"])) + " |")
    for name, r in results.items():
        h = wb.headline(r["evaluation"])
        print(f"| {name} | {r['seconds']:.0f} | {r['seconds'] / base:.2f}x | "
              + " | ".join(f"{v:.4f}" for v in h.values()) + " |")
    print("\nids the new day added (warm's vocabulary extension):")
    for table, t in sorted(wb.growth(args.out).items()):
        print(f"  {table}: kept {t.get('kept')}, added {t.get('added')}, left out {t.get('left_out_ids')}")
    features = [id_feature(spec, "user"), id_feature(spec, "item")]
    rows = wb.new_id_rows(spec, args.out, args.eval, features)
    scored = {name: checkpoint_scores(spec, os.path.join(args.out, name), args.eval) for name in results}
    table = wb.slice_table(rows, scored)
    print("\nAUC on the evaluation rows with an id new on the new day:")
    for entry in table:
        print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    with open(os.path.join(args.out, "bench_warm_start.json"), "w", encoding="utf-8") as fh:
        json.dump({"runs": results, "growth": wb.growth(args.out), "new_id_rows": table}, fh, indent=2)


if __name__ == "__main__":
    main()
