"""The `prerank` command line: argparse over the Python API of both packages.

The top layer: it may import every stage of `trainer` and `serving`, and
nothing imports it (`trainer.task` is its `python -m trainer.task` alias). Each
command imports what it runs when it runs (the only lazy imports of the
project), so `prerank validate` starts without TensorFlow. Bad input of any
kind (`trainer.errors.PrerankError`) is printed with its label ("config
error: ...") and exits 2.
"""
import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ INFO/WARNING lines off the console
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # and its Python-side retracing notes

import trainer  # noqa: E402,F401  (legacy Keras before TensorFlow)
from trainer.errors import ConfigError, ExportError, IssuesError, PrerankError  # noqa: E402

EXIT_BAD_INPUT = 2
NO_TENSORFLOW = ("validate", "report")  # commands that never import TensorFlow (train imports it itself)


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow (and probe its devices) with its start-up lines kept off the console.

    On TF 2.21 environment variables do not silence them all (the absl, oneDNN and cudart_stub / cuInit lines
    are written to file descriptor 2 by C++), so descriptor 2 is pointed at a scratch file meanwhile; what it
    caught is replayed if the import fails. `verbose`: import plainly, every line shown.
    """
    if verbose or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()  # the CUDA probe: before any strategy or context exists
        except BaseException:
            os.dup2(saved, 2)
            caught.seek(0)
            sys.stderr.write(caught.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def report_error(exc: PrerankError) -> None:
    """Print an error with its label: one line, or the label and one indented line per issue."""
    if isinstance(exc, IssuesError) and len(exc.issues) > 1:
        print(f"{exc.label}: {len(exc.issues)} problems in {exc.what}:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
    else:
        print(f"{exc.label}: {exc}", file=sys.stderr)


def run_reporting_errors(job: Callable[[], object]) -> int:
    """Run `job`; print prerank's errors plainly and return 2 instead of a traceback."""
    try:
        job()
    except PrerankError as exc:
        report_error(exc)
        return EXIT_BAD_INPUT
    return 0


# ---- commands ----

def _validate(args: argparse.Namespace) -> None:
    from trainer.config.loader import load_config
    from trainer.spec.loader import load_spec
    from trainer.spec.summary import spec_table
    spec = load_spec(args.spec)
    config = load_config(spec, args.config)
    print(spec_table(spec))
    plugins = f"; plugins: {', '.join(config.plugins)}" if config.plugins else ""
    print(f"config ({args.config or 'the spec file'}): model.mode {config.model.mode}{plugins}")


def _convert_kuairand(args: argparse.Namespace) -> None:
    from trainer.data.datasets.kuairand import convert_kuairand
    result = convert_kuairand(args.src, args.out, fmt=args.format, shards_per_date=args.shards_per_date,
                              compression=args.compression)
    for date, n in result.rows_per_date.items():
        print(f"date={date}: {n} rows")
    print(f"{sum(result.rows_per_date.values())} rows, {len(result.columns)} columns, {len(result.files)} files "
          f"-> {args.out}")


def _analyze(args: argparse.Namespace) -> None:
    from trainer.data import corrupt
    from trainer.data.splits import resolve_data
    from trainer.preprocessing.analyze import analyze
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec)
    fitted = analyze(spec, resolve_data(args.data, spec, "train", purpose="data to analyze"),
                     skip_corrupt=args.skip_corrupt)
    corrupt.report(fitted.skipped, print)  # preprocessing.json records them too
    path = fitted.save(args.out)
    for table, ids in fitted.vocabularies.items():
        print(f"vocabulary {table}: {len(ids)} ids")
    for name, s in fitted.stats.items():
        print(f"stats {name}: mean {s.mean:.4g} std {s.std:.4g} min {s.min:.4g} max {s.max:.4g}")
    print(f"fitted on {fitted.rows} rows -> {path}")


def _inspect(args: argparse.Namespace) -> None:
    from trainer.data.input_config import InputConfig
    from trainer.data.pipeline import make_pipeline
    from trainer.data.splits import resolve_data
    from trainer.data.summary import batch_table
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec)
    data = resolve_data(args.data, spec, "train", purpose="data to inspect")
    pipeline = make_pipeline(spec, data, InputConfig(batch_size=args.batch_size, skip_corrupt=args.skip_corrupt),
                             fmt=args.format)
    for batch in pipeline:
        print(batch_table(batch))
        break
    for s in pipeline.skipped:
        print(s)


