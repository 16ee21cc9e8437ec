"""The training loop of a parameter-server job: the chief's ClusterCoordinator schedules the steps on the workers.

A second path beside `Loop`'s (which it extends): the same model, step, optimizers, checkpoints, logs and
evaluations, with the steps scheduled by a `tf.distribute.coordinator.ClusterCoordinator` on the workers of a
ParameterServerStrategy cluster, which hold no variables: the parameter servers do, embedding tables split by rows
across them (`distribution.table_partitioner`), with their FTRL slots (one a shard, created before the first
step: a scheduled step that had to create them would hang).

What it keeps: checkpoints every `training.checkpoint_every` steps, written by the chief (each table saved as one
variable with its slots, whatever its shards: a single machine evaluates, prunes and exports it), and a job
killed and rerun resumes from its last checkpoint. A worker that dies is survived: the coordinator runs its steps
on the others, and a restarted worker rejoins. What it drops: the input position (every worker reads all the
training files, repeated, in its own shuffled order; a resumed job restarts its data), bit-exact resume and
`training.deterministic` (workers run their steps in whatever order they come, and a step a failed worker was
running may run again), and the end of the data: the job runs for a step count (`training.max_steps`, else the
epochs' estimated steps). TFRecord and CSV only: the Parquet reader runs in a py_function, in the coordinator's
process, which the workers cannot call.
"""
import contextlib
import dataclasses

import tensorflow as tf

from trainer.config.cluster import cluster_from_env
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.read_errors import translate_errors
from trainer.errors import ClusterError, ConfigError
from trainer.layers.embedding import shards
from trainer.training.cluster_server import answers, mark_done
from trainer.training.layout import checkpoint_dir
from trainer.training.loop import Loop
from trainer.training.optimizers import create_slots, route_variables


