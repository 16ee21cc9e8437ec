"""Optimizer routing: FTRL on every embedding table, AdaGrad on every other trainable variable.

Both are the legacy tf.keras optimizers, whose kernels update only the rows a
batch touched when the gradient is sparse (`tf.IndexedSlices` from
`tf.gather`); the default (new) tf_keras FTRL rewrites the whole table every
step. Which variable goes where is derived from the model: a variable owned by
an `EmbeddingTable` layer is an embedding, everything else is dense. A sharded
table (ParameterServerStrategy) is routed as its shards: gradients are taken
with respect to each shard and each shard has its own slots (the optimizers
then also know the table itself, so its slots are saved with it as one
variable of the table's shape).
"""
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainer.config.knobs import FtrlConfig, ModelConfig
from trainer.layers.embedding import shards

Optimizer = tf.keras.optimizers.legacy.Optimizer


@dataclass
class Routing:
    """The model's trainable variables by optimizer (a sharded variable as its shards)."""

    embedding: list[tf.Variable]  # FTRL
    dense: list[tf.Variable]  # AdaGrad


def route_variables(model: tf.keras.Model) -> Routing:
    """Split the model's trainable variables into embedding tables (`model.embedding_tables`) and the rest."""
    tables = {id(v) for layer in model.embedding_tables for v in layer.trainable_variables}
    embedding = [s for v in model.trainable_variables if id(v) in tables for s in shards(v)]
    dense = [s for v in model.trainable_variables if id(v) not in tables for s in shards(v)]
    return Routing(embedding, dense)


def make_ftrl(config: FtrlConfig) -> Optimizer:
    """The legacy FTRL of the embedding tables."""
    return tf.keras.optimizers.legacy.Ftrl(learning_rate=config.learning_rate, l1_regularization_strength=config.l1,
                                           l2_regularization_strength=config.l2,
                                           initial_accumulator_value=config.initial_accumulator, name="ftrl")


def make_optimizers(config: ModelConfig) -> tuple[Optimizer, Optimizer]:
    """(FTRL for embeddings, AdaGrad for dense variables) from the config."""
    a = config.adagrad
    adagrad = tf.keras.optimizers.legacy.Adagrad(learning_rate=a.learning_rate,
                                                 initial_accumulator_value=a.initial_accumulator, name="adagrad")
    return make_ftrl(config.ftrl), adagrad


def create_slots(optimizer: Optimizer, variables: list[tf.Variable]) -> None:
    """Create the optimizer's slots (and hyperparameters) for `variables` now, without updating them.

    The legacy optimizers have no public method for this: `build()` exists only on the new ones, and
    `apply_gradients` would update the variables (FTRL even with a zero gradient). Creating them eagerly lets a
    training step trace once, lets a checkpoint's slots be restored into objects (pruning reads them), and is
    what ParameterServerStrategy needs before its first scheduled step.
    """
    optimizer._create_all_weights(variables)  # private, see above


def ftrl_linear_holding(weights: np.ndarray, accumulator: np.ndarray, config: FtrlConfig) -> np.ndarray:
    """The FTRL linear slot under which rows of `weights` with accumulator `accumulator` keep their values.

    FTRL does not update a weight, it recomputes it from its two slots at every update: w = (sign(z) * l1 - z) /
    (sqrt(n) / lr + 2 * l2) where |z| > l1, else 0 (z the linear slot, n the accumulator; the legacy kernel with
    learning_rate_power -0.5 and no beta). A row given new values must get the linear slot that yields them, or
    its first update erases them: z = -(w * (sqrt(n) / lr + 2 * l2) + sign(w) * l1) (0 where w is 0).
    """
    quadratic = np.sqrt(accumulator.astype(np.float64)) / config.learning_rate + 2 * config.l2
    w = weights.astype(np.float64)
    return (-(w * quadratic + np.sign(w) * config.l1)).astype(np.float32)
