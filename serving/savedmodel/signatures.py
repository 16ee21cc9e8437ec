"""The serving signatures of a trained model, taking raw feature values.

Inputs are the spec's raw columns, named as in the data (derived from the
spec, never listed): ids as int64 or string, numbers as float32, sequences as
[B, L] right-padded with -1 (int ids) or "" (string ids), vectors as [B, dim].
All preprocessing (vocabularies, hashing, crosses, bucketizing, normalisation)
runs inside the graph. Signatures:

- user_embedding: user + context columns [B] -> user_vector [B, d], logit_bias [B]
- item_embedding: item columns [B] -> item_vector [B, d]
- prerank: one user's columns [1] and N candidates' item columns [N] -> logit, score [N];
  the user tower runs once (serving_default)
- pairwise: aligned user and item columns [B] -> logit, score [B]
- prerank_vectors: one user's columns [1] and N candidates' precomputed item vectors (`item_vectors`
  float32 [N, d], e.g. from `prerank embed-items`) -> logit, score [N]; only the user tower runs
- fine_rank: every feature column [B] -> each task's prediction, raw output (<task>_output), a
  regression task's estimate of its target (<task>_estimate), and fused_score [B] (not in a student-only
  export, which holds the student's signatures and the tables they read, nothing of the teacher)

logit = user_vector . item_vector + logit_bias; score = sigmoid(logit).

What a signature refuses (`input_checks`, checked in the graph before the
model reads anything): a shape other than [B] / [B, L] / [B, dim]; columns of
one request with different numbers of rows (prerank: user and context columns
with other than exactly 1 row); NaN or inf in a float32 column; a negative
int64 id, except a scalar column's declared negative `default` (e.g. -1) and
the -1 padding of sequences; a sequence row with padding before an id (left
padding, a hole). The message names the column and what was expected:
"prerank: column watch_seq: sequences are right-padded with -1: row 3 has
padding before an id".

What TF Serving returns then: the assertion fails the run with TensorFlow's
INVALID_ARGUMENT status, which TF Serving passes on as is: gRPC status
INVALID_ARGUMENT (code 3) with the message as details; REST status 400
(`ToHTTPStatusCode` in tensorflow_serving/model_servers/http_server.cc maps
INVALID_ARGUMENT to BAD_REQUEST) and the body {"error": "<message>"} (every
REST error, per the RESTful API guide, tensorflow.org/tfx/serving/api_rest),
the message being "assertion failed: [<ours>]" plus TensorFlow's node names.
TF Serving itself checks only the input names ("input size does not match
signature: ... Sent extra: {...}. Missing but required: {...}.", predict_util.cc)
and dtypes ("Expects arg[0] to be int64 but int32 is provided"), both
INVALID_ARGUMENT; it does not compare shapes with the signature's
(tensorflow/serving#1436: "Modelserver does not do any input shape verification
while handling a predict request"), hence the shape rules here. Python callers
go through `requests.call_signature`, which checks names, dtypes and shapes
before the call and turns a refusal into a DataError.
"""
import numpy as np
import tensorflow as tf

from serving.savedmodel.input_checks import RowGroup, checked_inputs
from serving.savedmodel.prune import PrunedTable, table_slots
from trainer.data.records import PAD_ID, PAD_STRING
from trainer.errors import ExportError
from trainer.models.joint import JointModel
from trainer.spec.columns import RawColumn, raw_columns
from trainer.spec.sides import side_columns
from trainer.spec.types import Spec


PRERANK_USER_ROWS = "prerank scores one user, so user and context columns hold exactly 1 row"
ITEM_VECTORS = "item_vectors"  # the prerank_vectors input holding the candidates' vectors


def item_vectors_column(spec: Spec, dim: int) -> RawColumn:
    """The `item_vectors` input of prerank_vectors as a column [N, dim] (checked like a dense vector: shape,
    finite); an ExportError if a raw column of the spec already has that name."""
    if ITEM_VECTORS in raw_columns(spec):
        raise ExportError(f"{spec.path}: a column is named '{ITEM_VECTORS}', the name of the prerank_vectors "
                          "signature's vector input; rename the column")
    return RawColumn(ITEM_VECTORS, "float32", "vector", dim, users=("signature 'prerank_vectors'",))


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


