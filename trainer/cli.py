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
from trainer.errors import ConfigError, ExportError, IssuesError, ModelDirError, PrerankError  # noqa: E402
from trainer.spec.types import FORMATS  # noqa: E402  (no TensorFlow)

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


def _engine_settings(args: argparse.Namespace):
    from trainer.data.convert.engine import EngineSettings
    return EngineSettings(args.memory_limit, args.temp_dir, args.threads)


def _print_conversion(result) -> None:
    for partition, n in result.rows_per_partition.items():
        print(f"{partition}: {n} rows")
    print(f"{result.rows} rows, {len(result.columns)} columns, {len(result.files)} files -> {result.out_dir} "
          f"in {result.seconds:.1f} s ({result.rows / max(result.seconds, 1e-9):,.0f} rows/s; engine memory peak "
          f"{result.engine_peak_bytes / 2**20:,.0f} MiB, spilled {result.engine_spilled_bytes / 2**20:,.0f} MiB)")


def _convert(args: argparse.Namespace) -> None:
    from trainer.data.convert.convert import convert
    from trainer.data.convert.expressions import Derive
    from trainer.data.convert.history import History
    from trainer.data.convert.tables import SideTable, Table
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec)
    joins = [SideTable.parse(j) for j in args.join or ()]
    derives = [Derive.parse(d) for d in args.derive or ()]
    histories = [History.parse(h) for h in args.history or ()]
    result = convert(spec, Table(tuple(args.table)), args.out, partition_by=args.partition_by, joins=joins,
                     derives=derives, histories=histories, user=args.user, time_column=args.time,
                     keep=args.keep or (), fmt=args.format, compression=args.compression,
                     files_per_partition=args.files_per_partition, rows_per_file=args.rows_per_file,
                     max_rows=args.max_rows, engine=_engine_settings(args), log=print)
    _print_conversion(result)


def _convert_kuairand(args: argparse.Namespace) -> None:
    from trainer.data.datasets.kuairand import convert_kuairand
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec) if args.spec else None
    result = convert_kuairand(args.src, args.out, fmt=args.format, shards_per_date=args.shards_per_date,
                              compression=args.compression, spec=spec, engine=_engine_settings(args))
    _print_conversion(result)


def _kuairand_items(args: argparse.Namespace) -> None:
    from trainer.data.datasets.kuairand_items import kuairand_item_table
    result = kuairand_item_table(args.src, args.out, args.date)
    left = "; left out: " + ", ".join(f"{n} ({why})" for why, n in result.left_out.items()) if result.left_out else ""
    span = f"{result.clicked_days[0]}..{result.clicked_days[1]}" if result.clicked_days else "no day"
    print(f"{result.items} videos as of {args.date} (ctr_prior from the impressions of {span}){left} -> {result.path}")


def _analyze(args: argparse.Namespace) -> None:
    from trainer.data import corrupt
    from trainer.data.splits import resolve_data
    from trainer.preprocessing.analyze import analyze
    from trainer.preprocessing.extend import extend_preprocessing, extension_summary
    from trainer.preprocessing.fitted import Preprocessing
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec)
    data = resolve_data(args.data, spec, "train", purpose="data to analyze")
    if args.extend:
        fitted = extend_preprocessing(Preprocessing.load(_previous_preprocessing(args.extend)), spec, data,
                                      skip_corrupt=args.skip_corrupt)
    else:
        fitted = analyze(spec, data, skip_corrupt=args.skip_corrupt)
    corrupt.report(fitted.skipped, print)  # preprocessing.json records them too
    path = fitted.save(args.out)
    if args.extend:
        print(extension_summary(fitted))
    else:
        for table, ids in fitted.vocabularies.items():
            print(f"vocabulary {table}: {len(ids)} ids")
        for name, s in fitted.stats.items():
            print(f"stats {name}: mean {s.mean:.4g} std {s.std:.4g} min {s.min:.4g} max {s.max:.4g}")
    print(f"fitted on {fitted.rows} rows -> {path}")


