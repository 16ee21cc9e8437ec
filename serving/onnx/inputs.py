"""What the ONNX graphs take, and how raw values become it.

ONNX has no string hashing or vocabulary ops, so the graphs start after the
model's own preprocessing. Per student feature (user + context features for
the user tower, item features for the item tower) one input:

- embedding features (categorical ids, bucketized numbers): the trained
  table's row ids, int64 [N]; sequences int64 [N, max_length] (after the
  keep first/last truncation), padded with -1 and pooled in the graph with a
  mask (an empty sequence pools to zeros);
- numeric features: the transformed value (fitted statistics applied), float32 [N];
- dense vectors: float32 [N, dim];
- the dual augmented vector reads the rows of the side's id feature (that
  feature's input, or an extra `augment_<side>` input if it is not one).

`onnx_feeds` computes the inputs with the model's own TensorFlow preprocessing.
"""
import re
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainer.errors import ExportError
from trainer.models.joint import JointModel
from trainer.spec.types import TOWER_SIDES, Feature

PAD_ROW = -1  # pads sequence rows; any negative row is padding
_NAME = re.compile(r"[^A-Za-z0-9_.\-]")  # characters a TF placeholder name cannot hold


@dataclass(frozen=True)
class OnnxInput:
    """One ONNX input: what it holds (`role`) for which feature of which tower side."""

    name: str
    feature: Feature
    side: str  # "user" (user + context features) or "item"
    role: str  # "rows": table rows; "value": transformed number; "vector": dense vector; "augment": augment rows only
    augments: bool = False  # its rows also select the side's dual augmented vector

    @property
    def dtype(self) -> tf.DType:
        return tf.int64 if self.role in ("rows", "augment") else tf.float32

    @property
    def shape(self) -> list[int | None]:
        if self.role == "vector":
            return [None, self.feature.dim]
        if self.role == "rows" and self.feature.kind == "sequence":
            return [None, self.feature.max_length]
        return [None]

    def tensor_spec(self, batch: int | None = None) -> tf.TensorSpec:
        return tf.TensorSpec([batch] + self.shape[1:], self.dtype, name=self.name)


# ---- inputs ----

def onnx_inputs(model: JointModel, side: str) -> list[OnnxInput]:
    """The ONNX inputs of one tower side ("user" or "item"), in graph order."""
    features = model.spec.features_on(*TOWER_SIDES[side])
    augment = model.augment_features[side] if model.augmented else None
    inputs = [OnnxInput(_input_name(f.name), f, side, _role(f), augment is not None and f.name == augment.name)
              for f in features]
    if augment is not None and not any(i.augments for i in inputs):
        if augment.kind != "categorical":
            raise ExportError(f"{model.spec.path}: the dual augmented {side} feature '{augment.name}' must be "
                              f"categorical (one id a row), not {augment.kind}")
        inputs.append(OnnxInput(f"augment_{side}", augment, side, "augment", True))
    return inputs


def all_inputs(model: JointModel) -> list[OnnxInput]:
    """User then item inputs; fails if two would share a name."""
    inputs = onnx_inputs(model, "user") + onnx_inputs(model, "item")
    seen: dict[str, str] = {}
    for i in inputs:
        if i.name in seen:
            raise ExportError(f"{model.spec.path}: features '{seen[i.name]}' and '{i.feature.name}' both become "
                              f"ONNX input '{i.name}'; rename one")
        seen[i.name] = i.feature.name
    return inputs


def _input_name(feature_name: str) -> str:
    name = _NAME.sub("_", feature_name)
    return name if name[:1].isalnum() else "f" + name


def _role(feature: Feature) -> str:
    if feature.embedding is not None:
        return "rows"
    return "vector" if feature.kind == "dense_vector" else "value"


# ---- raw features -> feeds (the model's own TensorFlow preprocessing) ----

def onnx_feeds(model: JointModel, features: dict, side: str) -> dict[str, np.ndarray]:
    """The ONNX feeds of `side` for a pipeline batch's raw `features` (one row per example)."""
    return {i.name: _feed(model, i, features) for i in onnx_inputs(model, side)}


def prerank_feeds(model: JointModel, features: dict, user_row: int = 0) -> dict[str, np.ndarray]:
    """prerank.onnx feeds: the user of row `user_row` against every row's item."""
    user = {k: v[user_row:user_row + 1] for k, v in onnx_feeds(model, features, "user").items()}
    return {**user, **onnx_feeds(model, features, "item")}


def _feed(model: JointModel, i: OnnxInput, features: dict) -> np.ndarray:
    f = i.feature
    if i.role in ("rows", "augment"):
        rows = model.encoder.row_ids(f, features)
        if isinstance(rows, tf.RaggedTensor):
            rows = rows.to_tensor(default_value=PAD_ROW, shape=[None, f.max_length])
        return np.asarray(rows).astype(np.int64)
    encoded = model.encoder.encode(f, features)  # numbers [B, 1] (transformed), vectors [B, dim]
    return np.asarray(encoded[:, 0] if i.role == "value" else encoded)
