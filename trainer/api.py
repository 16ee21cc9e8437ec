"""The Python API of the training side: `train` (the training job) and `evaluate` (a trained model on data).

`prerank train` and `prerank evaluate` are thin layers over these two; both
also write what the commands write (MODEL_DIR/metrics.json,
MODEL_DIR/evaluation.json). `trainer.train` etc. are these functions
(`trainer/__init__.py` loads this module on first use).

The job sits above both `trainer.training` and `trainer.evaluation` because it
runs both: it fits (or reloads) the preprocessing, trains under the strategy
TF_CONFIG selects, evaluates on the validation data and writes the summary.

With `skip_corrupt`, every read of a job skips corrupt records (each file is
scanned once per process): the job prints one line per file and read, and
metrics.json records them under "skipped" ({"fit", "training", "validation",
"catalog"}: lists of {"file", "records", "detail", "readable"}; "fit" is that
of the preprocessing the directory holds, as preprocessing.json records it);
evaluation.json records those of `evaluate` the same way ({"evaluation",
"catalog"}).

A resumed job that finds its run finished trains nothing: metrics.json keeps
the "training" figures of the call that trained (steps, examples, seconds, last
losses) and counts such calls in "training.noop_resumes".
"""
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from trainer.config.cluster import parameter_servers
from trainer.config.knobs import Config
from trainer.config.loader import load_config, validate_config
from trainer.data import corrupt
from trainer.data.catalog import ItemCatalog, build_catalog
from trainer.data.pipeline import resolve_files
from trainer.data.splits import IN_SAMPLE_KEY, in_sample_note, resolve_data, shared_files
from trainer.evaluation.evaluate import evaluate_model, flatten
from trainer.evaluation.summary import metrics_table
from trainer.errors import ConfigError, ModelDirError, SpecIssue
from trainer.files import read_json, write_json_atomic
from trainer.models.joint import JointModel
from trainer.preprocessing.analyze import analyze
from trainer.preprocessing.extend import extend_preprocessing, extension_summary
from trainer.preprocessing.fit_definition import mismatches
from trainer.preprocessing.fitted import FILE_NAME, Preprocessing
from trainer.spec.loader import as_spec
from trainer.spec.table_size import oversized_tables
from trainer.spec.types import Spec
from trainer.training.checkpoints import latest_checkpoint
from trainer.training.coordinated import CoordinatedLoop
from trainer.training.distribution import is_chief, strategy_from_env, uses_parameter_servers
from trainer.training.layout import EVALUATION_FILE, METRICS_FILE, PREPROCESSING_DIR, preprocessing_dir
from trainer.training.loop import Loop
from trainer.training.run_record import check_or_record, warm_start_record
from trainer.training.trained import load_trained, restore_teacher, trained_checkpoint
from trainer.training.warm_start import WarmStart

Log = Callable[[str], None]


@dataclass
class TrainResult:
    """What `train` did; `summary` is what it wrote to MODEL_DIR/metrics.json."""

    model_dir: str
    step: int  # the step the model is at
    steps_run: int  # in this call (a resumed job runs fewer)
    examples: int
    seconds: float
    resumed_from: int | None  # the checkpoint step it resumed from
    last_losses: dict[str, float]
    validation: dict | None  # the evaluation on the validation data (None: no validation data, or not the chief)
    summary: dict
    skipped: dict[str, list[dict]]  # read ("fit", "training", ...) -> the corrupt records it skipped, per file