def _previous_preprocessing(previous: str) -> str:
    """The preprocessing folder of `analyze --extend PREV`: PREV itself (a `prerank analyze` output) or
    PREV/preprocessing (a model directory); ModelDirError naming PREV when it is neither."""
    from trainer.preprocessing.fitted import FILE_NAME
    from trainer.training.layout import PREPROCESSING_DIR
    for folder in (previous, os.path.join(previous, PREPROCESSING_DIR)):
        if os.path.isfile(os.path.join(folder, FILE_NAME)):
            return folder
    raise ModelDirError(f"--extend {previous}: neither a model directory (no {PREPROCESSING_DIR}/{FILE_NAME}) nor "
                        f"a `prerank analyze` output (no {FILE_NAME}); a model trained as a student of a separate "
                        "teacher extends its teacher's directory")


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
    from trainer.data.datasets.synthetic import generate, generate_tables
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec)
    try:
        if args.tables:
            cardinalities = {}
            for item in args.cardinality or ():
                table, _, n = item.partition("=")
                if not n.isdigit() or int(n) < 1:
                    raise ValueError(f"--cardinality {item}: expected TABLE=N with N >= 1")
                cardinalities[table] = int(n)
            tables = generate_tables(spec, args.rows, args.out, user_key=args.user_key, item_key=args.item_key,
                                     time_column=args.time_column, derived=tuple(args.derived or ()),
                                     first_date=args.first_date, days=args.days, seed=args.seed,
                                     cardinalities=cardinalities)
            for name in ("impressions", "users", "items"):
                print(f"{getattr(tables, name)}: {', '.join(tables.columns[name])}")
            print(f"{tables.n_impressions} impressions, {tables.n_users} users, {tables.n_items} items -> {args.out}")
            return
        result = generate(spec, args.rows, args.out, fmt=args.format, n_shards=args.shards, seed=args.seed)
    except ValueError as exc:
        raise ConfigError.single("prerank synth", "", str(exc)) from None
    print(f"{result.n_rows} rows in {len(result.files)} files -> {args.out}")


def _train(args: argparse.Namespace) -> None:
    from trainer.config.loader import load_config
    from trainer.spec.loader import load_spec
    spec = load_spec(args.spec)  # first, without TensorFlow: a bad spec or config is refused in a blink
    config = load_config(spec, args.config, args.set)
    import_tensorflow(getattr(args, "verbose", False))
    from trainer.training.distribution import server_task, strategy_from_env
    task = server_task()
    if task is not None:  # a worker or ps task of a parameter-server cluster: it serves the chief
        from trainer.training.cluster_server import serve
        why = serve(task, args.model_dir, config.training.cluster_grace_seconds)
        print(f"{task['type']} {task.get('index', 0)}: stopped serving ({why})", flush=True)
        return
    # before other TensorFlow work: a multi-worker strategy must exist first
    strategy = strategy_from_env(config.training.min_shard_mb)
    from trainer.api import train
    validation = False if args.no_validation else args.validation
    train(spec, config, args.model_dir, data=args.data, validation=validation, strategy=strategy,
          skip_corrupt=args.skip_corrupt, refit=args.refit, preprocessing=args.preprocessing,
          warm_start=args.warm_start, restart_schedule=args.restart_schedule)


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
    from serving.savedmodel.prune import prune_rules, report_table
    from trainer.spec.loader import load_spec
    rules = prune_rules(args.prune_rows_below, args.prune_norm_below)
    result = export_model(load_spec(args.spec), args.model_dir, args.export_base, args.version, args.data,
                          prune=not args.no_prune, student_only=args.student_only, embeddings=args.embeddings,
                          rules=rules)
    if result.pruning:
        print(report_table(result.pruning))
    if result.variables_bytes_before is not None:
        print(f"SavedModel variables: {result.variables_bytes_before:,} bytes unpruned -> "
              f"{result.variables_bytes_after:,} exported "
              f"({1 - result.variables_bytes_after / result.variables_bytes_before:.1%} smaller)")
    kind = ("student-only " if result.student_only else "") + \
        (f"{result.embeddings} " if result.embeddings != "float32" else "")
    print(f"exported {kind}version {result.version} -> {result.path} (fingerprint {result.fingerprint})")


