"""Scores for evaluation: a batch's rows, then each of its groups' sampled candidates, from a trained model.

A consistency evaluation (`predict`) scores, for every group of a batch, its exposed rows and K items sampled
from the item catalog. A sampled candidate joins the user and context columns of its group's first row to
the catalog's columns of the item. Scored as rows (the user's columns copied K times, every feature encoded
and both models run on every copy), most of the work repeats: on KuaiRand a 2,048-row batch has about 1,600
groups, so K = 50 makes 80,000 candidate rows a batch, each running the user's three target attentions over a
[rows, 50, 64] concatenation (padded to 50 even where the history is empty: 70% of like_seq). `ModelScorer`
computes each part once where it lives:

- exposed rows: the model's own forward pass (so the K = 0 figures are exactly those of a plain pass), which
  also gives the parts the group's candidates reuse;
- student, candidates: the user tower's output of the group's row, the item tower's output of each catalog
  item (once per evaluation), joined by the similarity;
- teacher, candidates: the MMoE's first layers (every expert's first dense layer and every gate) are linear
  in the concatenated fields (`MMoE.first_layer_part`), so the share of the fields that read user columns
  only is computed once per group, that of the fields that read no user column (item features, their offline
  statistics) once per catalog item, and per candidate only that of what joins user and item: crosses of user
  and item columns, and target attention. Target attention's scoring layer is split the same way
  (`target_attention.pool_candidates`: the history's term once per group, the candidate's once per item, the
  product term per pair), the groups taken in order of history length and padded to the next multiple of
  LENGTH_STEP (an empty history pools to zeros without work). The rest of the MMoE (expert layers after the
  first, gates, task towers) runs per candidate. The dense parts compile with XLA (`jit_compile`).

The parts add up to what the plain forward pass computes up to float rounding, the sums being taken in another
order: on a 2,048-row KuaiRand batch with 50 candidates a group, the fused score within 3e-7, the task
outputs within 4e-6 and the student's logit within 3e-7 of one forward pass over the candidate rows.

A scorer is what `predict.predict_with` needs: `spec`, `labels`, `student_task`, `has_student`, `catalog`
and `score`. `serving.savedmodel.evaluation.ExportScorer` is the other one: the export's signatures.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from trainer.data.catalog import ItemCatalog
from trainer.layers.target_attention import pool_candidates
from trainer.losses.groups import candidate_features
from trainer.models.joint import JointModel
from trainer.spec.sides import user_columns

ROWS_PER_CALL = 8192  # sampled candidates scored per graph call: bounds the attention's [rows, L, hidden] terms
LENGTH_STEP = 16  # a target attention over candidates pads its histories to a multiple of this (or max_length)
# every attention layer's candidates, compiled with XLA (True) or not: one function for every layer and scorer
# of the process, so a shape compiles once
POOL_CANDIDATES = {jit: tf.function(pool_candidates, autograph=False, jit_compile=jit) for jit in (True, False)}


def teacher_entries(model: JointModel, logits: dict[str, tf.Tensor], fused: tf.Tensor) -> dict[str, tf.Tensor]:
    """The teacher's per-row outputs as `Predictions` keys: "teacher_score", and per task "raw/<task>",
    "teacher/<task>" (probability-like) and, for regression tasks, "estimate/<task>"."""
    out = {"teacher_score": fused}
    for task, output in logits.items():
        out[f"raw/{task}"] = output
        out[f"teacher/{task}"] = model.task_probability(task, output)
        if model.labels[task].type == "regression":
            out[f"estimate/{task}"] = model.task_estimate(task, output)
    return out


def relaxed(structure):
    """Type specs of a structure of tensors with every leading (batch) dimension unknown: a function traced
    with them once serves every batch size (the last, shorter batch included)."""
    def spec(value):
        s = tf.type_spec_from_value(value)
        if isinstance(value, tf.RaggedTensor):
            return tf.RaggedTensorSpec([None, *s.shape[1:]], s.dtype, s.ragged_rank, s.row_splits_dtype)
        return tf.TensorSpec([None, *s.shape[1:]], s.dtype)
    return tf.nest.map_structure(spec, structure)


def chunks(n: int, size: int) -> list[np.ndarray]:
    """0..n-1 in pieces of `size` indices, the last one padded with its last index to `size` (calls of one
    shape: a compiled function compiles once)."""
    out = []
    for start in range(0, n, size):
        piece = np.arange(start, min(start + size, n))
        out.append(np.concatenate([piece, np.repeat(piece[-1:], size - len(piece))]))
    return out


class ModelScorer:
    """Scores of a trained JointModel: exposed rows by its forward pass, sampled candidates by parts.

    Args:
      model: the trained model.
      catalog: the item table candidates are sampled from (None: exposed rows only).
      rows_per_call: sampled candidates per graph call.
      jit_compile: compile the dense parts on candidates (target attention, the MMoE) with XLA, which fuses
        the attention's elementwise work over [rows, L, hidden] (twice as fast on KuaiRand's histories).
      workers: graph calls on candidates run this many at a time (a compiled call mostly keeps one core busy);
        default: the CPUs of the machine, at most 4.
    """

    def __init__(self, model: JointModel, catalog: ItemCatalog | None = None, rows_per_call: int = ROWS_PER_CALL,
                 jit_compile: bool = True, workers: int | None = None):
        self.model, self.catalog, self.rows_per_call = model, catalog, rows_per_call
        self.workers = workers or min(os.cpu_count() or 1, 4)
        self.spec, self.labels = model.spec, model.labels
        self.student_task, self.has_student = model.student_task, model.has_student
        self.users = user_columns(model.spec)
        users = set(self.users)
        reads_user = {f.name: bool(set(f.columns) & users) for f in model.spec.features}
        reads_item = {f.name: bool(set(f.columns) - users) for f in model.spec.features}
        fields = model.teacher.input_fields
        self.user_fields = [f for f in fields if not reads_item[f]]  # once per group
        self.item_fields = [f for f in fields if not reads_user[f]]  # once per catalog item
        self.pair_fields = [f for f in fields if reads_user[f] and reads_item[f]]  # per candidate
        # target attention by parts needs a history of the user alone and a target of the item alone
        attentions = list(zip(model.attention_pairs, model.teacher.attention))
        splits = [not reads_item[p.sequence] and not reads_user[p.target] for p, _ in attentions]
        self.split = [a for a, split in zip(attentions, splits) if split]
        self.unsplit = [a for a, split in zip(attentions, splits) if not split]
        per_row = self.pair_fields + [f for p, _ in self.unsplit for f in (p.sequence, p.target)]
        self.pair_columns = sorted({c for f in per_row for c in model.spec.feature(f).columns})
        item_side = {c for f in model.spec.features_on("item") for c in f.columns}
        self.item_tower_per_row = bool(item_side & users)  # an item feature reading a user column
        if self.item_tower_per_row:
            self.pair_columns = sorted(set(self.pair_columns) | item_side)
        self._exposed = tf.function(self._exposed_fn, reduce_retracing=True, autograph=False)
        self._sampled = tf.function(self._sampled_fn, reduce_retracing=True, autograph=False)
        self._teacher_candidates = tf.function(self._teacher_candidates_fn, autograph=False, jit_compile=jit_compile)
        self._attend = POOL_CANDIDATES[jit_compile]
        self._catalog_parts: dict | None = None
        self._traced: set[str] = set()

    # ---- the graph parts ----
    def _exposed_fn(self, features: dict, with_parts: bool) -> tuple[dict, dict]:
        """(scores of the batch's rows, the per-row parts candidates reuse: the user fields' first-layer term,
        the attended histories (padded to their max_length), the user tower's output)."""
        model = self.model
        out = model(features, training=False)
        scores = teacher_entries(model, out.teacher_logits, out.teacher_score)
        if out.student_logit is not None:
            scores["student_logit"] = out.student_logit
        if not with_parts:
            return scores, {}
        rows = tf.shape(out.teacher_score)[0]
        parts = {"user_term": self._term({f: out.teacher_fields[f] for f in self.user_fields}, rows)}
        for p, _ in self.split:
            history = out.histories[p.sequence]
            parts[f"keys/{p.sequence}"] = history.to_tensor(
                shape=[None, model.spec.feature(p.sequence).max_length, history.shape[-1]])
            parts[f"lengths/{p.sequence}"] = history.row_lengths()
        if out.user_vector is not None:
            parts["user_vector"] = out.user_vector
        return scores, parts

    def _term(self, fields: dict[str, tf.Tensor], rows: tf.Tensor) -> tf.Tensor:
        """`first_layer_part` of `fields` (zeros for none)."""
        if fields:
            return self.model.teacher.first_layer_part(fields)
        return tf.zeros([rows, self.model.teacher.first_layer_width])

    def _catalog_fn(self, columns: dict) -> dict:
        """Per catalog item: the item fields' first-layer term, the attention targets, the item tower output."""
        model = self.model
        encoder = model.teacher_fields_encoder
        encoded = {f: encoder.encode(model.spec.feature(f), columns) for f in self.item_fields}
        rows = tf.shape(next(iter(columns.values())))[0]
        out = {"item_term": self._term(encoded, rows)}
        for p, _ in self.split:
            out[f"target/{p.target}"] = encoded[p.target] if p.target in encoded else \
                encoder.encode(model.spec.feature(p.target), columns)
        if self.has_student and not self.item_tower_per_row:
            out["item_vector"] = model.item_tower(*model.encode_side("item", columns))
        return out

    def _sampled_fn(self, features: dict, parts: dict, catalog_parts: dict, first_rows: tf.Tensor,
                    items: tf.Tensor, pooled: dict) -> dict:
        """Scores of the candidates `items` [G, K] (catalog rows) of the groups whose first rows are
        `first_rows` [G], group by group, given the split attentions' outputs `pooled` ([G, K, d] each): what
        joins user and item per row (crosses, unsplit attention), the teacher's dense part
        (`_teacher_candidates_fn`), the student's similarity."""
        model = self.model
        flat_items = tf.reshape(items, [-1])
        owners = tf.repeat(first_rows, tf.shape(items)[1])  # the batch row of each candidate's user
        raw = candidate_features(features, owners, self.catalog, flat_items, self.users, self.pair_columns)
        encoder = model.teacher_fields_encoder
        joined = {f: encoder.encode(model.spec.feature(f), raw) for f in self.pair_fields}
        for p, attention in self.unsplit:
            joined[p.field] = attention(encoder.vectors(model.spec.feature(p.sequence), raw),
                                        encoder.encode(model.spec.feature(p.target), raw))
        logits = self._teacher_candidates(tf.gather(parts["user_term"], first_rows), catalog_parts["item_term"],
                                          items, joined, pooled)
        scores = teacher_entries(model, logits, model.fused(logits))
        if self.has_student:
            if self.item_tower_per_row:
                item = model.item_tower(*model.encode_side("item", raw))
            else:
                item = tf.gather(catalog_parts["item_vector"], flat_items)
            scores["student_logit"] = model.similarity(tf.gather(parts["user_vector"], owners), item)
        return scores

    def _teacher_candidates_fn(self, user_term: tf.Tensor, item_term: tf.Tensor, items: tf.Tensor, joined: dict,
                               pooled: dict) -> dict:
        """The teacher's task outputs on candidates `items` [G, K]: the groups' first-layer term [G, W], each
        catalog item's ([N, W]), the per-candidate fields' terms (`joined`: [G K, d] each; `pooled`: [G, K, d]
        each), then the rest of the MMoE. Dense tensors only (it compiles with XLA)."""
        teacher = self.model.teacher
        rows = tf.shape(items)[0] * tf.shape(items)[1]
        sizes = teacher.first_layer_sizes
        fields = {**joined, **{f: tf.reshape(v, [rows, -1]) for f, v in pooled.items()}}
        per_row = tf.split(teacher.first_layer_part(fields), sizes, axis=-1) if fields else [0.0] * len(sizes)
        # layer by layer: each layer's sum is made where its activation reads it, never [rows, W] whole
        pieces = [tf.reshape(user[:, None, :] + tf.gather(item, items), [rows, size]) + joint
                  for user, item, joint, size in zip(tf.split(user_term, sizes, axis=-1),
                                                     tf.split(item_term, sizes, axis=-1), per_row, sizes)]
        return teacher.outputs_from_first_layer(pieces)

    # ---- the scorer ----
    def reset(self) -> None:
        """Forget the catalog's parts (computed on first use): call it after changing the model's weights."""
        self._catalog_parts = None

    def catalog_parts(self) -> dict:
        """The per-item parts of the whole catalog, computed on first use (in chunks of `rows_per_call`)."""
        if self._catalog_parts is None:
            catalog_fn = tf.function(self._catalog_fn, reduce_retracing=True, autograph=False)
            parts = [catalog_fn({c: v[start:start + self.rows_per_call] for c, v in self.catalog.columns.items()})
                     for start in range(0, self.catalog.size, self.rows_per_call)]
            self._catalog_parts = {k: tf.concat([c[k] for c in parts], axis=0) for k in parts[0]}
        return self._catalog_parts

    def _call(self, name: str, function, *args):
        """`function(*args)`, traced on its first call for every batch size (`relaxed`)."""
        if name not in self._traced:  # a bool argument is a constant of the trace
            function.get_concrete_function(*[a if isinstance(a, bool) else relaxed(a) for a in args])
            self._traced.add(name)
        return function(*args)

    def _pooled(self, parts: dict, first_rows: np.ndarray, items: np.ndarray, groups_per_call: int,
                catalog_parts: dict) -> dict[str, np.ndarray]:
        """Each split target attention's output on every candidate, [G, K, d]: groups in order of history
        length, each call padding its histories to the next multiple of LENGTH_STEP (or max_length) of its
        longest; an empty history pools to zeros without a call."""
        out, calls = {}, []
        for p, attention in self.split:
            weights = [tf.convert_to_tensor(w) for w in attention.score_weights()]
            activation = attention.score.layers[0].activation
            keys, lengths = parts[f"keys/{p.sequence}"], parts[f"lengths/{p.sequence}"].numpy()[first_rows]
            targets = catalog_parts[f"target/{p.target}"]
            out[p.field] = pooled = np.zeros([*items.shape, targets.shape[-1]], np.float32)
            order = np.flatnonzero(lengths > 0)
            order = order[np.argsort(lengths[order], kind="stable")]
            for piece in chunks(len(order), groups_per_call):
                picked = order[piece]
                length = min(-(-int(lengths[picked].max()) // LENGTH_STEP) * LENGTH_STEP, int(keys.shape[1]))
                calls.append((pooled, picked, keys, length, lengths[picked], targets, weights, activation))

        def attend(call) -> None:
            pooled, picked, keys, length, lengths, targets, weights, activation = call
            rows = tf.constant(first_rows[picked], tf.int32)
            pooled[picked] = self._attend(tf.gather(keys, rows)[:, :length], tf.constant(lengths),
                                          tf.gather(targets, items[picked]), *weights, activation).numpy()

        self._map(attend, calls)
        return out

    def _map(self, function, calls: list) -> list:
        """`function` over `calls` in order, `workers` calls at a time."""
        if self.workers <= 1 or len(calls) <= 1:
            return [function(c) for c in calls]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(function, calls))

    def score(self, features: dict, first_rows: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Scores of the batch's B rows, then of its groups' candidates, group after group.

        Args:
          features: the batch's raw columns.
          first_rows: [G] the first row of each group (ascending).
          items: [G, K] int64 catalog rows of each group's candidates (K = 0: the batch's rows only).
        """
        sampling = items.size > 0
        scores, parts = self._call(f"exposed/{sampling}", self._exposed, features, sampling)
        out = {k: [v.numpy()] for k, v in scores.items()}
        if sampling:
            catalog_parts = self.catalog_parts()
            groups, per_group = items.shape
            # calls of one shape, so the compiled parts compile once: at most rows_per_call candidates, and no
            # more groups than the next power of two above this batch's
            groups_per_call = min(max(1, self.rows_per_call // per_group), 1 << int(np.ceil(np.log2(groups))))
            pooled = self._pooled(parts, first_rows, items, groups_per_call, catalog_parts)

            def candidates(piece: np.ndarray) -> dict[str, np.ndarray]:
                chunk = self._call("sampled", self._sampled, features, parts, catalog_parts,
                                   tf.constant(first_rows[piece], tf.int32), tf.constant(items[piece], tf.int64),
                                   {f: tf.constant(v[piece]) for f, v in pooled.items()})
                real = len(np.unique(piece)) * per_group  # the padded groups' rows are dropped
                return {k: v.numpy()[:real] for k, v in chunk.items()}

            pieces = chunks(groups, groups_per_call)
            for chunk in [candidates(pieces[0])] + self._map(candidates, pieces[1:]):  # the first call traces
                for k, v in chunk.items():
                    out[k].append(v)
        return {k: np.concatenate(v) for k, v in out.items()}