def fitted_preprocessing(spec: Spec, data: str | list[str], model_dir: str, refit: bool = False, save: bool = True,
                         skip_corrupt: bool = False, reuse: str | None = None, extend: Preprocessing | None = None,
                         log: Log = print) -> Preprocessing:
    """The job's preprocessing: `reuse`'s, MODEL_DIR's, or a new fit on `data`; saved into MODEL_DIR (`save`).

    A fit is reused when it matches the spec table by table (`fit_definition.mismatches`: each vocabulary's
    dtype, columns, min_count and max_size, each statistic's column and steps), so edits that no fit reads
    (model knobs, dimensions) keep it. The other workers of a multi-worker job never write: they load the
    chief's, or fit the same preprocessing themselves (fitting is deterministic) while the chief may still be
    writing it.

    Args:
      spec: the spec to fit for.
      data: the training files (globs).
      model_dir: the model directory.
      refit: fit again even if MODEL_DIR holds a preprocessing that matches the spec.
      save: write the preprocessing into MODEL_DIR/preprocessing.
      skip_corrupt: a fit skips corrupt records (logged, and listed in the result's `skipped`).
      reuse: a `prerank analyze` output to train with instead of fitting (`train --preprocessing DIR`): refused,
        naming each table that differs, unless it matches the spec; refused if MODEL_DIR already holds another.
      extend: a previous model's preprocessing to extend with `data` instead of fitting afresh (a warm start:
        `trainer.preprocessing.extend`), when MODEL_DIR holds none yet.
      log: where notes go.
    """
    directory = os.path.join(model_dir, PREPROCESSING_DIR)
    own = os.path.join(directory, FILE_NAME)
    if reuse is not None:
        fitted = reusable_preprocessing(reuse, spec)
        if os.path.exists(own) and Preprocessing.load(directory) != fitted:
            raise ModelDirError(f"{directory} already holds another preprocessing (this model was trained with "
                                f"it); --preprocessing {reuse} cannot replace it: use a new --model-dir")
        if save:
            fitted.save(directory)
        log(f"preprocessing: reusing {reuse}")
        return fitted
    if not refit and os.path.exists(own):
        fitted = Preprocessing.load(directory)
        if not reuse_problems(fitted, spec):
            fitted.check_matches(spec, directory)
            return fitted
        if save:
            log(f"note: {directory} was fitted for another version of the spec; refitting")
    if extend is not None and not refit:
        fitted = extend_preprocessing(extend, spec, data, skip_corrupt=skip_corrupt)
        log(f"preprocessing: extending {extend.loaded_from} with {data}:\n{extension_summary(fitted)}")
    else:
        fitted = analyze(spec, data, skip_corrupt=skip_corrupt)
    corrupt.report(fitted.skipped, log, "fit: ")
    if save:
        fitted.save(directory)
    return fitted


def reusable_preprocessing(directory: str, spec: Spec) -> Preprocessing:
    """The `prerank analyze` output in `directory` if it matches `spec` table by table; ModelDirError naming every
    table and statistic that does not."""
    fitted = Preprocessing.load(directory)
    problems = reuse_problems(fitted, spec)
    if problems:
        raise ModelDirError(f"{os.path.join(directory, FILE_NAME)} does not match {spec.path}: " + "; ".join(problems)
                            + ". Fit it again with `prerank analyze`, or train without --preprocessing")
    return fitted


def reuse_problems(fitted: Preprocessing, spec: Spec) -> list[str]:
    """Why `fitted` cannot serve `spec` (empty: it can): its tables and statistics compared one by one; a fit
    older than the recorded definitions must be of the very same spec."""
    if fitted.definitions:
        return mismatches(spec, fitted.definitions)
    if fitted.spec_fingerprint != spec.fingerprint:
        return [f"it was fitted for another version of spec '{fitted.spec_name}' by a prerank that did not record "
                "what each table was fitted from"]
    return []