def _verify_export(args: argparse.Namespace) -> None:
    from serving.savedmodel.verify import TOLERANCE, verify_export
    result = verify_export(args.export_dir, args.data, args.batches)
    print(result.signatures)
    print("warmup requests run: " + ", ".join(f"{k} x{v}" for k, v in sorted(result.warmup.items())))
    if result.rows_checked:
        print(f"stored rows ({result.embeddings}) vs the checkpoint's (max |diff|; values beyond half a "
              "quantization step):")
        for table, (diff, bad) in sorted(result.rows_checked.items()):
            print(f"  {table:<32}{diff:.3g}  {bad}{'' if bad == 0 else '  FAIL'}")
    reference = "" if result.embeddings == "float32" else f", its tables stored as {result.embeddings},"
    print(f"export vs trained model{reference} on {result.rows} rows (max |diff|):")
    for key, diff in sorted(result.max_diff.items()):
        print(f"  {key:<32}{diff:.3g}{'' if diff <= TOLERANCE else '  FAIL'}")
    if result.auc:
        print(f"AUC on the same {result.rows} rows, checkpoint as trained -> export (pruning's and the "
              f"{result.embeddings} format's effect):")
        for label, (trained, served) in result.auc.items():
            print(f"  {label}: {trained:.4f} -> {served:.4f} ({served - trained:+.4f})")
    if not result.ok:
        raise ExportError(f"{result.path}: outputs differ from the trained model by more than {TOLERANCE}, "
                          "or stored rows from the checkpoint's by more than half a quantization step")
    print(f"{result.path}: verified")


def _onnx(args: argparse.Namespace) -> None:
    from serving.onnx.export import export_onnx
    from serving.savedmodel.prune import prune_rules
    from trainer.spec.loader import load_spec
    rules = prune_rules(args.prune_rows_below, args.prune_norm_below)
    result = export_onnx(load_spec(args.spec), args.model_dir, args.out, args.data, embeddings=args.embeddings,
                         rules=rules)
    print(f"{', '.join(sorted(result.graphs))} -> {result.path} (inputs.json and README.md describe the inputs)")


def _embed_items(args: argparse.Namespace) -> None:
    from serving.item_store.embed import embed_items
    result = embed_items(args.export_dir, args.store, args.data, args.batch_size, item_table=args.items,
                         attributes=tuple(args.attribute), reference_time=args.reference_time, keep=args.keep)
    note = f" (resumed at item {result.resumed_from})" if result.resumed_from else ""
    print(f"catalog: {result.items:,} items from {result.source}")
    print(f"{result.items} item vectors of model version {result.model_version} (fingerprint {result.fingerprint}) "
          f"-> {result.store_path}{note}")
    if result.removed:
        print(f"retention (keep {args.keep}): removed {', '.join(result.removed)}")


def _serve(args: argparse.Namespace) -> None:
    from serving.service.app import ServiceConfig
    from serving.service.server import serve
    if not os.path.exists(args.export):
        raise ExportError(f"{args.export}: no such export base or version directory")
    config = ServiceConfig(args.export, args.store, args.onnx, args.cache_items, args.k, args.strategy,
                           args.max_candidates, args.max_body_bytes, args.poll_seconds)
    print(f"prerank serve: {args.export} (item vectors: {args.store}) on http://{args.host}:{args.port}", flush=True)
    serve(config, args.host, args.port, None if args.access_log == "off" else args.access_log)


# ---- the parser ----

def _convert_epilog() -> str:
    from trainer.data.convert.expressions import describe_functions
    functions = "\n".join(f"  {doc}" for doc in describe_functions().values())
    return ("derive expressions: column names, numbers, 'strings', True / False / None, [constants], + - * / // %,"
            "\n  comparisons (== != < <= > >=, chained), and / or / not, A if CONDITION else B, and:\n" + functions +
            "\n\nexample:\n  prerank convert feature_specs/sample.yaml --table data/sample/impressions.parquet \\\n"
            "    --join data/sample/users.parquet:user_id data/sample/items.parquet:video_id \\\n"
            "    --derive 'date=date(time_ms)' 'hour=hour(time_ms)' 'long_view=play_time_ms >= 30000' \\\n"
            "    --history watch_seq=video_id:20 click_seq=video_id:is_click:10 --user user_id --time time_ms \\\n"
            "    --partition-by date --out out/sample")


