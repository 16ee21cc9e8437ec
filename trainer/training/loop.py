"""The training loop: distributed steps, two optimizers, checkpoints that resume, logs and evaluations.

One step: the model's `compute_losses` under a GradientTape, gradients split
by `route_variables` (FTRL for embedding tables, AdaGrad for the rest), both
applied, and the rows each table read counted (`trainer.training.usage`: per trained table, reads per row,
logged as `usage/` at evaluations; summed over the workers). The checkpoint holds the model, both optimizers'
slots, the usage counts, the step and
(on a single worker) the input iterator's position, so a job killed at any
moment resumes from its last checkpoint and ends at the same step count, having
read every example once per epoch (with `training.deterministic`, with the very
weights of an uninterrupted run). A finished job resumed with more epochs reads
the extra ones.

Multi-worker (MultiWorkerMirroredStrategy, one replica per worker): every worker
reads its shard of the files, repeated, for a step count they agree on; all of
them restore the chief's latest checkpoint and save at the same steps (the
others into a scratch folder, removed at the end); only the chief evaluates and
writes logs, and it runs no collective op while doing so. The workers' input
positions are not saved: a resumed multi-worker job restarts its data.

A single worker runs `training.steps_per_call` steps per call of its compiled step (`make_train_steps`: a loop
over the batches inside the graph, taking them from the input iterator there), ending a call early where a log,
evaluation or checkpoint is due and at the end of the data: logs, evaluations and checkpoints land on the
configured steps, the checkpointed input position is that of the step, and every step runs the same graph
whatever the steps per call, so the weights do not depend on it (nor on where a resumed job's calls start).

MODEL_DIR/history.jsonl holds each (step, key) once: a resumed job first drops
the lines of the steps after its checkpoint (which it trains again), and a value
logged again at the same step (the final validation after one at that step) is
left out. With `skip_corrupt`, `skipped` lists the corrupt records the job's
reads left out, per file.
"""
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainer.config.knobs import Config, evaluation_cadence
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.read_errors import translate_errors
from trainer.errors import ConfigError, DataError, ModelDirError
from trainer.files import atomic_write
from trainer.layers.embedding import shards
from trainer.spec.types import Spec
from trainer.training.checkpoints import latest_checkpoint, restore, saved_objects
from trainer.training.distribution import cluster_size, is_chief, uses_parameter_servers
from trainer.training.layout import HISTORY_FILE, TENSORBOARD_DIR, WORKERS_DIR, checkpoint_dir
from trainer.training.optimizers import create_slots, make_optimizers, route_variables
from trainer.training.run_record import record_warm_start
from trainer.training.usage import CHECKPOINT_KEY as USAGE, UsageCounts
from trainer.training.warm_start import WarmStart, describe, write_input_layouts


@dataclass
class LoopResult:
    """What `Loop.run` did."""

    step: int
    steps_run: int  # in this process (a resumed job runs fewer)
    examples: int
    seconds: float
    resumed_from: int | None
    last_losses: dict[str, float]


def worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker writes checkpoints: MODEL_DIR for the chief, a scratch folder for the others.

    Every worker must save (saving is a collective step of the strategy), but only the chief's
    checkpoints count: the others write theirs into MODEL_DIR/workers/TYPE_ID, removed when the job ends
    (and on the next start, after a kill).
    """
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, WORKERS_DIR, f"{resolver.task_type}_{resolver.task_id}")


class Loop:
    """The training loop of a model under a tf.distribute strategy (see the module docstring).

    The model it trains (`build_model()`) must provide `compute_losses(batch, step, training=, seed=)`, a dict
    of scalar tensors holding "loss/total" (the loop minimises it and logs every entry), and
    `embedding_tables`, the layers whose variables FTRL updates (`trainer.training.optimizers`).
    """

    def __init__(self, spec: Spec, config: Config, model_dir: str, strategy: tf.distribute.Strategy,
                 build_model: Callable[[], tf.keras.Model], data: str | list[str], steps_per_epoch: int | None,
                 on_evaluate: Callable[[tf.keras.Model, int], dict[str, float]] | None = None,
                 skip_corrupt: bool = False, warm_start: WarmStart | None = None, first_step: int = 0,
                 epochs: int | None = None):
        """
        Args:
          spec: the features the pipeline reads.
          config: `training:` sets the batch, epochs, steps, checkpoints, logs and evaluations.
          model_dir: where checkpoints and logs go (`trainer.training.layout`).
          strategy: the tf.distribute strategy; its scope holds the model and optimizers.
          build_model: makes the model, called once in the strategy's scope.
          data: the training files (globs).
          steps_per_epoch: the expected steps of one epoch (progress, and the step count workers agree on).
          on_evaluate: called as on_evaluate(model, step) every training.eval_every steps on the chief
            (`evaluation_cadence`); returns metrics to log.
          skip_corrupt: skip and count corrupt records instead of failing.
          warm_start: carries a previous model into this one before the first step of a directory without a
            checkpoint (`trainer.training.warm_start`); its record goes into MODEL_DIR/run.json.
          first_step: the step the run starts counting from (a warm start's: the previous model's); max_steps
            and the epochs' steps count from it.
          epochs: passes over the data (default: training.epochs; a warm-started day: training.warm_start_epochs).
        """
        self.spec, self.config, self.model_dir, self.strategy = spec, config, model_dir, strategy
        self.training = config.training
        self.data, self.skip_corrupt = data, skip_corrupt
        self.skipped: dict[str, dict] = {}  # file -> the corrupt records left out of it (`corrupt.Skipped.as_dict`)
        self._logged: tuple[int, set[str]] = (-1, set())  # the last step logged, and the keys logged at it
        self.on_evaluate = on_evaluate
        self.warm_start, self.first_step = warm_start, first_step
        self.epochs = epochs or self.training.epochs
        self.multi_worker = cluster_size(strategy) > 1 or uses_parameter_servers(strategy)
        with strategy.scope():
            self.model = build_model()
            sample = self._build()
            self.ftrl, self.adagrad = make_optimizers(config.model)
            self._create_slots(sample)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            # Single worker: epochs read by earlier input pipelines, and the epochs of the current one. A job
            # resumed with more training.epochs finishes its saved pipeline, then reads the extra epochs.
            self.epochs_read = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_read")
            self.pipeline_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="pipeline_epochs")
            self.usage = UsageCounts(self.model.embedding_tables)  # rows read per table (`trainer.training.usage`)
        self.chief = is_chief(strategy)
        self.total_steps = self._total_steps(steps_per_epoch)
        run_steps = self.total_steps - first_step if self.total_steps is not None else \
            (steps_per_epoch * self.epochs if steps_per_epoch else None)
        self.estimated_steps = first_step + run_steps if run_steps else None
        self.eval_every = evaluation_cadence(self.training.eval_every, run_steps)
        self.state = {"model": self.model, "ftrl": self.ftrl, "adagrad": self.adagrad, "step": self.step,
                      "epochs_read": self.epochs_read, "pipeline_epochs": self.pipeline_epochs, USAGE: self.usage}
        self.dataset = self.iterator = self.checkpoint = self.manager = self.reading = None  # run() starts the data
        self.scratch = None if self.chief else worker_dir(model_dir, strategy)
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)  # left by a killed job; never restored from
        remove_partial_checkpoints(checkpoint_dir(worker_dir(model_dir, strategy)))
        self.writer = tf.summary.create_file_writer(os.path.join(model_dir, TENSORBOARD_DIR)) if self.chief else None
        self._train_step = None  # run() compiles it: make_train_steps (single worker) or make_train_step
        self._call_losses: dict[str, tf.Tensor] = {}

    def _build(self) -> dict:
        """Create every variable eagerly (on a few rows), before routing and checkpoint restore; the rows."""
        sample = self._pipeline(InputConfig(batch_size=8, shuffle_buffer=0, epochs=1, skip_corrupt=self.skip_corrupt))
        for batch in sample:
            self.model.compute_losses(batch, tf.constant(0, tf.int64), training=False,
                                      seed=tf.constant([0, 0], tf.int64))
            return batch
        raise DataError(f"no rows in {self.data}")

    def _create_slots(self, batch: dict) -> None:
        """Create the optimizers' slots now, for the variables a step updates (those with a gradient), as
        the step would: its tf.function then traces once instead of twice (a first trace creating them)."""
        routing = route_variables(self.model)
        updated: list[bool] = []

        def replica_gradients() -> tf.Tensor:  # in a replica context: distributed variables need one
            with tf.GradientTape() as tape:
                losses = self.model.compute_losses(batch, tf.constant(0, tf.int64), training=True,
                                                   seed=tf.constant([0, 0], tf.int64))
            updated.extend(g is not None for g in tape.gradient(losses["loss/total"], routing.embedding + routing.dense))
            self._loss_specs = {k: tf.TensorSpec([], v.dtype) for k, v in losses.items()}  # make_train_steps' carry
            return losses["loss/total"]

        self.strategy.run(replica_gradients)
        n = len(routing.embedding)
        if n:
            create_slots(self.ftrl, [v for u, v in zip(updated[:n], routing.embedding) if u])
        create_slots(self.adagrad, [v for u, v in zip(updated[n:], routing.dense) if u])

    # ---- data ----
    def _start_data(self, epochs: int | None = None) -> None:
        """A new input iterator, and the checkpoint (with its position, on a single worker) that saves it.

        A single worker's pipeline reads `epochs` (default: those not read by earlier pipelines) and ends;
        workers of a multi-worker job repeat their shard of the files until the step count is reached.
        """
        t, read = self.training, int(self.epochs_read.numpy())
        if self.multi_worker:
            epochs = None
        else:
            epochs = epochs or max(self.epochs - read, 1)
            self.pipeline_epochs.assign(epochs)
        self.dataset = self.strategy.distribute_datasets_from_function(
            lambda ctx: self._dataset(ctx, epochs, t.seed + read))
        self.iterator = iter(self.dataset)
        state = dict(self.state)
        if not self.multi_worker:  # a distributed iterator's position is per worker: those restart their data
            state["data"] = self.iterator
        self.checkpoint = tf.train.Checkpoint(**state)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, checkpoint_dir(worker_dir(self.model_dir, self.strategy)),
            max_to_keep=t.keep_checkpoints)

    def _dataset(self, ctx: tf.distribute.InputContext, epochs: int | None, seed: int) -> tf.data.Dataset:
        t = self.training
        config = InputConfig(batch_size=ctx.get_per_replica_batch_size(t.batch_size), shuffle_buffer=t.shuffle_buffer,
                             epochs=epochs, seed=seed,
                             num_workers=ctx.num_input_pipelines, worker_index=ctx.input_pipeline_id,
                             drop_remainder=self.multi_worker, skip_corrupt=self.skip_corrupt,
                             deterministic=t.deterministic)
        return self._pipeline(config).dataset

    def _pipeline(self, config: InputConfig):
        """The input pipeline over the training data; what it skips goes into `skipped`, its files and parse plan
        into `reading` (a bad record met while training is named from them)."""
        pipeline = make_pipeline(self.spec, self.data, config)
        self.skipped.update((s.file, s.as_dict()) for s in pipeline.skipped)
        self.reading = pipeline
        return pipeline

    def _next_batch(self):
        """The next batch (None at the end of a single worker's pipeline); a bad record is a DataError naming the
        file, record and column, as in every other read."""
        with translate_errors(self.spec, self.reading.files, self.reading.plan):
            if self.multi_worker:  # the data repeat: no end to agree on (which would cost a collective)
                return next(self.iterator)
            optional = self.iterator.get_next_as_optional()
            return optional.get_value() if optional.has_value() else None

    def _next_epochs(self) -> bool:
        """At the end of a pipeline (single worker): start one for the epochs still due, if any.

        Without one, `epochs_read` stays as it is: a checkpoint holds it with the ended pipeline's position.
        """
        done = int(self.epochs_read.numpy()) + int(self.pipeline_epochs.numpy())
        if done >= self.epochs:
            return False
        self.epochs_read.assign(done)
        self._start_data()
        return True

    def _total_steps(self, estimated: int | None) -> int | None:
        """max_steps; else the end of the data (single worker) or the estimate (workers must agree on a count)."""
        t = self.training
        if t.max_steps is not None:
            return self.first_step + t.max_steps
        if self.multi_worker:
            if estimated is None:
                raise ConfigError.single("config", "training.max_steps", "multi-worker training needs "
                                         "training.max_steps or a known data size")
            return self.first_step + estimated * self.epochs
        return None

    # ---- one step ----
    def _step_function(self) -> Callable[[dict], dict[str, tf.Tensor]]:
        """One training step on a batch (not compiled): losses under the tape, FTRL and AdaGrad applied, the step
        counted; the losses averaged over the replicas."""
        model, ftrl, adagrad, step = self.model, self.ftrl, self.adagrad, self.step
        replicas = self.strategy.num_replicas_in_sync
        routing = route_variables(model)
        seed = self.training.seed
        usage = self.usage

        def replica_step(batch: dict) -> dict[str, tf.Tensor]:
            with tf.GradientTape() as tape:
                losses = model.compute_losses(batch, step, training=True, seed=tf.stack([tf.cast(seed, tf.int64),
                                                                                         step]))
                scaled = losses["loss/total"] / replicas
            grads = tape.gradient(scaled, routing.embedding + routing.dense)
            n = len(routing.embedding)
            usage.count(grads[:n], routing.embedding)
            if n:
                ftrl.apply_gradients([(g, v) for g, v in zip(grads[:n], routing.embedding) if g is not None])
            adagrad.apply_gradients([(g, v) for g, v in zip(grads[n:], routing.dense) if g is not None])
            return losses

        def one_step(batch: dict) -> dict[str, tf.Tensor]:
            per_replica = self.strategy.run(replica_step, args=(batch,))
            losses = {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                      for k, v in per_replica.items()}
            step.assign_add(1)
            return losses

        return one_step

    def make_train_step(self) -> Callable[[dict], dict[str, tf.Tensor]]:
        """The compiled step on one batch (the multi-worker loop's): train_step(batch) -> the step's losses."""
        # No AutoGraph: the model's code branches on config values only (tensor logic uses tf ops), and
        # converting it all took most of a job's start-up (~10 s of a 1.5 s trace).
        return tf.function(self._step_function(), autograph=False)

    def make_train_steps(self) -> Callable:
        """The compiled loop of steps (a single worker's): train_steps(iterator, n) takes up to `n` batches from the
        input iterator inside the graph and trains a step on each; it returns (the last step's losses, the rows
        trained, whether the data ended). Every step is the same graph, whatever `n`."""
        one_step, specs = self._step_function(), self._loss_specs
        rows_of = self._rows_tensor

        def train_steps(iterator, n: tf.Tensor):
            def body(i, rows, ended, losses):
                optional = iterator.get_next_as_optional()

                def train():
                    batch = optional.get_value()
                    return rows + rows_of(batch), tf.constant(False), one_step(batch)

                def end():
                    return rows, tf.constant(True), losses

                return (i + 1, *tf.cond(optional.has_value(), train, end))

            zeros = {k: tf.zeros(v.shape, v.dtype) for k, v in specs.items()}
            _, rows, ended, losses = tf.while_loop(
                lambda i, rows, ended, losses: tf.logical_and(i < n, tf.logical_not(ended)), body,
                (tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(False), zeros))
            return losses, rows, ended

        return tf.function(train_steps, autograph=False)

    def _rows_tensor(self, batch: dict) -> tf.Tensor:
        """The rows of a (distributed) batch across all replicas, as a tensor (what `_global_rows` counts)."""
        weights = self.strategy.experimental_local_results(batch["sample_weight"])
        local = tf.add_n([tf.shape(w, out_type=tf.int64)[0] for w in weights])
        return local * (self.strategy.num_replicas_in_sync // max(len(weights), 1))

    def _steps_to_next_event(self, step: int) -> int:
        """The steps a call may run from `step`: `training.steps_per_call`, cut at the next step where a log,
        evaluation or checkpoint is due, or the run ends."""
        return min(self.training.steps_per_call, self._steps_until_event(step))

    def _steps_until_event(self, step: int) -> int:
        """The steps from `step` to the next step where a log, evaluation or checkpoint is due, or the run ends."""
        t = self.training
        every = [t.log_every, t.checkpoint_every] + ([self.eval_every] if self.eval_every else [])
        n = min(e - step % e for e in every)
        return min(n, self.total_steps - step) if self.total_steps is not None else n

    # ---- the loop ----
    @property
    def latest_checkpoint(self) -> str | None:
        """The checkpoint every worker resumes from: the chief's latest."""
        return latest_checkpoint(self.model_dir)

    def restore(self, path: str) -> None:
        """Restore the model, optimizers and step from checkpoint `path`, then start the data at its saved
        input position (single worker).

        A checkpoint written by a multi-worker job holds no input position: a single worker resuming it
        restarts its data. One written by a single worker holds one that workers ignore.
        """
        saved = self._restore_state(path)
        if self.multi_worker:
            self._start_data()
        elif "data" in saved:  # the saved pipeline, at its saved position
            self._start_data(int(self.pipeline_epochs.numpy()) if "pipeline_epochs" in saved else None)
            restore(tf.train.Checkpoint(data=self.iterator), path)
        else:
            print(f"note: {path} holds no input position (written by a multi-worker job); the data restart")
            self._start_data()

    def _restore_state(self, path: str) -> set[str]:
        """Restore the model, optimizers, step and usage counts from checkpoint `path` (what it holds of the
        objects older checkpoints lack); the names of the objects it holds."""
        saved = saved_objects(path)
        optional = ("epochs_read", "pipeline_epochs", USAGE)  # absent from older checkpoints
        state = {k: v for k, v in self.state.items() if k in saved or k not in optional}
        restore(tf.train.Checkpoint(**state), path)
        if USAGE not in saved:  # trained before usage counts existed: they count from here on
            self.usage.counted_from.assign(self.step)
            if self.chief:
                print(f"note: {path} holds no usage counts (trained before they existed); they count from step "
                      f"{int(self.step.numpy())}, and an export will not prune by usage")
        return saved

    def _warm_start(self) -> None:
        """Carry the previous model into this one (`trainer.training.warm_start`); the chief prints and records
        what was carried and what started fresh."""
        with self.strategy.scope():
            record = self.warm_start.apply(self.model, self.ftrl, self.adagrad, self.usage, self.step,
                                           self.config.model.ftrl)
        if self.chief:
            print(describe(record))
            record_warm_start(self.model_dir, record)

    def barrier(self) -> None:
        """Multi-worker: return once every worker calls it (e.g. after the chief's evaluation, so that the
        workers leave together: one leaving early looks like a failure to the others)."""
        if self.multi_worker:
            self._gather(0)

    def _gather(self, value: int) -> list[int]:
        """Every worker's `value`, in worker order (a collective: all workers must call it)."""
        @tf.function
        def gather():
            return self.strategy.gather(self.strategy.run(lambda: tf.constant([value], tf.int64)), axis=0)

        return gather().numpy().tolist()

    def _check_workers_agree(self, latest: str | None) -> None:
        """Before restoring (which runs collectives too): fail on every worker if they would resume from
        different checkpoints (e.g. MODEL_DIR is not one shared folder), instead of hanging or diverging."""
        if len(set(self._gather(int(latest.rsplit("-", 1)[1]) if latest else -1))) > 1:
            raise ModelDirError(f"the workers would resume from different checkpoints (this one: "
                                f"{latest or 'none'}); give every worker the same --model-dir, on a filesystem "
                                "they share")

    def run(self) -> LoopResult:
        t = self.training
        resumed_from = None
        if self.chief and hasattr(self.model, "part_inputs"):  # what a later warm start matches kernels by
            write_input_layouts(self.model_dir, self.model)
        latest = self.latest_checkpoint
        if self.multi_worker:
            self._check_workers_agree(latest)
        if latest:
            self.restore(latest)
            resumed_from = int(self.step.numpy())
        else:
            if self.warm_start is not None:
                self._warm_start()
            self._start_data()
        if self.chief:  # the steps after the checkpoint are trained (and logged) again
            self._logged = (resumed_from or 0, repair_history(os.path.join(self.model_dir, HISTORY_FILE),
                                                               resumed_from or 0))
        saved_step = resumed_from  # every worker must save at the same steps: decide on what they all know
        if self._train_step is None:
            self._train_step = self.make_train_step() if self.multi_worker else self.make_train_steps()
        start_step = step = int(self.step.numpy())
        progress = self._progress(start_step)
        started, examples, last = time.time(), 0, {}
        window_start, window_examples = time.time(), 0
        while self.total_steps is None or step < self.total_steps:
            ran, rows, ended = self._train_call(step)
            if ran:
                losses = self._call_losses
            step += ran
            examples += rows
            window_examples += rows
            if ran and progress is not None:
                progress.update(ran)
            if ended:
                if self._next_epochs():
                    continue
                break
            if step % t.log_every == 0:
                last = {k: float(v) for k, v in losses.items()}
                now = time.time()
                if self.chief:
                    self.log(step, {**last, **self._lr(),
                                     "examples_per_sec": window_examples / max(now - window_start, 1e-9)})
                window_start, window_examples = now, 0
                if progress is not None:
                    progress.set_postfix(loss=f"{last['loss/total']:.4f}")
            if self.eval_every and step % self.eval_every == 0:
                self.evaluate(step)
                if self.chief:  # a full scan of every table: at evaluations, not every log line (~4% a step)
                    self.log(step, {**self.zero_row_shares(), **self.usage.summary()})
            if step % t.checkpoint_every == 0:
                self.manager.save(checkpoint_number=step)
                saved_step = step
        step = int(self.step.numpy())
        if self.chief and step > start_step:  # the end of the run (where the final validation is logged too)
            self.log(step, {k: float(v) for k, v in losses.items()})  # a run shorter than log_every has a point
            self.log(step, {**self.zero_row_shares(), **self.usage.summary()})
        if saved_step != step:
            self.manager.save(checkpoint_number=step)
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(self.scratch))  # MODEL_DIR/workers, once every worker's is gone
            except OSError:
                pass
        if progress is not None:
            progress.close()
        if not last and step > start_step:
            last = {k: float(v) for k, v in losses.items()}
        return LoopResult(step, step - start_step, examples, time.time() - started, resumed_from, last)

    def _train_call(self, step: int) -> tuple[int, int, bool]:
        """One call of the compiled step(s) from `step`: (steps run, rows trained, whether the data ended); the last
        step's losses go into `_call_losses`. Multi-worker: one step on the next batch (the data repeat)."""
        if self.multi_worker:
            batch = self._next_batch()
            if batch is None:
                return 0, 0, True
            self._call_losses = self._train_step(batch)
            return 1, self._global_rows(batch), False
        n = tf.constant(self._steps_to_next_event(step), tf.int64)
        with translate_errors(self.spec, self.reading.files, self.reading.plan):
            losses, rows, ended = self._train_step(self.iterator, n)
            ran = int(self.step.numpy()) - step
        if ran:
            self._call_losses = losses
        return ran, int(rows), bool(ended)

    def evaluate(self, step: int) -> dict[str, float]:
        if self.on_evaluate is None or not self.chief:
            return {}
        metrics = self.on_evaluate(self.model, step)
        self.log(step, metrics)
        return metrics

    # ---- helpers ----
    def _global_rows(self, batch: dict) -> int:
        weights = self.strategy.experimental_local_results(batch["sample_weight"])
        return sum(int(w.shape[0]) for w in weights) * (self.strategy.num_replicas_in_sync
                                                        // max(len(weights), 1))

    def _progress(self, start: int):
        if not (self.training.progress and self.chief):
            return None
        from tqdm import tqdm
        return tqdm(total=self.estimated_steps, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)

    def _lr(self) -> dict[str, float]:
        return {f"lr/{name}": float(tf.keras.backend.get_value(opt.learning_rate))
                for name, opt in (("ftrl", self.ftrl), ("adagrad", self.adagrad))}

    def zero_row_shares(self) -> dict[str, float]:
        """Share of all-zero rows per embedding table (what pruning at export will remove)."""
        out = {}
        for layer in self.model.embedding_tables:
            parts = shards(layer.embeddings)  # a sharded table shard by shard: never concatenated
            if len(parts) == 1:
                zero = tf.reduce_all(tf.equal(parts[0], 0.0), axis=1)
                share = float(tf.reduce_mean(tf.cast(zero, tf.float32)))
            else:  # counted where each shard lives (a parameter server): only the count comes back
                share = sum(int(zero_rows_of(p)) for p in parts) / layer.num_rows
            out[f"zero_rows/{layer.name.removeprefix('embedding_')}"] = share
        return out

    def log(self, step: int, values: dict[str, float]) -> None:
        """Append `values` at `step` to history.jsonl and TensorBoard (the chief only), leaving out keys already
        logged at that step."""
        if not self.chief:
            return
        last, keys = self._logged
        if step != last:
            last, keys = step, set()
        values = {k: v for k, v in values.items() if k not in keys}
        self._logged = (last, keys | set(values))
        if not values:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in values.items()}
        with open(os.path.join(self.model_dir, HISTORY_FILE), "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **clean}) + "\n")
        with self.writer.as_default(step=step):
            for k, v in clean.items():
                if v is not None and np.isfinite(v):
                    tf.summary.scalar(k, v)
        self.writer.flush()


def zero_rows_of(variable: tf.Variable) -> tf.Tensor:
    """The number of all-zero rows of `variable`, counted on its device."""
    with tf.device(variable.device):
        return tf.reduce_sum(tf.cast(tf.reduce_all(tf.equal(variable, 0.0), axis=1), tf.int64))


def remove_partial_checkpoints(directory: str) -> None:
    """Delete what a checkpoint save killed midway left (`ckpt-N_temp/`: TensorFlow writes a checkpoint's shards
    there before it renames them into place); `latest_checkpoint` never names one."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.endswith("_temp") and os.path.isdir(os.path.join(directory, name)):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def repair_history(path: str, step: int) -> set[str]:
    """Make history.jsonl the log of a run resuming after `step`: drop a last line left half-written by a killed
    job and the lines of later steps (a job killed after its checkpoint logged them; they are trained again),
    atomically. The keys logged at `step`.

    ModelDirError naming the file and line when a line (other than a half-written last one) is not a JSON object
    with an integer "step".
    """
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    partial = lines.pop() != b""  # the text after the last newline: "" when the last line is whole
    kept, keys = [], set()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
            raise ModelDirError(f"{path}:{number}: expected a JSON object with an integer \"step\", got "
                                f"{line[:80].decode('utf-8', 'replace')!r}; move the file away to resume without "
                                "the log of the steps trained so far")
        if row["step"] <= step:
            kept.append(line)
            if row["step"] == step:
                keys.update(k for k in row if k != "step")
    if partial or len(kept) < len(lines):
        atomic_write(path, b"".join(line + b"\n" for line in kept))
    return keys
