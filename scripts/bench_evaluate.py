"""Evaluation speed: rows per second of `prerank evaluate --sampled 0,10,50`, this checkout against a baseline
commit, side by side.

Three cases: KuaiRand 04-30 (21,204 rows) with a model trained by the demo's spec on 04-25..29, and a
synthetic set of 120,000 rows (`prerank synth`, feature_specs/synthetic_large.yaml: million-row tables) with
two models trained briefly on 60,000 more rows: the spec's default config (an MMoE teacher without target
attention) and the same with the teacher's target attention on (the KuaiRand config has it). What is missing
is made first, into runs/bench-evaluate/ (`prerank convert-kuairand`, `prerank synth`, `prerank train`: about
5 minutes), and reused by later runs. Each measured evaluation runs in a fresh process, the two versions alternating
(logic in scripts/benchmarks/eval_bench.py).

Examples:
    .venv/bin/python scripts/bench_evaluate.py
    .venv/bin/python scripts/bench_evaluate.py --repeats 2 --cases kuairand
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys

from benchmarks import eval_bench as eb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "e19e486"  # the last commit before the evaluation by parts (trainer/evaluation/scoring.py)
KUAIRAND_SPEC = os.path.join(ROOT, "feature_specs", "kuairand.yaml")
TARGET = 5.0


def prerank(*args: str) -> None:
    """Run a prerank command in its own process (its output shown)."""
    print("$ prerank " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "trainer.cli", *args], check=True, cwd=ROOT)


def kuairand_case(model_dir: str) -> eb.Case:
    data = os.path.join(ROOT, "out", "kuairand", "tfrecord")
    if not glob.glob(os.path.join(data, "date=20220430", "*")):
        prerank("convert-kuairand", "--src", os.path.join(ROOT, "data", "kuairand"), "--out", data)
    if not os.path.exists(os.path.join(model_dir, "checkpoints", "checkpoint")):
        prerank("train", KUAIRAND_SPEC, "--model-dir", model_dir, "--no-validation")
    return eb.Case("KuaiRand 04-30", KUAIRAND_SPEC, model_dir, [os.path.join(data, "date=20220430", "*.tfrecord.gz")],
                   [os.path.join(data, "date=2022042[5-9]", "*.tfrecord.gz")])


def synthetic_case(spec: str, directory: str, rows: int, steps: int, attention: bool) -> eb.Case:
    """`rows` evaluation rows (shards 2-5) and half as many training rows (shards 0-1) of `spec`; the model with
    the spec's own config, or with the teacher's target attention on (as the KuaiRand spec has it)."""
    data = os.path.join(directory, f"data-{rows}")
    if not os.path.exists(os.path.join(data, ".complete")):
        shutil.rmtree(data, ignore_errors=True)
        prerank("synth", spec, "--rows", str(rows * 3 // 2), "--out", data, "--shards", "6")
        open(os.path.join(data, ".complete"), "w").close()
    train = [os.path.join(data, "part-0000[01]*")]
    model_dir = os.path.join(directory, f"model-{rows}{'-attention' if attention else ''}")
    if not os.path.exists(os.path.join(model_dir, "checkpoints", "checkpoint")):
        prerank("train", spec, "--model-dir", model_dir, "--data", *train, "--no-validation",
                "--set", f"training.max_steps={steps}", "--set", "training.progress=false",
                "--set", f"model.teacher.target_attention={str(attention).lower()}")
    name = f"synthetic{', target attention' if attention else ''} ({os.path.basename(spec)})"
    return eb.Case(name, spec, model_dir, [os.path.join(data, "part-0000[2-5]*")], train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with (default: %(default)s)")
    parser.add_argument("--cases", default="kuairand,synthetic,synthetic-attention")
    parser.add_argument("--sampled", default="0,10,50")
    parser.add_argument("--repeats", type=int, default=1, help="evaluations per version and case")
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "bench-evaluate"),
                        help="where data and models are made and kept")
    parser.add_argument("--kuairand-model", help="a model trained with feature_specs/kuairand.yaml on 04-25..29 "
                                                 "(default: WORK/kuairand, trained if missing)")
    parser.add_argument("--synthetic-spec", default=os.path.join(ROOT, "feature_specs", "synthetic_large.yaml"))
    parser.add_argument("--synthetic-rows", type=int, default=120_000)
    parser.add_argument("--synthetic-steps", type=int, default=100, help="training steps of the synthetic model")
    parser.add_argument("--max-batches", type=int, help="evaluate on at most this many batches (a quick check)")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    cases = []
    for name in args.cases.split(","):
        if name == "kuairand":
            cases.append(kuairand_case(args.kuairand_model or os.path.join(args.work, "kuairand")))
        elif name in ("synthetic", "synthetic-attention"):
            cases.append(synthetic_case(args.synthetic_spec, args.work, args.synthetic_rows, args.synthetic_steps,
                                        attention=name == "synthetic-attention"))
        else:
            parser.error(f"unknown case {name!r} (kuairand, synthetic, synthetic-attention)")
    scratch = eb.scratch_dir()
    try:
        before = eb.baseline_code(ROOT, args.baseline, scratch)
        versions = {"before": before, "after": ROOT}
        print(f"\nevaluate --sampled {args.sampled}: baseline {args.baseline} ('before') vs this checkout "
              f"('after'), {args.repeats} evaluation(s) each, alternating, each in a fresh process\n", flush=True)
        summary = []
        for case in cases:
            runs = {name: eb.Runs() for name in versions}
            for i in range(args.repeats):
                for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
                    record = eb.measure(versions[name], case, args.sampled, ROOT, args.max_batches)
                    runs[name].records.append(record)
                    print(f"  {case.name}, {name}: {record['rows']:,} rows in {record['wall']:.1f} s wall, "
                          f"{record['cpu']:.1f} s CPU (set-up {record['setup_wall']:.1f} s; catalog "
                          f"{record['catalog']:,} items)", flush=True)
            summary.append((case, runs, eb.compare(runs["before"], runs["after"])))
            rows = eb.metric_differences(runs["before"].records[0]["result"], runs["after"].records[0]["result"])
            largest = max(int(k) for k in args.sampled.split(","))
            print(f"  metrics, before -> after (first run of each):")
            for metric, x, y in rows:
                show = lambda v: "n/a" if v is None else f"{v:.6f}"  # noqa: E731
                print(f"    {metric:<44}{show(x):>12} -> {show(y):<12}")
            exact = ("teacher/", "student/", "consistency/0/")
            print(f"  largest difference: quality and K = 0 {eb.largest_difference(rows, exact):.2g}; "
                  f"K = {largest} (same draws) {eb.largest_difference(rows, f'consistency/{largest}/'):.2g}\n")
        print(f"{'case':<48}{'rows':>9}{'before rows/s':>15}{'after rows/s':>14}{'ratio':>8}"
              f"{'before CPU':>12}{'after CPU':>11}{'ratio':>8}")
        for case, runs, c in summary:
            rows = runs["after"].records[0]["rows"]
            print(f"{case.name:<48}{rows:>9,}{c['wall_before']:>15,.0f}{c['wall_after']:>14,.0f}"
                  f"{c['wall_ratio']:>7.1f}x{c['cpu_before']:>12,.0f}{c['cpu_after']:>11,.0f}{c['cpu_ratio']:>7.1f}x")
        print(f"(rows per second of evaluated rows, by wall clock and by CPU time; target >= {TARGET:g}x)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