def train(spec: Spec | str, config: Config | None, model_dir: str, data: str | list[str] | None = None,
          validation: str | list[str] | bool | None = None, strategy: tf.distribute.Strategy | None = None,
          skip_corrupt: bool = False, refit: bool = False, preprocessing: str | None = None,
          warm_start: str | None = None, restart_schedule: bool = False, log: Log = print) -> TrainResult:
    """Train (or resume training) the model of `model_dir`.

    Args:
      spec: a Spec, or the path of a spec file.
      config: the configuration; None: the spec file's `model:` / `training:` / `plugins:` sections. A Config
        built in Python gets the checks of one read from YAML (ConfigError naming the field).
      model_dir: where preprocessing, checkpoints and logs go; the same call resumes a killed job.
      data: the training files (globs); default: the spec's data.train.
      validation: files evaluated at training.eval_every and at the end; default: the spec's data.validation;
        False: none. Validation files that are also training files are reported, and their figures marked
        in-sample (metrics.json validation.in_sample, history key eval/in_sample, the report's AUC plot).
      strategy: a tf.distribute strategy; default: the one TF_CONFIG selects (create it before other TensorFlow
        work in a multi-worker job).
      skip_corrupt: skip and count corrupt records instead of failing, in every read of the job (the fit, the
        item table, training, validation); each file's count is logged and recorded in metrics.json.
      refit: fit the preprocessing again even if the model directory holds one (a directory without a checkpoint
        only).
      preprocessing: a `prerank analyze` output directory to train with instead of fitting; it must match the
        spec table by table (`fit_definition`); copied into MODEL_DIR/preprocessing. Not with `refit`.
      warm_start: a trained model directory to start from (daily retraining, `trainer.training.warm_start`): a
        new MODEL_DIR gets its carried weights, optimizer slots and usage counts, continues its step, reads
        training.warm_start_epochs epochs, and extends its fitted vocabularies with `data` (unless `refit` or
        `preprocessing`). Ignored, with a note, when MODEL_DIR holds a checkpoint (it resumes its own).
      restart_schedule: with `warm_start`, count steps from 0 (the distillation schedule ramps again).
      log: where progress lines go.
    """
    spec = as_spec(spec)
    config = validate_config(config, spec) if config is not None else load_config(spec)
    strategy = strategy or strategy_from_env(config.training.min_shard_mb)
    t, m = config.training, config.model
    data = resolve_data(data, spec, "train", purpose="training data")
    validation = None if validation is False else (validation or spec.data.validation)
    chief = is_chief(strategy)  # the only worker that writes into MODEL_DIR
    training_files = resolve_files(data)  # a glob that matches nothing fails here, before anything is trained
    validation_files = resolve_files(validation) if validation else []
    shared = shared_files(training_files, validation_files)
    in_sample = {"shared_files": len(shared), "validation_files": len(validation_files)} if shared else None
    if shared and chief:
        log(f"warning: {in_sample_note(shared, validation_files)}")
    marker = {IN_SAMPLE_KEY: 1.0} if in_sample else {}
    if preprocessing:
        reusable_preprocessing(preprocessing, spec)  # refused before MODEL_DIR is written
    # a warm start's previous model is opened (and a table whose ids changed type refused) before MODEL_DIR is written
    carry, first_step = warm_start_plan(model_dir, spec, warm_start, restart_schedule, log)
    resumed = check_or_record(model_dir, spec, config, record=chief, log=log)
    if refit and resumed:
        log(f"note: --refit ignored: {model_dir} holds checkpoints trained with its preprocessing")
    skipped: dict[str, list[dict]] = {}
    if refit and preprocessing:
        raise ConfigError.single(spec.path, "preprocessing", "refit and a preprocessing to reuse exclude each other")
    if m.mode == "student":
        if preprocessing:
            raise ConfigError.single(spec.path, "preprocessing", "a student-only job uses its teacher's "
                                     "preprocessing (training.teacher_dir); train without --preprocessing")
        fitted = Preprocessing.load(preprocessing_dir(model_dir, config))
        fitted.check_matches(spec, t.teacher_dir)
    else:
        fitted = fitted_preprocessing(spec, data, model_dir, refit and not resumed, save=chief,
                                      skip_corrupt=skip_corrupt, reuse=preprocessing,
                                      extend=carry.previous.preprocessing if carry else None, log=log)
        skipped["fit"] = fitted.skipped
    log(f"preprocessing: {len(fitted.vocabularies)} vocabularies, {len(fitted.stats)} statistics, "
        f"fitted on {fitted.rows} rows")
    oversized = oversized_tables(spec, t.max_table_gb, {n: len(ids) for n, ids in fitted.vocabularies.items()},
                                 parameter_servers() if uses_parameter_servers(strategy) else 0)
    if oversized:  # tables of fitted vocabularies: their size is known only now
        raise ConfigError([SpecIssue(spec.path, None, "training.max_table_gb", message) for message in oversized])
    catalog = None
    if m.distill.cascade.enabled and m.distill.cascade.unexposed > 0:
        catalog = build_catalog(spec, data, m.student.dual_augmented.item_feature, skip_corrupt=skip_corrupt)
        skipped["catalog"] = corrupt.report(catalog.skipped, log, "catalog: ")
        log(f"item table: {catalog.size} items (sampling {m.distill.cascade.unexposed} unexposed per group)")

    def build_model() -> JointModel:
        tf.keras.utils.set_random_seed(t.seed)
        model = JointModel(spec, fitted, config, catalog, name="joint")
        if m.mode == "student":
            restore_teacher(model, t.teacher_dir)
        return model

    latest_evaluation: dict = {}  # the step, result and seconds of the last evaluation on the validation data

    def evaluate_validation(model: JointModel, step: int) -> dict:
        started = time.time()
        result = evaluate_model(model, validation, max_batches=t.eval_batches, skip_corrupt=skip_corrupt)
        latest_evaluation.update(step=step, result=result, seconds=time.time() - started)
        return result

    def on_evaluate(model: JointModel, step: int) -> dict:
        return {**flatten(evaluate_validation(model, step), prefix="eval"), **marker} if validation else {}

    steps_per_epoch = math.ceil(fitted.rows / t.batch_size) if fitted.rows else None
    loop_class = CoordinatedLoop if uses_parameter_servers(strategy) else Loop
    loop = loop_class(spec, config, model_dir, strategy, build_model, data, steps_per_epoch, on_evaluate,
                      skip_corrupt, carry, first_step or 0, t.warm_start_epochs if first_step is not None else None)
    if isinstance(loop, CoordinatedLoop):
        log("parameter servers: " + ", ".join(f"table {name} in {n} shard{'s' if n > 1 else ''}"
                                              for name, n in loop.table_shards().items()))
        if t.deterministic:
            log("note: training.deterministic does not apply to a parameter-server job (each worker reads its own "
                "shuffled order; see the README's Parameter servers)")
    corrupt.report(list(loop.skipped.values()), log, "training: ")
    if loop.latest_checkpoint:
        log(f"resuming from {loop.latest_checkpoint}")
    result = loop.run()
    skipped["training"] = list(loop.skipped.values())
    log(f"trained to step {result.step} ({result.steps_run} steps here, {result.examples} examples, "
        f"{result.seconds:.1f} s, {result.examples / max(result.seconds, 1e-9):.0f} examples/s)")
    training = {"steps_run": result.steps_run, "examples": result.examples, "seconds": round(result.seconds, 2),
                "resumed_from": result.resumed_from, "last_losses": result.last_losses}
    if result.steps_run == 0 and result.resumed_from is not None and chief:
        training = noop_resume(model_dir, result.step, training)
    summary = {"step": result.step, "mode": m.mode, "training": training}
    evaluation = None
    if validation and chief:
        if latest_evaluation.get("step") != result.step:  # else: evaluated at this very step already
            evaluate_validation(loop.model, result.step)
        evaluation = dict(latest_evaluation["result"])
        loop.log(result.step, {**flatten(evaluation, prefix="eval"), **marker})
        skipped["validation"] = corrupt.report(evaluation.pop("skipped"), log, "validation: ")
        summary["validation"] = {"data": validation, "in_sample": in_sample,
                                 "seconds": round(latest_evaluation["seconds"], 2), **evaluation}
        title = "IN-SAMPLE validation (its files are training files)" if in_sample else "validation"
        log(f"\n{title} ({validation}):\n{metrics_table(evaluation)}")
    summary["skipped"] = skipped
    if chief:
        write_json_atomic(os.path.join(model_dir, METRICS_FILE), summary)
    loop.barrier()  # the other workers wait for the chief's evaluation: all leave together
    return TrainResult(model_dir, result.step, result.steps_run, result.examples, result.seconds,
                       result.resumed_from, result.last_losses, summary.get("validation"), summary, skipped)


