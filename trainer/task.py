"""The training job (`prerank train`, `python -m trainer.task`).

Validates the spec and its `model:` / `training:` config (with `--set`
overrides), fits or reloads the preprocessing into `MODEL_DIR/preprocessing/`,
trains the joint student/teacher model (or one of the separate modes) under
the strategy TF_CONFIG selects, checkpoints into `MODEL_DIR/checkpoints/`,
logs to `MODEL_DIR/history.jsonl` and `MODEL_DIR/tensorboard/`, evaluates on
the validation data and writes `MODEL_DIR/metrics.json`. Run the same
command again after a kill to resume.
"""
import argparse
import math
import os
import sys
import time

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
from trainer.errors import DataError
from trainer.spec import Spec, load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="feature spec YAML (its model: / training: sections configure the job)")
    parser.add_argument("--model-dir", required=True, help="where preprocessing, checkpoints and logs go")
    parser.add_argument("--config", help="YAML with model: / training: sections (default: the spec file's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set training.max_steps=100 (repeatable)")
    parser.add_argument("--data", help="training files glob (default: the spec's data.train)")
    parser.add_argument("--validation", help="validation files glob (default: the spec's data.validation)")
    parser.add_argument("--skip-corrupt", action="store_true", help="skip and count corrupt records")
    parser.add_argument("--refit", action="store_true", help="fit the preprocessing again even if saved")


def fitted_preprocessing(spec: Spec, data: str, model_dir: str, refit: bool = False,
                         save: bool = True) -> "Preprocessing":
    """Load MODEL_DIR/preprocessing, or fit it on `data` and (if `save`: the chief) save it there.

    The other workers of a multi-worker job never write: they load the chief's, or fit the same
    preprocessing themselves (fitting is deterministic) while the chief may still be writing it.
    """
    from trainer.analyze import Preprocessing, analyze
    directory = os.path.join(model_dir, "preprocessing")
    if not refit and os.path.exists(os.path.join(directory, "preprocessing.json")):
        fitted = Preprocessing.load(directory)
        if fitted.spec_fingerprint != spec.fingerprint:
            if save:
                print(f"note: {directory} was fitted for another version of the spec; refitting")
        else:
            fitted.check_matches(spec, directory)
            return fitted
    fitted = analyze(spec, data)
    if save:
        fitted.save(directory)
    return fitted


def run(args: argparse.Namespace) -> dict:
    # TensorFlow-heavy modules load when the job runs, so `prerank validate` stays quick.
    from trainer.distribution import strategy_from_env
    strategy = strategy_from_env()  # first: a multi-worker strategy must exist before other TF work

    from trainer.analyze import Preprocessing
    from trainer.config import load_config
    from trainer.evaluate import evaluate_model, flatten
    from trainer.loop import Loop, is_chief
    from trainer.model import JointModel
    from trainer.run_record import check_or_record, write_json_atomic
    from trainer.summary import metrics_table

    spec = load_spec(args.spec)
    config = load_config(spec, args.config, args.set)
    t, m = config.training, config.model
    data = args.data or spec.data.train
    if not data:
        raise DataError(f"{args.spec}: no training data: give --data or set data.train in the spec")
    validation = args.validation or spec.data.validation
    chief = is_chief(strategy)  # the only worker that writes into MODEL_DIR
    resumed = check_or_record(args.model_dir, spec, config, record=chief)
    if m.mode == "student":
        teacher_dir = t.teacher_dir
        fitted = Preprocessing.load(os.path.join(teacher_dir, "preprocessing"))
        fitted.check_matches(spec, teacher_dir)
    else:
        fitted = fitted_preprocessing(spec, data, args.model_dir, args.refit and not resumed, save=chief)
    print(f"preprocessing: {len(fitted.vocabularies)} vocabularies, {len(fitted.stats)} statistics, "
          f"fitted on {fitted.rows} rows")
    catalog = None
    if m.distill.cascade.enabled and m.distill.cascade.unexposed > 0:
        from trainer.items import build_catalog
        catalog = build_catalog(spec, data, m.student.dual_augmented.item_feature)
        print(f"item table: {catalog.size} items (sampling {m.distill.cascade.unexposed} unexposed per group)")

    def build_model() -> JointModel:
        import tensorflow as tf
        tf.keras.utils.set_random_seed(t.seed)
        model = JointModel(spec, fitted, config, catalog, name="joint")
        if m.mode == "student":
            restore_teacher(model, t.teacher_dir)
        return model

    def on_evaluate(model, step: int) -> dict:
        if not validation:
            return {}
        return flatten(evaluate_model(model, validation, max_batches=t.eval_batches), prefix="eval")

    steps_per_epoch = math.ceil(fitted.rows / t.batch_size) if fitted.rows else None
    loop = Loop(spec, config, args.model_dir, strategy, build_model, data, steps_per_epoch, on_evaluate,
                args.skip_corrupt)
    if loop.latest_checkpoint:
        print(f"resuming from {loop.latest_checkpoint}")
    result = loop.run()
    print(f"trained to step {result.step} ({result.steps_run} steps here, {result.examples} examples, "
          f"{result.seconds:.1f} s, {result.examples / max(result.seconds, 1e-9):.0f} examples/s)")
    summary = {"step": result.step, "mode": m.mode, "training": {
        "steps_run": result.steps_run, "examples": result.examples, "seconds": round(result.seconds, 2),
        "resumed_from": result.resumed_from, "last_losses": result.last_losses}}
    if validation and chief:
        started = time.time()
        evaluation = evaluate_model(loop.model, validation, max_batches=t.eval_batches)
        loop.log(result.step, flatten(evaluation, prefix="eval"))
        summary["validation"] = {"data": validation, "seconds": round(time.time() - started, 2), **evaluation}
        print(f"\nvalidation ({validation}):\n{metrics_table(evaluation)}")
    if chief:
        write_json_atomic(os.path.join(args.model_dir, "metrics.json"), summary)
    loop.barrier()  # the other workers wait for the chief's evaluation: all leave together
    return summary


def restore_teacher(model, teacher_dir: str) -> None:
    """Load a separately trained teacher (encoder + MMoE) from its model directory's latest checkpoint."""
    import tensorflow as tf
    from trainer.loop import CHECKPOINT_DIR
    latest = tf.train.latest_checkpoint(os.path.join(teacher_dir, CHECKPOINT_DIR))
    if latest is None:
        raise DataError(f"training.teacher_dir {teacher_dir}: no checkpoint in {teacher_dir}/{CHECKPOINT_DIR}")
    view = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=model.teacher_encoder, teacher=model.teacher))
    view.restore(latest).expect_partial().assert_existing_objects_matched()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n")[0])
    add_arguments(parser)
    from trainer.cli import run_reporting_errors
    return run_reporting_errors(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