def tensor_spec(column: RawColumn) -> tf.TensorSpec:
    """The input signature of one raw column ([B], [B, None] sequences, [B, dim] vectors). Every batch
    dimension is None, prerank's user columns too: its one-user rule is checked in the graph, with a message
    naming the column (`input_checks`)."""
    dtype = tf.as_dtype(column.dtype)
    if column.shape == "list":
        return tf.TensorSpec([None, None], dtype, name=column.name)
    if column.shape == "vector":
        return tf.TensorSpec([None, column.length], dtype, name=column.name)
    return tf.TensorSpec([None], dtype, name=column.name)


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
    """The signatures of a (pruned) JointModel, with the variables and lookup tables they read.

    Args:
      model: the model to serve.
      input_checks: check every request in the graph (`input_checks`). Only the serving benchmark turns
        them off, to measure what they cost; an export always has them.
      student_only: only the student's signatures (user_embedding, item_embedding, prerank, pairwise,
        prerank_vectors), and only the variables and lookup tables they read: no teacher, no cross or
        privileged tables.
    """

    def __init__(self, model: JointModel, input_checks: bool = True, student_only: bool = False):
        super().__init__(name="prerank")
        spec = model.spec
        if student_only and not model.has_student:
            raise ExportError(f"{spec.path}: a teacher-only model (model.mode: teacher) has no student to export")
        self.functions: dict[str, tf.types.experimental.ConcreteFunction] = {}
        self.row_rules: dict[str, str] = {}  # signature -> how many rows its columns hold, in words

        def signature(name: str, outputs, groups: list[RowGroup]) -> None:
            """Trace `outputs(cols)` as signature `name` over the groups' columns, checked first."""
            def fn(**cols):
                return outputs(checked_inputs(name, groups, cols) if input_checks else cols)
            specs = [tensor_spec(c) for g in groups for c in g.columns]
            self.row_rules[name] = "; ".join(g.holds for g in groups)
            self.functions[name] = tf.function(fn).get_concrete_function(**{s.name: s for s in specs})

        if not student_only:
            everything = tuple(input_columns(spec, "all"))
            signature("fine_rank", lambda cols: fine_rank_outputs(model, cols),
                      [RowGroup(everything, "every column holds one row per example")])
        if not model.has_student:
            self.functions["serving_default"] = self.functions["fine_rank"]
            self.row_rules["serving_default"] = self.row_rules["fine_rank"]
            self._track(model, student_only)
            return
        user, item = (tuple(side) for side in tower_columns(spec))
        bias = model.similarity.bias

        def user_embedding(cols):
            u = model.user_vector(cols)
            return {"user_vector": u, "logit_bias": tf.fill([tf.shape(u)[0]], bias)}

        def prerank(cols):
            u = model.user_vector({c.name: cols[c.name] for c in user})  # [1, d]: the user tower runs once
            v = model.item_vector({c.name: cols[c.name] for c in item})  # [N, d]
            return _prediction(model.similarity.logit(u, v))

        signature("user_embedding", user_embedding, [RowGroup(user, "user and context columns hold one row per user")])
        signature("item_embedding", lambda cols: {"item_vector": model.item_vector(cols)},
                  [RowGroup(item, "item columns hold one row per item")])
        signature("prerank", prerank, [RowGroup(user, PRERANK_USER_ROWS, rows=1),
                                       RowGroup(item, "item columns hold one row per candidate")])
        signature("pairwise", lambda cols: _prediction(model.similarity.logit(model.user_vector(cols),
                                                                              model.item_vector(cols))),
                  [RowGroup(user + item, "user, context and item columns hold one row per pair")])
        vectors = item_vectors_column(spec, model.config.model.student.user_tower[-1])

        def prerank_vectors(cols):
            u = model.user_vector({c.name: cols[c.name] for c in user})  # [1, d]: the only tower that runs
            return _prediction(model.similarity.logit(u, cols[ITEM_VECTORS]))

        signature("prerank_vectors", prerank_vectors,
                  [RowGroup(user, PRERANK_USER_ROWS, rows=1),
                   RowGroup((vectors,), "item_vectors holds one vector per candidate")])
        self.functions["serving_default"] = self.functions["prerank"]
        self.row_rules["serving_default"] = self.row_rules["prerank"]
        self._track(model, student_only)

    def _track(self, model: JointModel, student_only: bool) -> None:
        """Track what the signatures need: every variable and lookup table of the model, or (student-only)
        those the traced signatures capture, so the teacher's are not written."""
        variables = list(model.variables)
        tables = [m.lookup_table for m in model.submodules if hasattr(m, "lookup_table")]
        stored = {slot.label: slot.layer.stored_variables() for slot in table_slots(model).values()
                  if isinstance(slot.layer, PrunedTable)}
        if student_only:
            captured = {id(t) for f in self.functions.values() for t in f.captured_inputs}
            variables = [v for v in variables if id(v.handle) in captured]
            tables = [t for t in tables if id(t.resource_handle) in captured]
            stored = {label: v for label, v in stored.items() if id(v["values"].handle) in captured}
        self.model_variables = variables
        self.lookup_tables = tables
        # each pruned table's stored variables by its report label ("video", "augment/user"): what
        # verify-export reads back to check every stored row against the checkpoint's
        self.embedding_tables = stored


def fine_rank_outputs(model: JointModel, cols: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Each task's prediction (probability; t/(1+t) for regression), its raw output, a regression task's
    estimate of its (transformed) target, and the fused score."""
    logits, fused = model.teacher_outputs(cols)
    out = {"fused_score": fused}
    for task, output in logits.items():
        out[task] = model.task_probability(task, output)
        out[f"{task}_output"] = output
        if model.labels[task].type == "regression":
            out[f"{task}_estimate"] = model.task_estimate(task, output)
    return out
