"""The training job (`prerank train`, `python -m trainer.task`).

At this stage of prerank the job prepares everything training stands on:
it validates the spec, fits (or reloads) the preprocessing into
`MODEL_DIR/preprocessing/`, streams the training data through the input
pipeline and the feature encoder, and prints a batch summary. The joint
student/teacher training loop is the next step (issue #3).
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
from trainer.errors import DataError
from trainer.spec import Spec, load_spec


@dataclass(frozen=True)
class JobResult:
    rows: int
    batches: int
    skipped_records: int
    label_means: dict[str, float]
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="feature spec YAML")
    parser.add_argument("--model-dir", required=True, help="where the preprocessing (and later the model) goes")
    parser.add_argument("--data", help="training files glob (default: the spec's data.train)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--skip-corrupt", action="store_true", help="skip and count corrupt records")
    parser.add_argument("--refit", action="store_true", help="fit the preprocessing again even if saved")


def fitted_preprocessing(spec: Spec, data: str, model_dir: str, refit: bool = False) -> "Preprocessing":
    """Load MODEL_DIR/preprocessing, or fit it on `data` and save it there."""
    from trainer.analyze import Preprocessing, analyze
    directory = os.path.join(model_dir, "preprocessing")
    if not refit and os.path.exists(os.path.join(directory, "preprocessing.json")):
        fitted = Preprocessing.load(directory)
        if fitted.spec_fingerprint != spec.fingerprint:
            print(f"note: {directory} was fitted for another version of the spec; refitting")
        else:
            fitted.check_matches(spec, directory)
            return fitted
    fitted = analyze(spec, data)
    fitted.save(directory)
    return fitted


def run(args: argparse.Namespace) -> JobResult:
    # TensorFlow-heavy modules load when the job runs, so `prerank validate` stays quick.
    from trainer.features import FeatureEncoder
    from trainer.input import InputConfig, make_pipeline
    from trainer.summary import batch_table

    spec = load_spec(args.spec)
    data = args.data or spec.data.train
    if not data:
        raise DataError(f"{args.spec}: no training data: give --data or set data.train in the spec")
    start = time.time()
    fitted = fitted_preprocessing(spec, data, args.model_dir, args.refit)
    print(f"preprocessing: {len(fitted.vocabularies)} fitted vocabularies, {len(fitted.stats)} statistics, "
          f"from {fitted.rows} rows -> {os.path.join(args.model_dir, 'preprocessing')}")
    pipeline = make_pipeline(spec, data, InputConfig(batch_size=args.batch_size, skip_corrupt=args.skip_corrupt))
    encoder = FeatureEncoder(spec, fitted)
    rows = batches = 0
    sums = {label.name: 0.0 for label in spec.labels}
    for batch in pipeline:
        if batches == 0:
            print(f"\nfirst batch of {len(pipeline.files)} training file(s):\n{batch_table(batch)}")
            encoded = encoder(batch["features"])
            widths = {side: sum(int(encoded[f.name].shape[-1]) for f in spec.features_on(*sides))
                      for side, sides in (("user tower", ("user", "context")), ("item tower", ("item",)),
                                          ("teacher", ("user", "context", "item", "cross", "privileged")))}
            print("encoded input widths: " + ", ".join(f"{k} {v}" for k, v in widths.items()))
        rows += int(batch["group"].shape[0])
        batches += 1
        for name, value in batch["labels"].items():
            sums[name] += float(value.numpy().sum())
    result = JobResult(rows, batches, pipeline.skipped_records, {n: s / max(rows, 1) for n, s in sums.items()},
                       time.time() - start)
    print(f"\nread {rows} rows in {batches} batches ({result.seconds:.1f} s); label means: "
          + ", ".join(f"{n} {m:.4g}" for n, m in result.label_means.items()))
    if pipeline.skipped:
        print(f"skipped {pipeline.skipped_records} corrupt record(s):")
        for s in pipeline.skipped:
            print(f"  {s}")
    print("joint student/teacher training: not built yet (issue #3); this job stops after the data pass")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n")[0])
    add_arguments(parser)
    from trainer.cli import run_reporting_errors
    return run_reporting_errors(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
