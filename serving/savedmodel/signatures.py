"""The serving signatures of a trained model, taking raw feature values.

Inputs are the spec's raw columns, named as in the data (derived from the
spec, never listed): ids as int64 or string, numbers as float32, sequences as
[B, L] padded with -1 (int ids) or "" (string ids), vectors as [B, dim]. All
preprocessing (vocabularies, hashing, crosses, bucketizing, normalisation)
runs inside the graph. Signatures:

- user_embedding: user + context columns [B] -> user_vector [B, d], logit_bias [B]
- item_embedding: item columns [B] -> item_vector [B, d]
- prerank: one user's columns [1] and N candidates' item columns [N] -> logit, score [N];
  the user tower runs once (serving_default)
- pairwise: aligned user and item columns [B] -> logit, score [B]
- fine_rank: every feature column [B] -> each task's prediction and fused_score [B]

logit = user_vector . item_vector + logit_bias; score = sigmoid(logit).
"""
import numpy as np
import tensorflow as tf

from trainer.data.records import PAD_ID, PAD_STRING
from trainer.errors import ExportError
from trainer.models.joint import JointModel
from trainer.spec.columns import RawColumn, raw_columns
from trainer.spec.sides import side_columns
from trainer.spec.types import Spec


def input_columns(spec: Spec, role: str) -> list[RawColumn]:
    """The raw columns a signature takes: role "user" (user + context features), "item" or "all"."""
    columns = raw_columns(spec)
    if role in ("user", "item"):
        names = side_columns(spec, role)
    else:
        names = sorted(c for c, col in columns.items() if col.is_input)
    return [columns[n] for n in names]


def tower_columns(spec: Spec) -> tuple[list[RawColumn], list[RawColumn]]:
    """(user columns, item columns); fails if a column feeds both towers (`prerank` takes the user's columns
    once and the item columns once per candidate)."""
    user, item = input_columns(spec, "user"), input_columns(spec, "item")
    shared = sorted({c.name for c in user} & {c.name for c in item})
    if shared:
        raise ExportError(f"{spec.path}: column(s) {', '.join(shared)} are read by user/context and by item "
                          "features; the prerank signature takes user columns once and item columns per "
                          "candidate, so each column must feed one tower only")
    return user, item


def tensor_spec(column: RawColumn, batch: int | None = None) -> tf.TensorSpec:
    """The input signature of one raw column ([B], [B, None] sequences, [B, dim] vectors)."""
    dtype = tf.as_dtype(column.dtype)
    if column.shape == "list":
        return tf.TensorSpec([batch, None], dtype, name=column.name)
    if column.shape == "vector":
        return tf.TensorSpec([batch, column.length], dtype, name=column.name)
    return tf.TensorSpec([batch], dtype, name=column.name)


def serving_inputs(features: dict, columns: list[RawColumn], rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """Signature inputs from a pipeline batch's features: ragged sequences padded, `rows` selected."""
    out = {}
    for col in columns:
        value = features[col.name]
        if isinstance(value, tf.RaggedTensor):
            value = value.to_tensor(default_value=PAD_STRING if col.dtype == "string" else PAD_ID)
        out[col.name] = np.asarray(value)[rows]
    return out


def _prediction(logit: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"logit": logit, "score": tf.sigmoid(logit)}


class ServingModule(tf.Module):
    """The signatures of a (pruned) JointModel, with the variables and lookup tables they read."""

    def __init__(self, model: JointModel):
        super().__init__(name="prerank")
        spec = model.spec
        self.model_variables = list(model.variables)
        self.lookup_tables = [m.lookup_table for m in model.submodules if hasattr(m, "lookup_table")]
        self.functions: dict[str, tf.types.experimental.ConcreteFunction] = {}
        everything = [tensor_spec(c) for c in input_columns(spec, "all")]
        fine_rank = tf.function(lambda **cols: fine_rank_outputs(model, cols))
        self.functions["fine_rank"] = fine_rank.get_concrete_function(**{s.name: s for s in everything})
        if not model.has_student:
            self.functions["serving_default"] = self.functions["fine_rank"]
            return
        user, item = tower_columns(spec)
        user_specs, item_specs = [tensor_spec(c) for c in user], [tensor_spec(c) for c in item]
        bias = model.similarity.bias

        def user_embedding(**cols):
            u = model.user_vector(cols)
            return {"user_vector": u, "logit_bias": tf.fill([tf.shape(u)[0]], bias)}

        def prerank(**cols):
            u = model.user_vector({c.name: cols[c.name] for c in user})  # [1, d]: the user tower runs once
            v = model.item_vector({c.name: cols[c.name] for c in item})  # [N, d]
            return _prediction(model.similarity.logit(u, v))

        def pairwise(**cols):
            return _prediction(model.similarity.logit(model.user_vector(cols), model.item_vector(cols)))

        functions = {
            "user_embedding": (user_embedding, user_specs),
            "item_embedding": (lambda **cols: {"item_vector": model.item_vector(cols)}, item_specs),
            "prerank": (prerank, [tensor_spec(c, 1) for c in user] + item_specs),
            "pairwise": (pairwise, user_specs + item_specs),
        }
        for name, (fn, specs) in functions.items():
            self.functions[name] = tf.function(fn).get_concrete_function(**{s.name: s for s in specs})
        self.functions["serving_default"] = self.functions["prerank"]


def fine_rank_outputs(model: JointModel, cols: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Each task's prediction (probability; t/(1+t) for regression), its raw output and the fused score."""
    logits, fused = model.teacher_outputs(cols)
    out = {"fused_score": fused}
    for task, output in logits.items():
        out[task] = model.task_probability(task, output)
        out[f"{task}_output"] = output
    return out
