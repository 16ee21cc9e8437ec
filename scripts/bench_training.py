"""Training speed: KuaiRand examples/s before/after and against a plain Keras MMoE; table size, joint vs teacher,
our loop vs model.fit, input vs training.

KuaiRand (`--parts kuairand`, logic in benchmarks/kuairand_bench.py): examples/s of one epoch of 04-25..29 from the
GZIP TFRecords, each run in a fresh process, this checkout and the --baseline commit alternating: prerank's teacher
without target attention, the teacher with the rest of the shipped config and the joint model with the shipped
config (each version's own KuaiRand spec), at the spec's batch size and at 512, and a
plain tf.keras MMoE (`model.fit`, Adam, the same rows as numpy arrays, batch 512); ratios to the baseline MMoE and
joint / teacher against the targets, and each job's peak RSS.

Profile (`--parts profile`, logic in benchmarks/step_profile.py): a tf.profiler trace of KuaiRand steps (the joint
model with the shipped config; the teacher without target attention), kernel time by part of the model and op type.

Dense (`--parts dense`, logic in benchmarks/dense_bench.py): the teacher's MMoE alone, as built, with its experts'
first layers and gates in one matmul, and each compiled with XLA.

Synthetic (`--parts synthetic`): on synthetic data for a spec with million-row tables (generated once into a temp dir), measures in one run:
1. step time with the spec's tables over step time with the same spec cut to --small-rows rows per table
   (legacy FTRL updates only the rows of the batch), and with the new Keras FTRL on the big tables;
2. step time of model.mode=joint over model.mode=teacher (plus joint with other student towers);
3. examples/s of our train step fed by the pipeline vs a plain model.fit (one Adam) of the same model
   (and, as a contrast, model.fit with the small tables: Adam updates whole tables);
4. examples/s of the input pipeline alone over our training examples/s.
Step times are medians of single steps on in-memory batches, the variants interleaved step by step after
warm-up (ratios of the fastest steps too: noise from other processes only adds time).

Examples:
    .venv/bin/python scripts/bench_training.py     # every part, KuaiRand 2 repeats: about 30 minutes on 2 cores
    .venv/bin/python scripts/bench_training.py --parts kuairand --repeats 3 --baseline HEAD~3
    .venv/bin/python scripts/bench_training.py --rows 100000 --rounds 7 --e2e-repeats 3
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)
import tensorflow as tf

from benchmarks import dense_bench
from benchmarks import kuairand_bench as kb
from benchmarks import step_profile
from benchmarks import train_bench as tb
from trainer.config import load_config
from trainer.data.datasets.synthetic import generate
from trainer.preprocessing.analyze import analyze
from trainer.spec import load_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1.5  # joint/teacher ratio of the synthetic step times
TABLE_TARGET = 1.2  # 1M-row / 10k-row step time
BASELINE = "1e780dd"  # main before the throughput work (issue 14)
KUAIRAND_SPEC = os.path.join("feature_specs", "kuairand.yaml")  # in each version's own tree
KUAIRAND_DATA = os.path.join(ROOT, "out", "kuairand", "tfrecord", "date=2022042[5-9]", "*.tfrecord.gz")
KUAIRAND_TARGETS = {"teacher": 2.0, "joint": 1.5, "joint/teacher": 1.3}


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def _check(ratio: float, target: float = TARGET) -> str:
    return f"(target <= {target}: {'ok' if ratio <= target else 'ABOVE'})"


def _towers(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _data(args, spec, scratch: str) -> str:
    pattern = os.path.join(args.data_dir or os.path.join(scratch, "data"), "part-*")
    if args.data_dir and tf.io.gfile.glob(pattern):
        return pattern
    start = time.perf_counter()
    generate(spec, args.rows, os.path.dirname(pattern), n_shards=4, seed=0)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - start:.0f} s", flush=True)
    return pattern


def _step_phase(args, spec, small, fitted, data: str, scratch: str, config) -> tuple:
    """Build the variants, time their steps on in-memory batches and print; return the joint step, the
    batches and the labels of the two table sizes."""
    base = config()
    batches = list(tb.pipeline(spec, data, base).take(args.batches))
    plans = {  # key -> (spec, config, new Keras FTRL on the tables)
        "joint": (spec, base, False), "small": (small, base, False), "dense": (spec, base, True),
        "teacher": (spec, config("model.mode=teacher"), False)}
    for sizes in args.tower_variants:
        plans[f"towers {sizes}"] = (spec, config(f"model.student.user_tower={sizes}",
                                                 f"model.student.item_tower={sizes}"), False)
    print(f"\n== {spec.name}: {args.rows:,} rows, batch {args.batch_size}, {os.cpu_count()} CPU(s); building "
          f"{len(plans)} variants ...", flush=True)
    loops, steps = {}, {}
    for key, (s, c, dense) in plans.items():
        loops[key], steps[key] = tb.loop_step(s, fitted[s.name], c, data, os.path.join(scratch, key), dense)
    rows = {key: tb.table_rows(loops[key].model) for key in ("joint", "small")}
    big, little = (_short(max(r.values())) for r in rows.values())
    for key, label in (("joint", big), ("small", little)):
        print(f"  tables of the {label}-row variant: " + ", ".join(f"{t} {n:,}" for t, n in rows[key].items()))
    names = {"joint": f"joint, {big}-row tables", "small": f"joint, {little}-row tables",
             "dense": f"joint, {big}-row tables, new Keras FTRL", "teacher": f"teacher, {big}-row tables",
             **{f"towers {s}": f"joint, student towers {s}" for s in args.tower_variants}}

    print(f"\n== step time: {args.batches} in-memory batches x {args.rounds} rounds, interleaved step by step, "
          f"after {args.warmup} warm-up steps ({args.contrast_steps} steps per round with the new FTRL)", flush=True)
    times = tb.step_times(steps, batches, args.rounds, args.warmup, {"dense": args.contrast_steps},
                          print if args.verbose else None)
    width = max(map(len, names.values()))
    print(f"  {'variant':<{width}}  median ms  min ms  steps")
    for key, t in times.items():
        print(f"  {names[key]:<{width}}  {t.median * 1e3:9.1f}  {t.min * 1e3:6.1f}  {len(t.seconds):5d}")
    ms = {key: t.median for key, t in times.items()}
    fastest = {key: t.min for key, t in times.items()}

    def ratio(a: str, b: str, target: bool = False) -> str:
        check = f" {_check(ms[a] / ms[b])}" if target else ""
        return f"{ms[a] / ms[b]:.2f}x{check}; fastest steps {fastest[a] / fastest[b]:.2f}x"

    print(f"  table size: {big} / {little} rows = {ms['joint'] / ms['small']:.2f}x "
          f"{_check(ms['joint'] / ms['small'], TABLE_TARGET)}; fastest steps {fastest['joint'] / fastest['small']:.2f}x")
    print(f"  new Keras FTRL / legacy FTRL ({big} rows) = {ms['dense'] / ms['joint']:.1f}x")
    print(f"  joint / teacher = {ratio('joint', 'teacher', True)}; the student "
          f"adds {(ms['joint'] - ms['teacher']) * 1e3:.1f} ms/step")
    for key in list(plans)[4:]:
        print(f"    {names[key]} / teacher = {ratio(key, 'teacher')}")
    scan, every = tb.log_scan_seconds(loops["joint"]), base.training.log_every
    print(f"  not timed here nor below: Loop.run's zero-row scan of the tables at each log takes {scan:.2f} s "
          f"(every {every} steps: +{scan / (every * ms['joint']):.0%} on the step time)")
    return steps["joint"], batches, big, little


def _e2e_phase(args, spec, small, fitted, data: str, base, step, batches: list, big: str, little: str) -> None:
    """Examples/s over the same files: our step, model.fit (big and small tables), the pipeline alone."""
    n, skip, bs = args.e2e_steps, args.e2e_warmup, args.batch_size
    fit_models = {}
    for s in (spec, small):  # Adam updates whole tables: with small ones, what is left is fit itself
        fit_models[s.name] = tb.FitModel(s, fitted[s.name], base, name="joint")
        fit_models[s.name].compile(optimizer=tf.keras.optimizers.Adam())

    def fit(s) -> float:
        return tb.fit_seconds(fit_models[s.name], tb.pipeline(s, data, base), skip, n)

    runs = {"ours": ("our train step (legacy FTRL + AdaGrad)",
                     lambda: tb.iterate_seconds(tb.pipeline(spec, data, base), skip, n, step)),
            "fit": ("model.fit (one Adam)", lambda: fit(spec)),
            "input": ("input pipeline alone", lambda: tb.iterate_seconds(tb.pipeline(spec, data, base), skip, n)),
            "fit_small": (f"model.fit (one Adam), {little}-row tables", lambda: fit(small)),
            "cached": ("our train step on in-memory batches", lambda: tb.cached_seconds(step, batches, n))}
    print(f"\n== end to end, one pipeline per run over the same files (shuffle {base.training.shuffle_buffer:,}): "
          f"{n} batches after {skip}, {args.e2e_repeats} repeats round-robin", flush=True)
    e2e = tb.end_to_end({key: run for key, (_, run) in runs.items()}, args.e2e_repeats,
                        print if args.verbose else None)
    rate = {key: n * bs / t.median for key, t in e2e.items()}
    width = max(len(name) for name, _ in runs.values())
    for key, t in e2e.items():
        each = ", ".join(f"{n * bs / s:,.0f}" for s in t.seconds)
        print(f"  {runs[key][0]:<{width}}  {rate[key]:>9,.0f} ex/s   (runs: {each})")
    print(f"  our loop / model.fit = {rate['ours'] / rate['fit']:.1f}x; model.fit with {little}-row tables / with "
          f"{big}-row tables = {rate['fit_small'] / rate['fit']:.1f}x")
    print(f"  input pipeline / our training = {rate['input'] / rate['ours']:.1f}x; fed by the pipeline, our step "
          f"runs at {rate['ours'] / rate['cached']:.0%} of its in-memory rate (they share the CPUs)")


def _kuairand_phase(args, scratch: str) -> None:
    """Examples/s of the KuaiRand jobs, before and after, and of the plain Keras MMoE, in fresh processes."""
    if not tf.io.gfile.glob(args.kuairand_data):
        raise SystemExit(f"no files match {args.kuairand_data}: run `prerank convert-kuairand` first")
    spec = load_spec(os.path.join(ROOT, KUAIRAND_SPEC))
    prep = os.path.join(scratch, "preprocessing")
    analyze(spec, args.kuairand_data).save(prep)
    versions = {"after": ROOT}
    if args.baseline:
        versions["before"] = kb.baseline_code(ROOT, args.baseline, tempfile.mkdtemp(dir=scratch))
    order = [v for v in ("before", "after") if v in versions]
    plans = kb.variants((None, 512))
    runs = {(v.key, name): kb.Runs() for v in plans for name in (order if v.kind == "prerank" else ["after"])}
    scripts = os.path.dirname(os.path.abspath(__file__))
    print(f"\n== KuaiRand, one epoch of {args.kuairand_data}: {len(plans)} variants x {args.repeats} repeats, each run "
          f"a fresh process; 'before' = {args.baseline}, 'after' = this checkout; load {os.getloadavg()[0]:.1f}",
          flush=True)
    for r in range(args.repeats):
        for v in plans:
            names = order if v.kind == "prerank" else ["after"]
            for name in (names if r % 2 == 0 else names[::-1]):
                record = kb.measure(versions[name], scripts, v, os.path.join(versions[name], KUAIRAND_SPEC),
                                    args.kuairand_data, prep, args.keras_skip)
                runs[v.key, name].records.append(record)
                print(f"  repeat {r + 1}: {v.key:<13} {name:<6} {record['rate']:>8,.0f} ex/s  ({record['steps']} steps, "
                      f"{record['seconds']:.1f} s; peak RSS {record['peak_rss_mb']:,.0f} MB; "
                      f"load {os.getloadavg()[0]:.1f})", flush=True)
    rate = {k: r.median("rate") for k, r in runs.items()}
    rss = {k: r.median("peak_rss_mb") for k, r in runs.items()}
    width = max(len(v.label) for v in plans)
    print(f"\n  {'examples/s (median of ' + str(args.repeats) + ')':<{width}}" + "".join(f"{n:>10}" for n in order)
          + ("  after/before" if "before" in versions else "") + "   peak RSS MB " + " / ".join(order))
    for v in plans:
        names = order if v.kind == "prerank" else ["after"]
        cells = "".join(f"{rate[v.key, n]:>10,.0f}" if n in names else f"{'':>10}" for n in order)
        change = f"{rate[v.key, 'after'] / rate[v.key, 'before']:>13.2f}x" if len(names) == 2 else f"{'':>14}"
        print(f"  {v.label:<{width}}{cells}{change if 'before' in versions else ''}   "
              + " / ".join(f"{rss[v.key, n]:,.0f}" for n in names))
    keras = rate["keras", "after"]
    for name in order:
        t = KUAIRAND_TARGETS
        teacher, joint, joint512 = rate["teacher@512", name], rate["joint@spec", name], rate["joint@512", name]
        print(f"  {name}: teacher@512 / MMoE = {teacher / keras:.2f}x (target >= {t['teacher']}); joint shipped / "
              f"MMoE = {joint / keras:.2f}x (target >= {t['joint']}), at 512 {joint512 / keras:.2f}x")
        print(f"  {name}: joint / teacher (time per example, same config) = "
              f"{rate['teacher-ta@spec', name] / joint:.2f}x shipped batch, "
              f"{rate['teacher-ta@512', name] / joint512:.2f}x at 512 (target <= {t['joint/teacher']}); joint / "
              f"teacher without attention {rate['teacher@spec', name] / joint:.2f}x, {teacher / joint512:.2f}x")


def _profile_phase(args, scratch: str) -> None:
    """A tf.profiler trace of KuaiRand steps (this checkout, in-memory batches): the joint model with the shipped
    config and the teacher without target attention, summed by part of the model and by op type."""
    spec = load_spec(os.path.join(ROOT, KUAIRAND_SPEC))
    fitted = analyze(spec, args.kuairand_data)
    cases = {"joint, shipped config": [], "teacher, no target attention, batch 512": [*kb.TEACHER,
                                                                                     "training.batch_size=512"]}
    for i, (name, overrides) in enumerate(cases.items()):
        config = load_config(spec, None, ["training.progress=false", *overrides])
        _, step = tb.loop_step(spec, fitted, config, args.kuairand_data, os.path.join(scratch, f"profile-{i}"))
        batches = list(tb.pipeline(spec, args.kuairand_data, config).take(args.profile_steps + 3))
        for batch in batches[:3]:
            tb.run_step(step, batch)
        print(f"\n== profile of the KuaiRand step, {name} (batch {config.training.batch_size}), "
              f"{args.profile_steps} traced steps; load {os.getloadavg()[0]:.1f}", flush=True)
        profile = step_profile.profile_step(step, batches[3:], os.path.join(scratch, f"trace-{i}"))
        print(step_profile.report(profile), flush=True)


def _dense_phase(args) -> None:
    """The teacher's MMoE alone on the KuaiRand spec's field widths: as built, one matmul, each with XLA."""
    spec = load_spec(os.path.join(ROOT, KUAIRAND_SPEC))
    widths = {f.name: f.embedding.dim if f.embedding is not None else (f.dim or 1) for f in spec.features}
    tasks = [label.name for label in spec.labels]
    for batch in (256, 512):
        print(f"\n== the teacher's MMoE alone (forward + gradients), {sum(widths.values())} input columns, batch {batch}, "
              f"{args.dense_rounds} interleaved rounds; load {os.getloadavg()[0]:.1f}", flush=True)
        results = dense_bench.dense_variants(widths, tasks, batch, args.dense_rounds)
        base = results["MMoE as built"][0]
        for name, (median, fastest) in results.items():
            print(f"  {name:<45} median {median:6.1f} ms  fastest {fastest:6.1f} ms  ({median / base:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=os.path.join(ROOT, "feature_specs", "synthetic_large.yaml"))
    parser.add_argument("--rows", type=int, default=60_000, help="synthetic rows to generate")
    parser.add_argument("--data-dir", help="reuse (or write) the synthetic shards here instead of a temp dir")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--small-rows", type=int, default=10_000, help="table rows of the small-table spec")
    parser.add_argument("--batches", type=int, default=20, help="in-memory batches stepped per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (tracing)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of step timing over the batches")
    parser.add_argument("--contrast-steps", type=int, default=3,
                        help="steps per round with the (slow) new Keras FTRL")
    parser.add_argument("--tower-variants", nargs="*", type=_towers, default=[[32], [512, 128, 64, 32]],
                        metavar="SIZES", help="joint variants with these student towers, e.g. 32 128,64,32")
    parser.add_argument("--e2e-warmup", type=int, default=5, help="untimed batches before end-to-end timing")
    parser.add_argument("--e2e-steps", type=int, default=20, help="timed batches per end-to-end run")
    parser.add_argument("--e2e-repeats", type=int, default=3, help="round-robin end-to-end repeats")
    parser.add_argument("--verbose", action="store_true", help="print every round as it finishes")
    parser.add_argument("--parts", default="kuairand,profile,dense,synthetic",
                        help="kuairand, synthetic, profile, dense (comma-separated)")
    parser.add_argument("--profile-steps", type=int, default=10, help="steps traced by --parts profile")
    parser.add_argument("--dense-rounds", type=int, default=40, help="interleaved rounds of --parts dense")
    parser.add_argument("--baseline", default=BASELINE,
                        help="the commit the KuaiRand 'before' runs use (default: %(default)s; '' for none)")
    parser.add_argument("--kuairand-data", default=KUAIRAND_DATA, help="the KuaiRand training files (one epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="KuaiRand runs per variant and version")
    parser.add_argument("--keras-skip", type=int, default=50,
                        help="first model.fit steps left out of the baseline's rate (prerank's: its first log window)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    known = {"kuairand", "synthetic", "profile", "dense"}
    if parts - known:
        parser.error(f"unknown parts {sorted(parts - known)}")
    started = time.perf_counter()
    needed = max(args.batches, args.warmup, args.e2e_warmup + args.e2e_steps) * args.batch_size
    if args.rows < needed:
        parser.error(f"--rows must be at least {needed:,} (full batches for every measurement)")

    spec = load_spec(args.spec)
    small = tb.with_table_rows(spec, args.small_rows)

    def config(*overrides: str):
        return load_config(spec, None, [f"training.batch_size={args.batch_size}", "training.progress=false",
                                        *overrides])

    scratch = tempfile.mkdtemp(prefix="bench_training_")
    try:
        print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPU(s)", flush=True)
        if "kuairand" in parts:
            _kuairand_phase(args, scratch)
        if "profile" in parts:
            _profile_phase(args, scratch)
        if "dense" in parts:
            _dense_phase(args)
        if "synthetic" not in parts:
            return 0
        data = _data(args, spec, scratch)
        fitted = {spec.name: analyze(spec, data), small.name: analyze(small, data)}
        step, batches, big, little = _step_phase(args, spec, small, fitted, data, scratch, config)
        _e2e_phase(args, spec, small, fitted, data, config(), step, batches, big, little)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