def add_globs(parser, flag: str, what: str, required: bool = False) -> None:
    """A files option, the same form in every command: one or more globs after the flag (`--data a/*.gz b/*.gz`;
    quoted globs are expanded by prerank, unquoted ones by the shell: both work)."""
    parser.add_argument(flag, nargs="+", metavar="GLOB", help=what, required=required)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The conversion engine's resources, the same for every converting command."""
    parser.add_argument("--memory-limit", default="2GB", help="the engine's memory limit (DuckDB); past it, joins, "
                                                              "sorts and histories spill to --temp-dir (default 2GB)")
    parser.add_argument("--temp-dir", help="where the engine spills (default: beside --out, removed at the end)")
    parser.add_argument("--threads", type=int, help="engine threads (default: one per core)")


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
    parser.add_argument("--warm-start", metavar="PREV_MODEL_DIR",
                        help="daily retraining: start a new --model-dir from PREV_MODEL_DIR's latest checkpoint "
                             "(weights and optimizer slots of every table and part that still fits, table rows by "
                             "id, usage counts), continue its step, read training.warm_start_epochs epochs, and "
                             "extend its vocabularies with the new data (unless --refit or --preprocessing); what "
                             "was carried and what started fresh is printed and recorded in run.json")
    parser.add_argument("--restart-schedule", action="store_true",
                        help="with --warm-start: count steps from 0, so the distillation weight ramps up again")