class CoordinatedLoop(Loop):
    """`Loop` on a ParameterServerStrategy cluster, run by its chief (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        spec = args[0]
        if spec.data.format == "parquet":
            raise ConfigError.single(spec.path, "data.format", "a parameter-server job reads TFRecord or CSV files: "
                                     "the Parquet reader runs in the coordinator's process, not on the workers; "
                                     "convert the data with `prerank convert --format tfrecord`")
        super().__init__(*args, **kwargs)
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy)

    def table_shards(self) -> dict[str, int]:
        """The shards of each embedding table (1: one variable on one parameter server)."""
        return {layer.name.removeprefix("embedding_"): len(shards(layer.embeddings))
                for layer in self.model.embedding_tables}

    def _create_slots(self, batch: dict) -> None:
        """Create the optimizers' slots now, on the parameter servers beside their variables (a scheduled step
        cannot create them), for the variables a step updates: a gradient taken here, on the chief."""
        routing = route_variables(self.model)
        with tf.GradientTape() as tape:
            losses = self.model.compute_losses(batch, tf.constant(0, tf.int64), training=True,
                                               seed=tf.constant([0, 0], tf.int64))
        grads = tape.gradient(losses["loss/total"], routing.embedding + routing.dense)
        self._loss_specs = {k: tf.TensorSpec([], v.dtype) for k, v in losses.items()}
        n = len(routing.embedding)
        if n:
            create_slots(self.ftrl, [v for g, v in zip(grads[:n], routing.embedding) if g is not None])
        create_slots(self.adagrad, [v for g, v in zip(grads[n:], routing.dense) if g is not None])

    # ---- data ----
    def _start_data(self, epochs: int | None = None) -> None:
        """A dataset on every worker (all the files, repeated, in the worker's own shuffled order), and the
        checkpoint (without an input position)."""
        t = self.training
        config = InputConfig(batch_size=t.batch_size, shuffle_buffer=t.shuffle_buffer, epochs=None,
                             drop_remainder=True, skip_corrupt=self.skip_corrupt)
        probed = self._pipeline(config)  # here, on the chief: the files are probed (and named in errors) once

        def dataset_fn() -> tf.data.Dataset:
            # Traced once, run on each worker. Its shuffles get no seed (the graph's, from training.seed, is
            # cleared): each worker draws its own at run time, so workers read different orders, and a
            # restarted worker a new one.
            tf.compat.v1.get_default_graph().seed = None
            return make_pipeline(self.spec, self.data, dataclasses.replace(config, seed=None), probed=probed).dataset

        self.dataset = self.coordinator.create_per_worker_dataset(dataset_fn)
        self.iterator = iter(self.dataset)
        self.checkpoint = tf.train.Checkpoint(**self.state)
        self.manager = tf.train.CheckpointManager(self.checkpoint, checkpoint_dir(self.model_dir),
                                                  max_to_keep=t.keep_checkpoints)

    # ---- steps ----
    def make_train_step(self):
        """What the coordinator schedules on a worker: scheduled(iterator, n) trains `n` steps, each on the next
        batch of the worker's iterator, in a loop inside the graph (one call for `training.steps_per_call` steps:
        fewer round trips to the chief); the last step's losses."""
        one_step, specs = self._step_function(), self._loss_specs

        def scheduled(iterator, n: tf.Tensor):
            zeros = {k: tf.zeros(v.shape, v.dtype) for k, v in specs.items()}
            _, losses = tf.while_loop(lambda i, losses: i < n, lambda i, losses: (i + 1, one_step(next(iterator))),
                                      (tf.constant(0, tf.int64), zeros))
            return losses

        return tf.function(scheduled, autograph=False)

    def _train_call(self, step: int) -> tuple[int, int, bool]:
        """Schedule the steps up to the next log, evaluation or checkpoint on the workers (calls of
        `training.steps_per_call` steps) and wait for them: (steps run, rows trained, False); the last call's
        losses go into `_call_losses`."""
        n, per_call = self._steps_until_event(step), self.training.steps_per_call
        last = None
        with translate_errors(self.spec, self.reading.files, self.reading.plan):
            for start in range(0, n, per_call):
                steps = tf.constant(min(per_call, n - start), tf.int64)
                last = self.coordinator.schedule(self._train_step, args=(self.iterator, steps))
            self.coordinator.join()
            losses = last.fetch() if last is not None else {}
            ran = int(self.step.numpy()) - step
        if ran:
            self._call_losses = {k: tf.constant(v) for k, v in losses.items()}
        return ran, ran * self.training.batch_size, False

    @contextlib.contextmanager
    def _parameter_servers_answering(self):
        """A parameter server that stopped answering (the variables it held are gone: a step, a checkpoint or a
        log fails on it) fails the job with a ClusterError naming it and saying how to resume; a worker's failure
        never gets here (the coordinator survives it)."""
        try:
            yield
        except Exception as exc:  # the coordinator's own error classes are not in TensorFlow's public API
            original = getattr(exc, "original_exception", exc)
            if not isinstance(original, (tf.errors.UnavailableError, tf.errors.AbortedError)):
                raise
            cluster, _ = cluster_from_env()
            gone = [f"ps {i} ({address})" for i, address in enumerate(cluster.get("ps", [])) if not answers(address)]
            if not gone:
                raise
            latest = self.latest_checkpoint
            resume = f"resumes from {latest}" if latest else "starts again (no checkpoint yet)"
            raise ClusterError(f"{', '.join(gone)} stopped answering: the variables it held are lost; restart it, "
                               f"then rerun the same command on the chief, which {resume}") from None

    def run(self):
        with self._parameter_servers_answering():
            return super().run()

    # ---- the loop ----
    def restore(self, path: str) -> None:
        """Restore the model, optimizers, step and usage counts from checkpoint `path` (onto the parameter
        servers); the data restart."""
        self._restore_state(path)
        self._start_data()

    def _check_workers_agree(self, latest: str | None) -> None:
        """Only the chief reads checkpoints: nothing to agree on."""

    def barrier(self) -> None:
        """The end of the job (after the chief's last evaluation, which reads the parameter servers): the worker
        and parameter-server tasks stop serving (`cluster_server.mark_done`)."""
        mark_done(self.model_dir)