def _synth(args: argparse.Namespace) -> None:
    from trainer.data.datasets.synthetic import generate
    from trainer.spec.loader import load_spec
    result = generate(load_spec(args.spec), args.rows, args.out, fmt=args.format, n_shards=args.shards,
                      seed=args.seed)
    print(f"{result.n_rows} rows in {len(result.files)} files -> {args.out}")


def _train(args: argparse.Namespace) -> None:
    from trainer.config.loader import load_config
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec)  # first, without TensorFlow: a bad spec or config is refused in a blink
    config = load_config(spec, args.config, args.set)
    import_tensorflow(getattr(args, "verbose", False))
    from trainer.training.distribution import strategy_from_env
    strategy = strategy_from_env()  # before other TensorFlow work: a multi-worker strategy must exist first
    from trainer.api import train
    validation = False if args.no_validation else args.validation
    train(spec, config, args.model_dir, data=args.data, validation=validation, strategy=strategy,
          skip_corrupt=args.skip_corrupt, refit=args.refit, preprocessing=args.preprocessing)


def _evaluate(args: argparse.Namespace) -> None:
    from trainer.evaluation.summary import metrics_table
    sampled = tuple(int(k) for k in args.sampled.split(",")) if args.sampled else (0,)
    if args.export:
        if args.spec:
            raise ConfigError.single("evaluate", "SPEC", "with --export the spec is the one the export's manifest "
                                     "names (assets.extra/prerank_export.json); leave SPEC out")
        from serving.savedmodel.evaluation import evaluate_export, evaluation_path
        from serving.savedmodel.layout import resolve_version_dir
        result = evaluate_export(args.export, args.data, sampled, args.items, args.batch_size, args.max_batches,
                                 args.seed, skip_corrupt=args.skip_corrupt, out=args.out)
        pruned = "pruned" if result["pruned"] else "unpruned"
        source = f"export {result['export']} (version {result['version']}, {pruned})"
        written = args.out or evaluation_path(resolve_version_dir(args.export))
    else:
        if not args.spec:
            raise ConfigError.single("evaluate", "SPEC", "evaluating a checkpoint (--model-dir) needs the spec file")
        from trainer.api import evaluate
        from trainer.training.layout import EVALUATION_FILE
        result = evaluate(args.spec, args.model_dir, args.data, sampled, args.items, args.batch_size,
                          args.max_batches, args.seed, skip_corrupt=args.skip_corrupt, out=args.out)
        source = result["checkpoint"]
        written = args.out or os.path.join(args.model_dir, EVALUATION_FILE)
    print(f"{' '.join(result['data'])} ({result['rows']} rows), {source}:\n{metrics_table(result)}\n-> {written}")


def _report(args: argparse.Namespace) -> None:
    from trainer.evaluation.report import write_report
    for path in write_report(args.model_dir, args.out):
        print(path)


def _export(args: argparse.Namespace) -> None:
    from serving.savedmodel.export import export_model
    from serving.savedmodel.prune import report_table
    from trainer.spec.loader import load_spec
    result = export_model(load_spec(args.spec), args.model_dir, args.export_base, args.version, args.data,
                          prune=not args.no_prune)
    if result.pruning:
        print(report_table(result.pruning))
    if result.variables_bytes_before is not None:
        print(f"SavedModel variables: {result.variables_bytes_before:,} bytes unpruned -> "
              f"{result.variables_bytes_after:,} pruned "
              f"({1 - result.variables_bytes_after / result.variables_bytes_before:.1%} smaller)")
    print(f"exported version {result.version} -> {result.path}")


def _verify_export(args: argparse.Namespace) -> None:
    from serving.savedmodel.verify import TOLERANCE, verify_export
    result = verify_export(args.export_dir, args.data, args.batches)
    print(result.signatures)
    print("warmup requests run: " + ", ".join(f"{k} x{v}" for k, v in sorted(result.warmup.items())))
    print(f"export vs trained model on {result.rows} rows (max |diff|):")
    for key, diff in sorted(result.max_diff.items()):
        print(f"  {key:<32}{diff:.3g}{'' if diff <= TOLERANCE else '  FAIL'}")
    if result.auc:
        print(f"AUC on the same {result.rows} rows, checkpoint as trained -> export (pruning's effect):")
        for label, (trained, served) in result.auc.items():
            print(f"  {label}: {trained:.4f} -> {served:.4f} ({served - trained:+.4f})")
    if not result.ok:
        raise ExportError(f"{result.path}: outputs differ from the trained model by more than {TOLERANCE}")
    print(f"{result.path}: verified")


