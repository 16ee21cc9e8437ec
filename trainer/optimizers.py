"""Optimizer routing: FTRL on every embedding table, AdaGrad on every other trainable variable.

Both are the legacy tf.keras optimizers, whose kernels update only the rows a
batch touched when the gradient is sparse (`tf.IndexedSlices` from
`tf.gather`); the default (new) tf_keras FTRL rewrites the whole table every
step. Which variable goes where is derived from the model: a variable owned by
an `EmbeddingTable` layer is an embedding, everything else is dense.
"""
from dataclasses import dataclass

import tensorflow as tf

from trainer.config import ModelConfig


@dataclass
class Routing:
    embedding: list[tf.Variable]
    dense: list[tf.Variable]


def route_variables(model: tf.keras.Model) -> Routing:
    """Split the model's trainable variables into embedding tables and the rest."""
    tables = {id(v) for layer in model.embedding_tables for v in layer.trainable_variables}
    embedding = [v for v in model.trainable_variables if id(v) in tables]
    dense = [v for v in model.trainable_variables if id(v) not in tables]
    return Routing(embedding, dense)


def make_optimizers(config: ModelConfig) -> tuple[tf.keras.optimizers.legacy.Optimizer,
                                                  tf.keras.optimizers.legacy.Optimizer]:
    """(FTRL for embeddings, AdaGrad for dense variables) from the config."""
    f, a = config.ftrl, config.adagrad
    ftrl = tf.keras.optimizers.legacy.Ftrl(learning_rate=f.learning_rate, l1_regularization_strength=f.l1,
                                           l2_regularization_strength=f.l2,
                                           initial_accumulator_value=f.initial_accumulator, name="ftrl")
    adagrad = tf.keras.optimizers.legacy.Adagrad(learning_rate=a.learning_rate,
                                                 initial_accumulator_value=a.initial_accumulator, name="adagrad")
    return ftrl, adagrad