def warm_start_plan(model_dir: str, spec: Spec, previous: str | None, restart_schedule: bool,
                    log: Log = print) -> tuple[WarmStart | None, int | None]:
    """(what carries the previous model into MODEL_DIR before its first step, or None; the step the run counts
    from, None for a run that is not warm-started). A directory with a checkpoint resumes it (its recorded warm
    start, if any, gives the step); a new one is warm-started from `previous`, or from the model its run.json
    names (the Loop records it after the carry: a rerun after a kill before the first checkpoint carries the
    same)."""
    record = warm_start_record(model_dir)
    if latest_checkpoint(model_dir) is not None:
        if previous and (record is None or os.path.abspath(previous) != record["from"]):
            log(f"note: --warm-start {previous} ignored: {model_dir} holds checkpoints, it resumes from its own")
        return None, record["step"] if record else None
    previous = previous or (record["from"] if record else None)
    if previous is None:
        return None, None
    carry = WarmStart(previous, spec, restart_schedule)
    return carry, carry.step


def noop_resume(model_dir: str, step: int, this_call: dict) -> dict:
    """The "training" figures of metrics.json for a call that resumed a finished run (trained nothing): those of
    the call that trained to `step` (from MODEL_DIR/metrics.json), with `noop_resumes` counting such calls.
    Without that summary (a job killed after its last checkpoint, before writing it): this call's figures."""
    path = os.path.join(model_dir, METRICS_FILE)
    if not os.path.exists(path):
        return {**this_call, "noop_resumes": 1}
    previous = read_json(path, ModelDirError, "`prerank train`")
    training = previous.get("training") if isinstance(previous, dict) else None
    if not isinstance(training, dict) or not isinstance(previous.get("step"), int):
        raise ModelDirError(f"{path}: expected a JSON object with an integer 'step' and a 'training' object (the "
                            "summary `prerank train` writes); move it away to record this call's figures instead")
    if previous["step"] != step:
        return {**this_call, "noop_resumes": 1}
    return {**training, "noop_resumes": int(training.get("noop_resumes", 0)) + 1}


