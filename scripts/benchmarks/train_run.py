"""One measured training run in a fresh process, for `scripts/bench_training.py --kuairand` (see `kuairand_bench`).

Run as `python train_run.py JSON` with the prerank to measure first on PYTHONPATH (this checkout, or a baseline
commit's `git archive`); prints one JSON line: the run's steady examples/s, its seconds, steps and examples, the
process's peak RSS, and the prerank it imported. Two kinds of run:

- prerank: `trainer.train` (the training job: checkpoints, logs, zero-row scans as configured), one epoch of the
  given files, no validation, with a preprocessing fitted beforehand (`--preprocessing`: no fit in the job). The
  rate leaves out the first log window (tracing, the shuffle buffer filling): (examples - those of the window) /
  (seconds - the window's), the window's seconds from its `examples_per_sec` in history.jsonl.
- keras: the plain tf.keras MMoE baseline (`keras_mmoe`) trained with `model.fit` on the same rows as numpy arrays
  (built before the clock starts), one epoch; the rate leaves out the same number of first steps.
"""
import json
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_mb() -> float:
    """The process's peak resident memory (Linux: ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prerank_run(job: dict) -> dict:
    import trainer
    from trainer.config import load_config
    from trainer.spec import load_spec

    spec = load_spec(job["spec"])
    config = load_config(spec, None, ["training.epochs=1", "training.progress=false", *job["overrides"]])
    with tempfile.TemporaryDirectory(prefix="bench-train-run-") as model_dir:
        result = trainer.train(spec, config, model_dir, data=job["data"], validation=False,
                               preprocessing=job["preprocessing"], log=lambda *_: None)
        with open(os.path.join(model_dir, "history.jsonl"), encoding="utf-8") as fh:
            first = next(json.loads(line) for line in fh if "examples_per_sec" in line)
    window = first["step"] * config.training.batch_size
    seconds = result.seconds - window / first["examples_per_sec"]
    return {"rate": (result.examples - window) / seconds, "seconds": result.seconds, "steps": result.steps_run,
            "examples": result.examples, "skipped_steps": first["step"], "code": os.path.dirname(trainer.__file__)}


def keras_run(job: dict) -> dict:
    import trainer
    import tensorflow as tf

    sys.path.insert(0, os.path.dirname(HERE))
    from benchmarks import keras_mmoe
    from trainer.preprocessing.fitted import Preprocessing
    from trainer.spec import load_spec

    spec = load_spec(job["spec"])
    fitted = Preprocessing.load(job["preprocessing"])
    inputs, labels = keras_mmoe.indexed_arrays(spec, fitted, job["data"])
    tf.keras.utils.set_random_seed(0)
    model = keras_mmoe.keras_mmoe(spec, inputs, keras_mmoe.table_rows(spec, fitted))
    clock = keras_mmoe.Clock(job["skip"])
    batch = job["batch_size"]
    model.fit(inputs, labels, batch_size=batch, epochs=1, shuffle=True, verbose=0, callbacks=[clock])
    rows = len(next(iter(labels.values())))
    examples = rows - job["skip"] * batch
    return {"rate": examples / clock.seconds, "seconds": clock.seconds, "steps": clock.steps, "examples": examples,
            "skipped_steps": job["skip"], "code": os.path.dirname(trainer.__file__)}


def main() -> None:
    job = json.loads(sys.argv[1])
    started = time.perf_counter()
    out = (keras_run if job["kind"] == "keras" else prerank_run)(job)
    out.update(peak_rss_mb=peak_rss_mb(), wall=time.perf_counter() - started)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
