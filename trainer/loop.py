"""The training loop: distributed steps, two optimizers, checkpoints that resume, logs and evaluations.

One step: the model's `compute_losses` under a GradientTape, gradients split
by `route_variables` (FTRL for embedding tables, AdaGrad for the rest), both
applied. The checkpoint holds the model, both optimizers' slots, the step and
(on a single worker) the input iterator's position, so a job killed at any
moment resumes from its last checkpoint and ends at the same step count.
"""
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainer.config import Config
from trainer.input import InputConfig, make_pipeline
from trainer.optimizers import make_optimizers, route_variables
from trainer.spec import Spec

CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.jsonl"


@dataclass
class LoopResult:
    step: int
    steps_run: int  # in this process (a resumed job runs fewer)
    examples: int
    seconds: float
    resumed_from: int | None
    last_losses: dict[str, float]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0
                                                    and "chief" not in resolver.cluster_spec().as_dict())


def worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker writes checkpoints: MODEL_DIR for the chief, a scratch folder for the others."""
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, "workers", f"{resolver.task_type}_{resolver.task_id}")


class Loop:
    def __init__(self, spec: Spec, config: Config, model_dir: str, strategy: tf.distribute.Strategy,
                 build_model: Callable[[], tf.keras.Model], data: str, steps_per_epoch: int | None,
                 on_evaluate: Callable[[tf.keras.Model, int], dict[str, float]] | None = None,
                 skip_corrupt: bool = False):
        self.spec, self.config, self.model_dir, self.strategy = spec, config, model_dir, strategy
        self.training = config.training
        self.on_evaluate = on_evaluate
        self.multi_worker = strategy.extended._in_multi_worker_mode()
        with strategy.scope():
            self.model = build_model()
            self._build(data)
            self.ftrl, self.adagrad = make_optimizers(config.model)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.dataset = strategy.distribute_datasets_from_function(
            lambda ctx: self._dataset(ctx, data, skip_corrupt))
        self.iterator = iter(self.dataset)
        self.total_steps = self._total_steps(steps_per_epoch)
        self.estimated_steps = self.total_steps or (steps_per_epoch * self.training.epochs if steps_per_epoch else None)
        state = {"model": self.model, "ftrl": self.ftrl, "adagrad": self.adagrad, "step": self.step}
        if not self.multi_worker:  # a distributed iterator's position is per worker: those restart their data
            state["data"] = self.iterator
        self.checkpoint = tf.train.Checkpoint(**state)
        self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(worker_dir(model_dir, strategy),
                                                                                CHECKPOINT_DIR),
                                                  max_to_keep=self.training.keep_checkpoints)
        self.chief = is_chief(strategy)
        self.writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard")) if self.chief else None
        self._train_step = None

    def _build(self, data: str) -> None:
        """Create every variable eagerly (on a few rows), before routing and checkpoint restore."""
        sample = make_pipeline(self.spec, data, InputConfig(batch_size=8, shuffle_buffer=0, epochs=1))
        for batch in sample:
            self.model.compute_losses(batch, tf.constant(0, tf.int64), training=False,
                                      seed=tf.constant([0, 0], tf.int64))
            return

    # ---- data ----
    def _dataset(self, ctx: tf.distribute.InputContext, data: str, skip_corrupt: bool) -> tf.data.Dataset:
        t = self.training
        config = InputConfig(batch_size=ctx.get_per_replica_batch_size(t.batch_size), shuffle_buffer=t.shuffle_buffer,
                             epochs=None if self.multi_worker else t.epochs, seed=t.seed,
                             num_workers=ctx.num_input_pipelines, worker_index=ctx.input_pipeline_id,
                             drop_remainder=self.multi_worker, skip_corrupt=skip_corrupt)
        return make_pipeline(self.spec, data, config).dataset

    def _total_steps(self, estimated: int | None) -> int | None:
        """max_steps; else the end of the data (single worker) or the estimate (workers must agree on a count)."""
        t = self.training
        if t.max_steps is not None:
            return t.max_steps
        if self.multi_worker:
            if estimated is None:
                raise ValueError("multi-worker training needs training.max_steps or a known data size")
            return estimated * t.epochs
        return None

    # ---- one step ----
    def _make_train_step(self):
        model, ftrl, adagrad, step = self.model, self.ftrl, self.adagrad, self.step
        replicas = self.strategy.num_replicas_in_sync
        routing = route_variables(model)
        seed = self.training.seed

        def replica_step(batch: dict) -> dict[str, tf.Tensor]:
            with tf.GradientTape() as tape:
                losses = model.compute_losses(batch, step, training=True, seed=tf.stack([tf.cast(seed, tf.int64),
                                                                                         step]))
                scaled = losses["loss/total"] / replicas
            grads = tape.gradient(scaled, routing.embedding + routing.dense)
            n = len(routing.embedding)
            if n:
                ftrl.apply_gradients([(g, v) for g, v in zip(grads[:n], routing.embedding) if g is not None])
            adagrad.apply_gradients([(g, v) for g, v in zip(grads[n:], routing.dense) if g is not None])
            return losses

        @tf.function
        def train_step(batch: dict) -> dict[str, tf.Tensor]:
            per_replica = self.strategy.run(replica_step, args=(batch,))
            losses = {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                      for k, v in per_replica.items()}
            step.assign_add(1)
            return losses

        return train_step

    # ---- the loop ----
    def run(self) -> LoopResult:
        t = self.training
        resumed_from = None
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            resumed_from = int(self.step.numpy())
        elif self.multi_worker and not self.chief:
            chief_latest = tf.train.latest_checkpoint(os.path.join(self.model_dir, CHECKPOINT_DIR))
            if chief_latest:
                self.checkpoint.restore(chief_latest).expect_partial()
                resumed_from = int(self.step.numpy())
        if self._train_step is None:
            self._train_step = self._make_train_step()
        start_step = int(self.step.numpy())
        progress = self._progress(start_step)
        started, examples, last = time.time(), 0, {}
        window_start, window_examples = time.time(), 0
        while self.total_steps is None or int(self.step.numpy()) < self.total_steps:
            optional = self.iterator.get_next_as_optional()
            if not optional.has_value():
                break
            batch = optional.get_value()
            losses = self._train_step(batch)
            step = int(self.step.numpy())
            rows = self._global_rows(batch)
            examples += rows
            window_examples += rows
            if progress is not None:
                progress.update(1)
            if step % t.log_every == 0:
                last = {k: float(v) for k, v in losses.items()}
                now = time.time()
                self._log(step, {**last, **self._lr(), **self._sparsity(),
                                 "examples_per_sec": window_examples / max(now - window_start, 1e-9)})
                window_start, window_examples = now, 0
                if progress is not None:
                    progress.set_postfix(loss=f"{last['loss/total']:.4f}")
            if t.eval_every and step % t.eval_every == 0:
                self.evaluate(step)
            if step % t.checkpoint_every == 0:
                self.manager.save(checkpoint_number=step)
        step = int(self.step.numpy())
        if self.manager.latest_checkpoint is None or not self.manager.latest_checkpoint.endswith(f"-{step}"):
            self.manager.save(checkpoint_number=step)
        if progress is not None:
            progress.close()
        if not last and step > start_step:
            last = {k: float(v) for k, v in losses.items()}
        return LoopResult(step, step - start_step, examples, time.time() - started, resumed_from, last)

    def evaluate(self, step: int) -> dict[str, float]:
        if self.on_evaluate is None or not self.chief:
            return {}
        metrics = self.on_evaluate(self.model, step)
        self._log(step, metrics)
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
        return {"lr/ftrl": float(self.ftrl.learning_rate.numpy() if hasattr(self.ftrl.learning_rate, "numpy")
                                 else self.ftrl.learning_rate),
                "lr/adagrad": float(self.adagrad.learning_rate.numpy() if hasattr(self.adagrad.learning_rate, "numpy")
                                    else self.adagrad.learning_rate)}

    def _sparsity(self) -> dict[str, float]:
        """Share of all-zero rows per embedding table (what pruning at export will remove)."""
        out = {}
        for layer in self.model.embedding_tables:
            table = layer.embeddings
            zero = tf.reduce_all(tf.equal(table, 0.0), axis=1)
            out[f"zero_rows/{layer.name.removeprefix('embedding_')}"] = float(tf.reduce_mean(tf.cast(zero, tf.float32)))
        return out

    def _log(self, step: int, values: dict[str, float]) -> None:
        if not self.chief:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in values.items()}
        with open(os.path.join(self.model_dir, HISTORY_FILE), "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **clean}) + "\n")
        with self.writer.as_default(step=step):
            for k, v in clean.items():
                if v is not None and np.isfinite(v):
                    tf.summary.scalar(k, v)
        self.writer.flush()