def evaluate(spec: Spec | str, model_dir: str, data: str | list[str] | None = None, sampled: tuple[int, ...] = (0,),
             items: str | list[str] | None = None, batch_size: int = 2048, max_batches: int | None = None,
             seed: int = 0, skip_corrupt: bool = False, out: str | None = None, log: Log = print) -> dict:
    """Evaluate the latest checkpoint of `model_dir` and write the result (JSON) to `out` (default:
    MODEL_DIR/evaluation.json); the result. `serving.evaluate_export` evaluates an export the same way.

    Args:
      spec: a Spec, or the path of a spec file.
      model_dir: a trained model directory.
      data: the evaluation files; default: the spec's data.eval.
      sampled: numbers K of items sampled per group for the consistency candidate sets (0: exposures only).
      items: files to build the item table from (default: the spec's data.train, else `data`).
      batch_size: rows per evaluation batch.
      max_batches: evaluate on at most this many batches.
      seed: seed of the sampled items.
      skip_corrupt: skip and count corrupt records instead of failing (logged per file, and recorded in the
        result's "skipped": {"evaluation": [...], "catalog": [...]}).
      out: where the result goes.
      log: where progress lines go.
    """
    spec = as_spec(spec)
    data = resolve_data(data, spec, "eval", purpose="evaluation data")
    config, _ = trained_checkpoint(model_dir)  # a trained model directory, before reading any data
    skipped: dict[str, list[dict]] = {}
    catalog = None
    if any(sampled):
        catalog = evaluation_catalog(spec, items, data, config.model.student.dual_augmented.item_feature,
                                     skip_corrupt, log)
        skipped["catalog"] = catalog.skipped
    model = load_trained(spec, model_dir, data, catalog, skip_corrupt=skip_corrupt)
    result = evaluate_model(model, data, batch_size, max_batches, tuple(sampled), seed=seed,
                            skip_corrupt=skip_corrupt)
    skipped["evaluation"] = corrupt.report(result.pop("skipped"), log, "evaluation: ")
    result = {"data": data, "checkpoint": model.checkpoint_path, **result, "skipped": skipped}
    write_json_atomic(out or os.path.join(model_dir, EVALUATION_FILE), result)
    return result


def evaluation_catalog(spec: Spec, items: str | list[str] | None, data: str | list[str], id_feature: str | None,
                       skip_corrupt: bool = False, log: Log = print) -> ItemCatalog:
    """The item table an evaluation samples candidates from: built from `items` (default: the spec's
    data.train, else the evaluation `data`), items named by `id_feature`; its size and skipped corrupt records
    logged."""
    items_from = items or spec.data.train or data
    catalog = build_catalog(spec, items_from, id_feature, skip_corrupt=skip_corrupt)
    corrupt.report(catalog.skipped, log, "catalog: ")
    log(f"item table: {catalog.size} items from {items_from}")
    return catalog