def add_table_storage(p: argparse.ArgumentParser) -> None:
    """How an export stores its tables: the embedding format and the opt-in pruning rules
    (`serving.savedmodel.prune.prune_rules` checks the rules' values)."""
    p.add_argument("--embeddings", default="float32", metavar="FORMAT",
                   help="how the kept rows are stored: float32 (as trained, the default), float16, or int8 with "
                        "a float16 scale and offset per row; dequantized in the graph at lookup")
    p.add_argument("--prune-rows-below", metavar="N",
                   help="drop the rows training read fewer than N times (the checkpoint's usage counts); their ids "
                        "read the table's learned out-of-vocabulary row. Opt-in: it changes scores")
    p.add_argument("--prune-norm-below", metavar="X",
                   help="drop the rows whose L2 norm is below X; their ids read the zero row. Opt-in: it changes "
                        "scores")


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

    p = sub.add_parser("convert", help="raw tables (impressions joined with side tables, derived columns, "
                                       "histories) -> the partitions prerank trains on",
                       description="Convert an impressions table, joined with side tables by key, into "
                                   "OUT/<COLUMN>=<value>/part-XXXXX files holding the columns SPEC reads, checked "
                                   "against it before anything is written; OUT appears whole or not at all.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_convert_epilog())
    p.add_argument("spec", help="feature spec YAML: its columns are written, each checked for its type")
    add_globs(p, "--table", "the impressions table: Parquet (.parquet) or CSV (.csv, .csv.gz, with a header)",
              required=True)
    p.add_argument("--join", nargs="+", action="extend", metavar="GLOB:KEY[:PREFIX[:COLUMNS]]",
                   help="side tables joined on KEY (LEFT JOIN: no impression is dropped; a key twice in a side "
                        "table is an error); PREFIX is put before their column names, COLUMNS (comma-separated) "
                        "takes only those; joined in order, a key may come from an earlier side table")
    p.add_argument("--derive", nargs="+", action="extend", metavar="NAME=EXPR", help="derived columns, e.g. 'long_view=play_time_ms "
                                                                   ">= 18000' 'date=date(time_ms)' (see below)")
    p.add_argument("--history", nargs="+", action="extend", metavar="NAME=ITEM[:LABEL]:N",
                   help="per user, the last N values of ITEM (only rows with LABEL set, if given) strictly before "
                        "each impression's time, oldest first; needs --user and --time")
    p.add_argument("--user", help="the impressions' user column (for --history)")
    p.add_argument("--time", help="the impressions' time column (for --history): a number or a timestamp")
    p.add_argument("--partition-by", required=True, metavar="COLUMN",
                   help="the column whose values name the partitions, e.g. date (of the impressions, or derived)")
    p.add_argument("--out", required=True, help="a new (or empty) output folder")
    p.add_argument("--format", choices=("parquet", "tfrecord", "csv"), default="parquet",
                   help="parquet (default), tfrecord (tf.Example) or csv")
    p.add_argument("--compression", choices=("GZIP", "none"), default="GZIP", help="TFRecord compression")
    p.add_argument("--keep", nargs="+", action="extend", metavar="COLUMN", help="columns written besides the spec's")
    files = p.add_mutually_exclusive_group()
    files.add_argument("--files-per-partition", type=int, help="files of nearly equal size per partition")
    files.add_argument("--rows-per-file", type=int, default=1_000_000,
                       help="at most this many rows a file (default 1,000,000)")
    p.add_argument("--max-rows", type=int, help="convert only the first N impressions (to try a conversion)")
    add_engine_arguments(p)
    p.set_defaults(func=_convert)

    p = sub.add_parser("convert-kuairand", help="the bundled KuaiRand tables through `prerank convert`, "
                                                "partitioned by date")
    p.add_argument("--src", default="data/kuairand", help="folder with the KuaiRand parquet files")
    p.add_argument("--out", default="out/kuairand/tfrecord", help="a new (or empty) output folder "
                                                                  "(date=YYYYMMDD/part-*)")
    p.add_argument("--spec", default="feature_specs/kuairand.yaml",
                   help="spec to check the columns against (every column of the tables is written)")
    p.add_argument("--format", choices=("tfrecord", "parquet", "csv"), default="tfrecord")
    p.add_argument("--compression", choices=("GZIP", "none"), default="GZIP")
    p.add_argument("--shards-per-date", type=int, default=2)
    add_engine_arguments(p)
    p.set_defaults(func=_convert_kuairand)

    p = sub.add_parser("kuairand-items", help="the KuaiRand item table as of one day: every video with the item "
                                              "tower's columns (its age on that day) and a click-through prior "
                                              "from the days before")
    p.add_argument("--src", default="data/kuairand", help="folder with the KuaiRand parquet files")
    p.add_argument("--out", required=True, help="the table to write: CSV, or TFRecord (.tfrecord / .tfrecord.gz)")
    p.add_argument("--date", type=int, required=True, help="the reference day, YYYYMMDD: ages are computed for it, "
                                                           "the prior counts impressions before it")
    p.set_defaults(func=_kuairand_items)

    p = sub.add_parser("analyze", help="fit vocabularies and normalisation statistics on training data")
    p.add_argument("spec")
    add_globs(p, "--data", "files to fit on (default: the spec's data.train)")
    p.add_argument("--out", required=True, help="folder for preprocessing.json and vocab/")
    p.add_argument("--extend", metavar="PREV",
                   help="grow this previous fit (a model directory, or a `prerank analyze` output) with the data "
                        "instead of fitting afresh: known ids keep their indices, new ids are appended by frequency "
                        "up to max_size, statistics are kept unless redefined (see trainer/preprocessing/extend.py)")
    add_skip_corrupt(p)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("inspect", help="run the input pipeline and print one batch")
    p.add_argument("spec")
    add_globs(p, "--data", "files to read (default: the spec's data.train)")
    p.add_argument("--format", choices=FORMATS, help="default: the spec's data.format")
    p.add_argument("--batch-size", type=int, default=8)
    add_skip_corrupt(p)
    p.set_defaults(func=_inspect)

    p = sub.add_parser("synth", help="generate synthetic data from a spec: joined rows, or raw tables to convert "
                                     "(--tables)")
    p.add_argument("spec")
    p.add_argument("--rows", type=int, required=True, help="rows (with --tables: impressions)")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=FORMATS, default="tfrecord")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    raw = p.add_argument_group("raw tables (--tables): impressions.parquet, users.parquet, items.parquet, streamed")
    raw.add_argument("--tables", action="store_true", help="write raw, unjoined tables for `prerank convert`")
    raw.add_argument("--derived", nargs="+", metavar="COLUMN", help="columns convert derives (--derive, --history):"
                                                                   " left out of the tables")
    raw.add_argument("--user-key", help="the users table's key (default: the first categorical user feature)")
    raw.add_argument("--item-key", help="the items table's key (default: the first categorical item feature)")
    raw.add_argument("--time-column", default="time_ms", help="the impressions' time, epoch milliseconds")
    raw.add_argument("--first-date", type=int, default=20220401, help="first day of the impressions (yyyymmdd)")
    raw.add_argument("--days", type=int, default=7, help="days the impressions span")
    raw.add_argument("--cardinality", nargs="+", metavar="TABLE=N", help="ids in an embedding table (the users "
                                                                         "and items tables get one row per id)")
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
    p.add_argument("--student-only", action="store_true",
                   help="only the student's signatures (user_embedding, item_embedding, prerank, pairwise, "
                        "prerank_vectors) and the tables they read: no teacher, no cross or privileged tables")
    add_table_storage(p)
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
    add_table_storage(p)
    p.set_defaults(func=_onnx)

    p = sub.add_parser("embed-items", help="item vectors of a whole catalog into a versioned store")
    p.add_argument("export_dir", help="a version directory, or a base directory (its newest version)")
    p.add_argument("--store", required=True, help="a store directory (vectors go to STORE/<model version>-"
                                                  "<export fingerprint>/) or redis://HOST:PORT/DB")
    catalog = p.add_mutually_exclusive_group()
    add_globs(catalog, "--data", "impressions whose distinct items make the catalog (default: every split of the "
                                 "spec: data.train, data.validation, data.eval)")
    add_globs(catalog, "--items", "an item table instead (Parquet, CSV or TFRecord by suffix): one row per item with "
                                  "every column the item tower reads, those the impressions carry (e.g. an item's "
                                  "age) included")
    p.add_argument("--attribute", action="append", default=[], metavar="COLUMN",
                   help="a numeric column of the item table stored beside each vector, e.g. a click-through prior "
                        "the scoring service's tiers order by (repeatable; needs --items)")
    p.add_argument("--reference-time", metavar="ISO_TIME",
                   help="the time the item features hold for (e.g. the day an item table's ages were computed for: "
                        "2022-04-30), recorded in the store: vectors are as fresh as their inputs")
    p.add_argument("--keep", type=int, default=3, help="retention: keep the newest KEEP versions of the store, remove "
                                                       "older ones once this one is complete")
    p.add_argument("--batch-size", type=int, default=4096)
    p.set_defaults(func=_embed_items)

    p = sub.add_parser("serve", help="the pre-rank scoring service: HTTP + JSON, user vector once, item vectors "
                                     "from the store through a hot cache, top-K / threshold / tiers")
    p.add_argument("export", help="an export base (new versions are swapped in once their item vectors are in the "
                                  "store) or one version directory")
    p.add_argument("--store", required=True, help="the item store embed-items wrote: a directory or "
                                                  "redis://HOST:PORT/DB")
    p.add_argument("--onnx", metavar="ONNX_BASE", help="ONNX exports by version (ONNX_BASE/<version>, `prerank onnx "
                                                       "--out`): the user tower runs there when it matches the export")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--cache-items", type=int, default=100_000, help="hot cache size in items (each (d + attributes) "
                                                                    "x 4 bytes); 0 turns it off")
    p.add_argument("--k", type=int, default=200, help="default number of candidates kept")
    p.add_argument("--strategy", default="top_k", help="default strategy: top_k, or a strategy's JSON, e.g. "
                                                       "'{\"name\": \"threshold\", \"min_score\": 0.2}'")
    p.add_argument("--max-candidates", type=int, default=10_000, help="candidates per request, at most")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20, help="request body cap (413 beyond)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="how often the export base is checked for a "
                                                                   "new version")
    p.add_argument("--access-log", default="-", help="where the JSON access lines go: - (stdout), a file, or off")
    p.set_defaults(func=_serve)
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
