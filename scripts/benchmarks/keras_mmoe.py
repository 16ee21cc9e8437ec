"""The baseline of the training benchmark: a plain tf.keras MMoE trained with `model.fit` and Adam.

What a team would write without prerank: the spec's features as pre-indexed integer ids and pre-transformed
numbers held in memory as numpy arrays, one `tf.keras.layers.Embedding` per table (features naming one
table share it; a sequence is padded, masked and mean-pooled), all fields concatenated, `experts` experts of
`expert_layers`, one softmax gate and one `task_tower` tower per label, Adam on every variable (whole-table
updates: cheap on KuaiRand's small tables), `model.fit` over the arrays. No target attention, no student.

The arrays come from prerank's own fitted preprocessing (the encoder's row ids and transformed numbers), so
both train on the very same inputs; building them is not timed. Binary labels train with cross-entropy,
regression labels with MSE on the (log1p-)transformed target, each with its spec weight.
"""
import time

import numpy as np
import tensorflow as tf

from trainer.data.pipeline import make_pipeline
from trainer.data.input_config import InputConfig
from trainer.layers.encoder import FeatureEncoder
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec.types import SIDES, Spec

PAD = 0  # sequence padding id: the baseline's tables hold one extra row in front for it (masked)


def indexed_arrays(spec: Spec, preprocessing: Preprocessing, data: str | list[str],
                   batch_size: int = 4096) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every row of `data` as model inputs and labels, in file order: {feature: ids int32 [N] (row + 1),
    padded ids [N, max_length] (0: padding), or numbers float32 [N, width]}, {label: float32 [N]}."""
    encoder = FeatureEncoder(spec, preprocessing)
    pipeline = make_pipeline(spec, data, InputConfig(batch_size=batch_size, shuffle_buffer=0, epochs=1))
    inputs: dict[str, list[np.ndarray]] = {f.name: [] for f in model_features(spec)}
    labels: dict[str, list[np.ndarray]] = {label.name: [] for label in spec.labels}
    for batch in pipeline:
        features = batch["features"]
        for f in model_features(spec):
            if f.embedding is None:
                inputs[f.name].append(encoder.encode(f, features).numpy().astype(np.float32))
            elif f.kind == "sequence":
                rows = encoder.row_ids(f, features) + 1
                inputs[f.name].append(rows.to_tensor(PAD, shape=[None, f.max_length]).numpy().astype(np.int32))
            else:
                inputs[f.name].append(encoder.row_ids(f, features).numpy().astype(np.int32) + 1)
        for name in labels:
            labels[name].append(batch["labels"][name].numpy())
    return ({k: np.concatenate(v) for k, v in inputs.items()},
            {k: _target(spec, k, np.concatenate(v)) for k, v in labels.items()})


def table_rows(spec: Spec, preprocessing: Preprocessing) -> dict[str, int]:
    """Rows of each of prerank's tables for this spec and fit (OOV rows included)."""
    encoder = FeatureEncoder(spec, preprocessing)
    return {name: table.num_rows for name, table in encoder.tables.items()}


class Clock(tf.keras.callbacks.Callback):
    """Seconds of `model.fit` from the end of batch `skip - 1` (tracing and the first steps left out) to the end of
    the last batch; `steps`: the batches timed."""

    def __init__(self, skip: int):
        super().__init__()
        self.skip, self.start, self.seconds, self.steps = skip, None, None, 0

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if batch == self.skip - 1:
            self.start = time.perf_counter()
        elif batch >= self.skip:
            self.steps = batch - self.skip + 1
            self.seconds = time.perf_counter() - self.start


def model_features(spec: Spec) -> list:
    """The features the MMoE reads: every feature of the spec (the teacher's fields)."""
    return list(spec.features_on(*SIDES))


def _target(spec: Spec, label: str, values: np.ndarray) -> np.ndarray:
    declared = next(x for x in spec.labels if x.name == label)
    if declared.type == "regression" and declared.transform == "log1p":
        return np.log1p(np.maximum(values, 0.0)).astype(np.float32)
    return values.astype(np.float32)


class MaskedMean(tf.keras.layers.Layer):
    """Mean of the embedded ids of a padded sequence [B, L, d] over its unpadded positions (0 for none)."""

    def call(self, vectors: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(ids != PAD, vectors.dtype)[:, :, None]
        return tf.reduce_sum(vectors * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def keras_mmoe(spec: Spec, inputs: dict[str, np.ndarray], table_rows: dict[str, int], experts: int = 4,
               expert_layers: tuple[int, ...] = (256, 128), task_tower: tuple[int, ...] = (64,)) -> tf.keras.Model:
    """The functional MMoE over `inputs` (as `indexed_arrays` makes them); `table_rows`: rows of each table
    (prerank's, the padding row added here)."""
    tables = {name: tf.keras.layers.Embedding(rows + 1, spec.tables[name].dim, name=f"table_{name}")
              for name, rows in table_rows.items()}
    keras_inputs, fields = {}, []
    for f in model_features(spec):
        shape = inputs[f.name].shape[1:]
        x = keras_inputs[f.name] = tf.keras.Input(shape=shape, name=f.name, dtype=inputs[f.name].dtype)
        if f.embedding is None:
            fields.append(x)
        elif f.kind == "sequence":
            fields.append(MaskedMean()(tables[f.embedding.table](x), x))
        else:
            fields.append(tables[f.embedding.table](x))
    x = tf.keras.layers.Concatenate()(fields)
    expert_outputs = []
    for i in range(experts):
        h = x
        for units in expert_layers:
            h = tf.keras.layers.Dense(units, activation="relu")(h)
        expert_outputs.append(h)
    stacked = tf.keras.layers.Lambda(lambda e: tf.stack(e, axis=1))(expert_outputs)  # [B, n, d]
    outputs = {}
    for label in spec.labels:
        gate = tf.keras.layers.Dense(experts, activation="softmax", name=f"gate_{label.name}")(x)
        mixed = tf.keras.layers.Lambda(lambda a: tf.reduce_sum(a[0] * a[1][:, :, None], axis=1))([stacked, gate])
        for units in task_tower:
            mixed = tf.keras.layers.Dense(units, activation="relu")(mixed)
        activation = "sigmoid" if label.type == "binary" else None
        outputs[label.name] = tf.keras.layers.Dense(1, activation=activation, name=label.name)(mixed)
    model = tf.keras.Model(keras_inputs, outputs, name="keras_mmoe")
    model.compile(optimizer=tf.keras.optimizers.Adam(),
                  loss={x.name: "binary_crossentropy" if x.type == "binary" else "mse" for x in spec.labels},
                  loss_weights={x.name: x.weight for x in spec.labels})
    return model
