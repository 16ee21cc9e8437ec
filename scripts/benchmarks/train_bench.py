"""Training speed of the loop, for `scripts/bench_training.py`.

- Step time on batches already in memory (after warm-up steps that trace the step), for variants of the
  model built by `trainer.training.loop.Loop` and stepped by its own train step, interleaved step by step:
  million-row vs small tables (`with_table_rows`), the legacy vs the new Keras FTRL on the tables,
  joint vs teacher-only, and joint with other student towers (what the towers cost); and what the zero-row
  scan at each of `Loop.run`'s logs costs.
- End-to-end examples/second over the same files and pipeline: the loop's train step, a plain
  `model.fit` of the same `JointModel` with one Adam (`FitModel`), the input pipeline alone, and the train
  step on in-memory batches (what sharing the CPUs with the pipeline costs).
"""
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import tensorflow as tf

from trainer.config.knobs import Config, FtrlConfig
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.models.joint import JointModel
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec.types import Spec, Vocabulary
from trainer.training.loop import Loop

Step = Callable[[dict], dict]


@dataclass(frozen=True)
class Timing:
    """Every timed step (or run) of one variant, in seconds."""

    name: str
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


def with_table_rows(spec: Spec, rows: int) -> Spec:
    """The same spec with every hashed vocabulary cut to at most `rows` buckets and every fitted
    vocabulary to at most `rows` rows (counting its OOV buckets); file vocabularies are kept."""

    def cap(v: Vocabulary | None) -> Vocabulary | None:
        if v is None:
            return None
        if v.source == "hash" and v.buckets > rows:
            return replace(v, buckets=rows)
        if v.source == "data" and (v.max_size is None or v.max_size + v.oov_buckets > rows):
            return replace(v, max_size=max(rows - v.oov_buckets, 1))
        return v

    return replace(spec, name=f"{spec.name}_{rows}_rows",
                   features=tuple(replace(f, vocabulary=cap(f.vocabulary)) for f in spec.features))


def new_keras_ftrl(config: FtrlConfig) -> tf.keras.optimizers.Optimizer:
    """The new (non-legacy) tf_keras FTRL with the config's settings: it updates whole tables every step."""
    return tf.keras.optimizers.Ftrl(learning_rate=config.learning_rate, l1_regularization_strength=config.l1,
                                    l2_regularization_strength=config.l2,
                                    initial_accumulator_value=config.initial_accumulator)


def loop_step(spec: Spec, preprocessing: Preprocessing, config: Config, data: str, model_dir: str,
              dense_ftrl: bool = False) -> tuple[Loop, Step]:
    """A `Loop` (default strategy, writing into the scratch `model_dir`) and its train step; with
    `dense_ftrl`, the new Keras FTRL replaces the legacy one on the embedding tables."""
    loop = Loop(spec, config, model_dir, tf.distribute.get_strategy(),
                lambda: JointModel(spec, preprocessing, config, name="joint"), data, None)
    if dense_ftrl:
        loop.ftrl = new_keras_ftrl(config.model.ftrl)
    return loop, loop.make_train_step()


def table_rows(model: JointModel) -> dict[str, int]:
    """Rows of each embedding table of the model."""
    return {t.name.removeprefix("embedding_"): t.num_rows for t in model.embedding_tables}


def run_step(step: Step, batch: dict) -> float:
    """Seconds of one step (it returns once its kernels ran; reading a loss makes sure)."""
    start = time.perf_counter()
    float(step(batch)["loss/total"])
    return time.perf_counter() - start


def step_times(steps: dict[str, Step], batches: list[dict], rounds: int, warmup: int,
               limit: dict[str, int] | None = None,
               report: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """Time every step on the in-memory `batches`: `warmup` untimed steps each (tracing), then `rounds`
    passes over the batches in which every variant (up to `limit[name]` batches) steps on each batch in
    turn, so that load from other processes falls on all variants alike."""
    limit = limit or {}
    for step in steps.values():
        for batch in batches[:warmup]:
            run_step(step, batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for i, batch in enumerate(batches):
            for name, step in steps.items():
                if i < limit.get(name, len(batches)):
                    times[name].append(run_step(step, batch))
        if report:
            report(f"  round {r + 1}: " + ", ".join(f"{n} {statistics.median(t) * 1e3:.1f}" for n, t in times.items())
                   + " ms/step so far")
    return {name: Timing(name, tuple(t)) for name, t in times.items()}


def log_scan_seconds(loop: Loop, repeats: int = 3) -> float:
    """Median seconds of the zero-row scan over every table that `Loop.run` does at each log."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loop.zero_row_shares()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- end to end -------------------------------------------------------------------------------------

class FitModel(JointModel):
    """The same model for a plain `model.fit`: one compiled optimizer minimises `loss/total`."""

    def train_step(self, data: dict) -> dict[str, tf.Tensor]:
        step = self.optimizer.iterations  # the steps applied so far
        with tf.GradientTape() as tape:
            loss = self.compute_losses(data, step, training=True,
                                       seed=tf.stack([tf.constant(0, tf.int64), step]))["loss/total"]
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {"loss": loss}


class _Clock(tf.keras.callbacks.Callback):
    """Seconds from the end of batch `skip - 1` to the end of batch `skip + n - 1`."""

    def __init__(self, skip: int, n: int):
        super().__init__()
        self.skip, self.n, self.start, self.seconds = skip, n, None, None

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if batch == 0 and self.skip == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if batch == self.skip - 1:
            self.start = time.perf_counter()
        elif batch == self.skip + self.n - 1:
            self.seconds = time.perf_counter() - self.start


def fit_seconds(model: FitModel, dataset: tf.data.Dataset, skip: int, n: int) -> float:
    """Seconds `model.fit` takes for `n` batches of `dataset` after `skip` (tracing, shuffle buffer)."""
    clock = _Clock(skip, n)
    model.fit(dataset, epochs=1, steps_per_epoch=skip + n, verbose=0, callbacks=[clock])
    return clock.seconds


def iterate_seconds(dataset: tf.data.Dataset, skip: int, n: int, step: Step | None = None) -> float:
    """Seconds to read `n` batches of `dataset` after `skip`, training `step` on each (if given)."""
    iterator: Iterator = iter(dataset)
    for _ in range(skip):
        batch = next(iterator)
        if step is not None:
            run_step(step, batch)
    start, losses = time.perf_counter(), None
    for _ in range(n):
        batch = next(iterator)
        if step is not None:
            losses = step(batch)
    if losses is not None:
        float(losses["loss/total"])
    return time.perf_counter() - start


def end_to_end(runs: dict[str, Callable[[], float]], repeats: int,
               report: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """Run every variant `repeats` times, round-robin; seconds of each run."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
            if report:
                report(f"  repeat {r + 1}: {name}: {times[name][-1]:.2f} s")
    return {name: Timing(name, tuple(t)) for name, t in times.items()}


def pipeline(spec: Spec, data: str, config: Config) -> tf.data.Dataset:
    """The training pipeline as the loop builds it on one worker, for one epoch."""
    t = config.training
    return make_pipeline(spec, data, InputConfig(batch_size=t.batch_size, shuffle_buffer=t.shuffle_buffer,
                                                 epochs=1, seed=t.seed, deterministic=t.deterministic)).dataset


def cached_seconds(step: Step, batches: list[dict], n: int) -> float:
    """Seconds of `n` steps over in-memory `batches` (cycled): the step rate without a pipeline."""
    start, losses = time.perf_counter(), None
    for i in range(n):
        losses = step(batches[i % len(batches)])
    float(losses["loss/total"])
    return time.perf_counter() - start