def _onnx(args: argparse.Namespace) -> None:
    from serving.onnx.export import export_onnx
    from trainer.spec.loader import load_spec
    result = export_onnx(load_spec(args.spec), args.model_dir, args.out, args.data)
    print(f"{', '.join(sorted(result.graphs))} -> {result.path} (inputs.json and README.md describe the inputs)")


def _embed_items(args: argparse.Namespace) -> None:
    from serving.item_store.embed import embed_items
    result = embed_items(args.export_dir, args.store, args.data, args.batch_size)
    note = f" (resumed at item {result.resumed_from})" if result.resumed_from else ""
    print(f"{result.items} item vectors of model version {result.model_version} -> {result.store_path}{note}")


# ---- the parser ----

def add_globs(parser, flag: str, what: str) -> None:
    """A files option, the same form in every command: one or more globs after the flag (`--data a/*.gz b/*.gz`;
    quoted globs are expanded by prerank, unquoted ones by the shell: both work)."""
    parser.add_argument(flag, nargs="+", metavar="GLOB", help=what)


def add_skip_corrupt(parser: argparse.ArgumentParser) -> None:
    """--skip-corrupt, the same for every command that reads data."""
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="skip corrupt records instead of failing, printing how many per file (train, analyze "
                             "and evaluate also record them in their JSON output)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `prerank train` (and `python -m trainer.task`)."""
    parser.add_argument("spec", help="feature spec YAML (its model: / training: sections configure the job)")
    parser.add_argument("--model-dir", required=True, help="where preprocessing, checkpoints and logs go")
    parser.add_argument("--config", help="YAML with model: / training: / plugins: sections (default: the spec "
                                         "file's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training.max_steps=100 (repeatable)")
    add_globs(parser, "--data", "training files (default: the spec's data.train)")
    held_out = parser.add_mutually_exclusive_group()
    add_globs(held_out, "--validation", "validation files (default: the spec's data.validation); files that are "
                                        "also training files are reported and marked in-sample")
    held_out.add_argument("--no-validation", action="store_true",
                          help="no validation during or after training (e.g. when the spec's validation split is "
                               "one of the training days)")
    add_skip_corrupt(parser)
    fit = parser.add_mutually_exclusive_group()
    fit.add_argument("--refit", action="store_true", help="fit the preprocessing again even if saved")
    fit.add_argument("--preprocessing", metavar="DIR",
                     help="train with this `prerank analyze` output instead of fitting; refused unless each of its "
                          "tables and statistics was fitted as the spec defines it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prerank", description="Pre-ranking training framework.")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up lines (CUDA probing, "
                                                               "oneDNN, absl), hidden by default")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate a spec (and its config) and print its summary table (exit 2 on "
                                        "errors)")
    p.add_argument("spec")
    p.add_argument("--config", help="a separate config file to validate with the spec (default: the spec file's "
                                    "model: / training: / plugins: sections)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("convert-kuairand", help="convert the KuaiRand parquet files to tf.Example shards by date")
    p.add_argument("--src", default="data/kuairand", help="folder with the KuaiRand parquet files")
    p.add_argument("--out", default="out/kuairand/tfrecord", help="output folder (date=YYYYMMDD/part-*)")
    p.add_argument("--format", choices=("tfrecord", "csv"), default="tfrecord")
    p.add_argument("--compression", choices=("GZIP", "none"), default="GZIP")
    p.add_argument("--shards-per-date", type=int, default=2)
    p.set_defaults(func=_convert_kuairand)

    p = sub.add_parser("analyze", help="fit vocabularies and normalisation statistics on training data")
    p.add_argument("spec")
    add_globs(p, "--data", "files to fit on (default: the spec's data.train)")
    p.add_argument("--out", required=True, help="folder for preprocessing.json and vocab/")
    add_skip_corrupt(p)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("inspect", help="run the input pipeline and print one batch")
    p.add_argument("spec")
    add_globs(p, "--data", "files to read (default: the spec's data.train)")
    p.add_argument("--format", choices=("tfrecord", "csv"), help="default: the spec's data.format")
    p.add_argument("--batch-size", type=int, default=8)
    add_skip_corrupt(p)
    p.set_defaults(func=_inspect)

    p = sub.add_parser("synth", help="generate synthetic data from a spec")
    p.add_argument("spec")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=("tfrecord", "csv"), default="tfrecord")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_synth)

    p = sub.add_parser("train", help="the training job (same as python -m trainer.task)")
    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="teacher / student quality and their consistency on evaluation data, of a "
                                        "checkpoint (SPEC --model-dir DIR) or of an export (--export DIR)")
    p.add_argument("spec", nargs="?", help="the feature spec (with --model-dir; an export's is in its manifest)")
    evaluated = p.add_mutually_exclusive_group(required=True)
    evaluated.add_argument("--model-dir", help="a trained model directory: its latest checkpoint")
    evaluated.add_argument("--export", metavar="DIR", help="an export (a version directory, or a base directory: "
                                                           "its newest version), scored by its own signatures")
    add_globs(p, "--data", "evaluation files (default: the spec's data.eval)")
    p.add_argument("--sampled", default="0,10,50",
                   help="comma-separated numbers of items sampled per group for the consistency candidate sets")
    add_globs(p, "--items", "files to build the item table from (default: the spec's data.train)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--max-batches", type=int, help="evaluate on at most this many batches")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled items")
    p.add_argument("--out", metavar="FILE", help="where the results go (default: MODEL_DIR/evaluation.json, or "
                                                 "BASE/<version>.evaluation.json beside the export)")
    add_skip_corrupt(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", help="PNG plots of training curves, lambda, AUCs, consistency and sparsity")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", help="output folder (default: MODEL_DIR/report)")
    p.set_defaults(func=_report)

    p = sub.add_parser("export", help="prune and export a versioned SavedModel for TF Serving (BASE/<version>)")
    p.add_argument("spec")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--export-base", required=True, help="TF Serving base path; the version goes in BASE/<version>")
    p.add_argument("--version", type=int, help="integer version (default: the newest in BASE plus one)")
    add_globs(p, "--data", "rows for the warmup requests (default: the spec's data.eval)")
    p.add_argument("--no-prune", action="store_true", help="export the tables as trained")
    p.set_defaults(func=_export)

    p = sub.add_parser("verify-export", help="load an export as TF Serving would, run its warmup requests and "
                                             "compare it with the trained model")
    p.add_argument("export_dir", help="a version directory, or a base directory (its newest version)")
    add_globs(p, "--data", "evaluation rows to compare on (default: the spec's data.eval)")
    p.add_argument("--batches", type=int, default=4, help="batches of 256 rows to compare on")
    p.set_defaults(func=_verify_export)

    p = sub.add_parser("onnx", help="the student's user tower, item tower and prerank scorer as ONNX (integer "
                                    "ids), checked against TensorFlow with onnxruntime")
    p.add_argument("spec")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True, help="a new directory for the .onnx files, inputs.json and README.md")
    add_globs(p, "--data", "rows for the parity check (default: the spec's data.eval)")
    p.set_defaults(func=_onnx)

    p = sub.add_parser("embed-items", help="item vectors of a whole catalog into a versioned store")
    p.add_argument("export_dir", help="a version directory, or a base directory (its newest version)")
    p.add_argument("--store", required=True, help="store directory; vectors go to STORE/<model version>/")
    add_globs(p, "--data", "files to build the item table from (default: every split of the spec: data.train, "
                           "data.validation, data.eval)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.set_defaults(func=_embed_items)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in NO_TENSORFLOW and args.command != "train":
        import_tensorflow(args.verbose)
    return run_reporting_errors(lambda: args.func(args))


def train_main(argv: list[str] | None = None) -> int:
    """`python -m trainer.task`: the arguments of `prerank train`."""
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description="The training job (prerank train).")
    add_train_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up lines")
    args = parser.parse_args(argv)
    return run_reporting_errors(lambda: _train(args))


if __name__ == "__main__":
    sys.exit(main())
