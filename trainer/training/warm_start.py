"""Warm start: a new model directory's first weights from a previous model's latest checkpoint (daily retraining).

`prerank train SPEC --model-dir NEW --warm-start PREV` builds NEW's model from its own spec and preprocessing,
then, before its first step, carries from PREV's latest checkpoint what still fits:

- Embedding tables, row by row, by id. A vocabulary table's rows follow their ids: an id PREV knew gets its
  trained row wherever its index is now (with its FTRL slots and usage count); an id PREV did not know starts
  from the out-of-vocabulary row it read in PREV (with several OOV rows, the one it hashed to), which is what
  the model scored it with yesterday, with a fresh accumulator and the linear slot that holds that value
  (`optimizers.ftrl_linear_holding`: FTRL recomputes a weight from its slots, so a row given values without
  them is erased by its first update); its usage count starts at zero. The OOV rows are carried when their
  number is unchanged. Hashed and bucketized tables (and file vocabularies, whose file is assumed unchanged
  when its declaration is) are carried row by row when their declaration and row count are unchanged. A table
  of another dimension starts fresh; a table whose ids changed type is refused (ConfigError naming the
  feature): its ids cannot be matched.
- Dense parts whole (`JointModel.dense_parts`: each student tower, the similarity, each teacher expert, task
  gate, task tower, attention block), with their AdaGrad accumulators, when every variable of the part is
  saved in PREV at the same place with the same shape and PREV's part has no other variables. A first layer
  reading the concatenated fields (`JointModel.part_inputs`) whose fields changed is carried field by field:
  the rows of the fields both models read (each model directory records them in part_fields.json), a new field's
  rows fresh. Any other change starts the whole part fresh (a tower whose sizes changed, a new task's gate and
  tower). Parts of PREV that NEW lacks (a removed task or feature) are dropped.
- The global step (`step`): NEW continues PREV's step count, so the distillation weight's schedule and
  `drop_label_loss_after` continue where PREV left them instead of replaying the ramp from zero (`restart_schedule`
  starts from step 0 instead).

Nothing is carried into a directory that holds a checkpoint (a resumed job restores its own). The record of
what was carried, what started fresh and why (`WarmStart.apply`'s result) goes into NEW's run.json.

Under parameter servers each table is remapped shard by shard: the rows of one shard are read from PREV's
checkpoint (a slice of the saved table, `SavedObjects.read_rows`) and assigned on the server holding it; no
table is gathered whole on the chief.
"""
import json
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainer.errors import ModelDirError
from trainer.files import read_json, write_json_atomic
from trainer.layers.embedding import EmbeddingTable, shards
from trainer.layers.encoder import IdLookup
from trainer.models.joint import JointModel
from trainer.preprocessing.extend import check_dtypes
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec.types import Spec
from trainer.training.checkpoints import SavedObjects, latest_checkpoint
from trainer.training.layout import PART_FIELDS_FILE, RUN_FILE, checkpoint_dir, preprocessing_dir
from trainer.training.optimizers import ftrl_linear_holding
from trainer.training.run_record import read_run_record, recorded_config, spec_content
from trainer.training.usage import CHECKPOINT_KEY as USAGE

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
STEP_KEY = "step" + VALUE


@dataclass
class PreviousModel:
    """The model directory a warm start reads: its latest checkpoint, preprocessing and recorded spec."""

    directory: str
    checkpoint: str
    saved: SavedObjects
    preprocessing: Preprocessing
    features: dict[str, dict]  # the recorded spec's features, by name, as written in the spec file
    step: int
    inputs: dict[str, list[tuple[str, int]]] | None  # its part_fields.json (`write_input_layouts`); None: not recorded


def open_previous(directory: str) -> PreviousModel:
    """The previous model of a warm start; ModelDirError naming `directory` when it is not a trained model
    directory."""
    if not os.path.isfile(os.path.join(directory, RUN_FILE)):
        raise ModelDirError(f"--warm-start {directory}: not a trained model directory (no {RUN_FILE})")
    checkpoint = latest_checkpoint(directory)
    if checkpoint is None:
        raise ModelDirError(f"--warm-start {directory}: no checkpoint in {checkpoint_dir(directory)} to start from")
    record = read_run_record(os.path.join(directory, RUN_FILE))
    preprocessing = Preprocessing.load(preprocessing_dir(directory, recorded_config(directory)))
    saved = SavedObjects(checkpoint)
    return PreviousModel(directory, checkpoint, saved, preprocessing, record["spec"]["features"],
                         int(saved.read(STEP_KEY)), read_input_layouts(directory))


def write_input_layouts(model_dir: str, model: JointModel) -> None:
    """Write MODEL_DIR/part_fields.json: per dense part reading concatenated fields, the fields in order with their
    widths (`JointModel.part_inputs`), so that a later warm start can carry its kernels field by field."""
    layouts = {part: [[name, width] for name, width in layout] for part, (layout, _) in model.part_inputs().items()}
    write_json_atomic(os.path.join(model_dir, PART_FIELDS_FILE), layouts)


def read_input_layouts(model_dir: str) -> dict[str, list[tuple[str, int]]] | None:
    """MODEL_DIR/part_fields.json (None when the model predates it); ModelDirError naming the file if damaged."""
    path = os.path.join(model_dir, PART_FIELDS_FILE)
    if not os.path.exists(path):
        return None
    raw = read_json(path, ModelDirError, "`prerank train`")
    if not isinstance(raw, dict) or not all(isinstance(v, list) and all(
            isinstance(f, list) and len(f) == 2 and isinstance(f[0], str) and isinstance(f[1], int) for f in v)
            for v in raw.values()):
        raise ModelDirError(f"{path}: expected an object of part -> [[field, width], ...] (what `prerank train` "
                            f"writes), got {json.dumps(raw)[:80]}; remove it to warm-start without matching inputs "
                            "by field")
    return {part: [(name, width) for name, width in fields] for part, fields in raw.items()}


def field_rows(now: list[tuple[str, int]], before: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(rows now, rows before) of the input columns of the fields both layouts hold with the same width."""
    offsets, start = {}, 0
    for name, width in before:
        offsets[name], start = (start, width), start + width
    rows_now, rows_before, start = [], [], 0
    for name, width in now:
        if name in offsets and offsets[name][1] == width:
            rows_now.extend(range(start, start + width))
            rows_before.extend(range(offsets[name][0], offsets[name][0] + width))
        start += width
    return np.array(rows_now, np.int64), np.array(rows_before, np.int64)


@dataclass
class RowSource:
    """Where each row of a new table starts from in the previous table of the same name."""

    rows: np.ndarray  # int64 [new rows]: the previous table's row; -1: fresh (its initial value)
    new_ids: np.ndarray  # bool [new rows]: an id the previous vocabulary did not know (from its OOV row)
    how: str  # "by id" or "row by row"


class WarmStart:
    """Carries a previous model into a new one before its first step (see the module docstring)."""

    def __init__(self, previous_dir: str, spec: Spec, restart_schedule: bool = False):
        """
        Args:
          previous_dir: the model directory to start from (its latest checkpoint).
          spec: the new model's spec.
          restart_schedule: start the global step (and with it the distillation schedule) from 0 instead of
            continuing the previous model's.
        """
        self.spec, self.restart_schedule = spec, restart_schedule
        self.previous = open_previous(previous_dir)
        self.features = spec_content(spec)["features"]  # as written in the spec file, to compare with the previous
        check_dtypes(self.previous.preprocessing, spec)  # ids of another type cannot be matched: refused now

    @property
    def step(self) -> int:
        """The step the new model starts from: the previous model's, or 0 with `restart_schedule`."""
        return 0 if self.restart_schedule else self.previous.step

    def apply(self, model: JointModel, ftrl, adagrad, usage, step: tf.Variable, ftrl_config) -> dict:
        """Assign the carried values to the built model's variables, optimizer slots, usage counts and step; the
        record of what was carried and what started fresh (and why)."""
        previous = self.previous
        saved = previous.saved
        paths = object_paths(model)
        record = {"from": os.path.abspath(previous.directory), "checkpoint": previous.checkpoint,
                  "step": self.step, "carried": {}, "fresh": {}, "tables": {},
                  "dropped": []}
        read: set[str] = set()
        sources: dict[str, RowSource | str] = {}
        for layer in [t for t in model.embedding_tables if t.trainable]:
            name, path = model.table_name(layer), paths[id(layer)] + "/embeddings"
            label = paths[id(layer)].removeprefix("model/")
            key = saved.value_key(saved.node(path))
            before = saved.shapes[key] if key else None
            if before is None:
                outcome = "not in the previous model"
            elif before[1] != layer.dim:
                outcome = f"its dimension changed ({before[1]} -> {layer.dim})"
            else:
                if name not in sources:
                    sources[name] = self._row_source(model, name, before[0])
                outcome = sources[name]
            if not isinstance(outcome, str):
                outcome = self._carry_table(layer, path, outcome, saved, ftrl, usage, ftrl_config)
            if isinstance(outcome, str):
                record["fresh"][label] = outcome
                continue
            read.add(path)
            record["carried"][label] = sources[name].how
            record["tables"][label] = outcome
        in_parts = set()
        inputs = model.part_inputs()
        for key, part in model.dense_parts().items():
            variables = part.trainable_variables
            in_parts.update(id(v) for v in variables)
            if not variables:
                continue
            outcome = self._carry_part(key, paths[id(part)], variables, paths, saved, adagrad, inputs)
            label = paths[id(part)].removeprefix("model/")
            if isinstance(outcome, str):
                record["fresh"][label] = outcome
            else:
                record["carried"][label], done = outcome
                read.update(done)
        tables = {id(v) for t in model.embedding_tables for v in t.variables}
        for variable in model.trainable_variables:  # anything else: on its own, by place and shape
            if id(variable) in in_parts or id(variable) in tables:
                continue
            path = paths[id(variable)]
            outcome = self._carry_variable(path, variable, saved, adagrad)
            if isinstance(outcome, str):
                record["fresh"][path.removeprefix("model/")] = outcome
            else:
                record["carried"][path.removeprefix("model/")] = "whole"
                read.add(path)
        record["dropped"] = dropped_parts(saved, read)
        step.assign(record["step"])
        return record

    # ---- tables ----
    def _row_source(self, model: JointModel, name: str, previous_rows: int) -> RowSource | str:
        """Where the rows of table `name` (`previous_rows` rows in the previous model) come from, or why it starts
        fresh."""
        table, previous = self.spec.tables[name], self.previous
        shared = [f for f in table.features if f in previous.features]
        if not shared:
            return "its features are new"
        if table.vocabulary.source == "data":
            if name not in previous.preprocessing.vocabularies:
                return "the previous table was not a fitted vocabulary"
            return self._by_id(model.encoder.lookups[name], previous.preprocessing.vocabularies[name], previous_rows)
        declared = ("vocabulary", "transform")
        changed = [f for f in shared if any(self.features[f].get(k) != previous.features[f].get(k) for k in declared)]
        if changed:
            return f"the vocabulary or transform of {', '.join(changed)} changed"
        rows = model.encoder.tables[name].num_rows
        if rows != previous_rows:
            return f"its row count changed ({previous_rows} -> {rows})"
        return RowSource(np.arange(rows, dtype=np.int64), np.zeros(rows, bool), "row by row")

    @staticmethod
    def _by_id(lookup: IdLookup, before: list, previous_rows: int) -> RowSource:
        """Rows by id: each id of `lookup`'s vocabulary from the row the previous lookup (vocabulary `before`, its
        OOV rows the rest of `previous_rows`: at least one, the spec's rule) gave it: its own, or for a new id the
        OOV row it read; the OOV rows by position when their number is unchanged."""
        oov, before_oov = lookup.oov_buckets, previous_rows - len(before)
        rows = np.full(lookup.rows, -1, np.int64)
        new_ids = np.zeros(lookup.rows, bool)
        if before_oov == oov:
            rows[:oov] = np.arange(oov)
        if lookup.vocabulary:
            ids = tf.constant(lookup.vocabulary, tf.string if lookup.dtype_name == "string" else tf.int64)
            old = IdLookup(lookup.dtype_name, before, before_oov)(ids).numpy().astype(np.int64)
            rows[oov:] = old
            new_ids[oov:] = old < before_oov
        return RowSource(rows, new_ids, "by id")

    def _carry_table(self, layer: EmbeddingTable, path: str, source: RowSource, saved: SavedObjects, ftrl,
                     usage, ftrl_config) -> dict:
        """Assign one table's carried rows (its saved variable at `path`), shard by shard, with their FTRL slots
        and usage counts; the counts of rows carried."""
        node = saved.node(path)
        key = saved.value_key(node)
        slots = {slot: saved.slot_key("ftrl", node, slot) for slot in ("accumulator", "linear")}
        take = source.rows >= 0
        known = take & ~source.new_ids
        first = 0
        for shard in shards(layer.embeddings):
            end = first + int(shard.shape[0])
            rows, carry, keep = source.rows[first:end], take[first:end], known[first:end]
            weights = shard.numpy()
            weights[carry] = saved.read_rows(key, rows[carry])
            accumulator = ftrl.get_slot(shard, "accumulator")
            linear = ftrl.get_slot(shard, "linear")
            acc, lin = accumulator.numpy(), linear.numpy()
            if slots["accumulator"] and slots["linear"]:
                acc[keep] = saved.read_rows(slots["accumulator"], rows[keep])
                lin[keep] = saved.read_rows(slots["linear"], rows[keep])
            else:  # the previous table was never updated: every carried row gets the slots holding its values
                keep = np.zeros_like(keep)
            fresh_slots = carry & ~keep
            lin[fresh_slots] = ftrl_linear_holding(weights[fresh_slots], acc[fresh_slots], ftrl_config)
            shard.assign(weights)
            accumulator.assign(acc)
            linear.assign(lin)
            first = end
        counts_key = f"{USAGE}/counts/{layer.name}{VALUE}"
        if layer.name in usage.counts and counts_key in saved.shapes:
            counts = np.zeros(layer.num_rows, np.int64)
            counts[known] = saved.read_rows(counts_key, source.rows[known])
            usage.counts[layer.name].assign(counts)
        return {"rows": layer.num_rows, "carried": int(known.sum()), "new_ids_from_oov": int((take & ~known).sum()),
                "fresh": int((~take).sum())}

    # ---- dense parts ----
    def _carry_part(self, key: str, path: str, variables: list[tf.Variable], paths: dict[int, str],
                    saved: SavedObjects, adagrad, inputs: dict) -> tuple[str, set[str]] | str:
        """Assign a dense part's variables and AdaGrad slots: ("whole" or how its input kernels were matched by
        field, the saved paths read), or why the part starts fresh.

        A kernel reading the concatenated fields (`JointModel.part_inputs`) whose fields changed is carried field
        by field when both models recorded their fields (part_fields.json): the rows of a field both hold with the same
        width are carried, a new field's rows start fresh. Every other variable must keep its shape.
        """
        before = saved.variables_under(path)
        if not before:
            return "not in the previous model"
        mine = {paths[id(v)].removeprefix(path + "/"): v for v in variables}
        layout_now, kernels = inputs.get(key, (None, []))
        layout_before = (self.previous.inputs or {}).get(key)
        matched = layout_now is not None and layout_before is not None
        by_field = {rel for rel, v in mine.items() if matched and any(v is k for k in kernels)
                    and layout_now != layout_before and before.get(rel, [None])[1:] == list(v.shape)[1:]}
        differ = sorted(f"{rel}: {before.get(rel)} -> {list(v.shape)}" for rel, v in mine.items()
                        if rel not in by_field and before.get(rel) != list(v.shape))
        differ += sorted(f"{rel}: {shape} -> none" for rel, shape in before.items() if rel not in mine)
        if differ:
            unmatched = "" if matched or not kernels else \
                " (the previous model recorded no part_fields.json: its input kernels could not be matched by field)"
            return "its shapes changed (" + "; ".join(differ[:4]) + (" ..." if len(differ) > 4 else "") + ")" \
                + unmatched
        rows = field_rows(layout_now, layout_before) if by_field else None
        for rel, variable in mine.items():
            node = saved.node(f"{path}/{rel}")
            targets = [(variable, saved.value_key(node))]
            slot_key = saved.slot_key("adagrad", node, "accumulator")
            if slot_key is not None:
                targets.append((adagrad.get_slot(variable, "accumulator"), slot_key))
            for target, key_ in targets:
                value = saved.read(key_)
                if rel in by_field:  # the fields both models read: their rows; a new field's stay fresh
                    fresh = target.numpy()
                    fresh[rows[0]] = value[rows[1]]
                    value = fresh
                target.assign(value)
        if not by_field:
            return "whole", {f"{path}/{rel}" for rel in mine}
        now, was = dict(layout_now), dict(layout_before)
        new = [n for n in now if n not in was or was[n] != now[n]]
        gone = [n for n in was if n not in now or was[n] != now[n]]
        how = "by input field" + (f"; new inputs fresh: {', '.join(new)}" if new else "") \
            + (f"; inputs dropped: {', '.join(gone)}" if gone else "")
        return how, {f"{path}/{rel}" for rel in mine}

    @staticmethod
    def _carry_variable(path: str, variable: tf.Variable, saved: SavedObjects, adagrad) -> None | str:
        """Assign one variable outside the dense parts and tables (and its AdaGrad slot) when the previous model
        saved one at the same place with the same shape; else why it starts fresh."""
        node = saved.node(path)
        key = saved.value_key(node)
        if key is None:
            return "not in the previous model"
        if list(saved.shapes[key]) != list(variable.shape):
            return f"its shape changed ({saved.shapes[key]} -> {list(variable.shape)})"
        variable.assign(saved.read(key))
        slot_key = saved.slot_key("adagrad", node, "accumulator")
        if slot_key is not None:
            adagrad.get_slot(variable, "accumulator").assign(saved.read(slot_key))
        return None


def object_paths(model: JointModel) -> dict[int, str]:
    """id(object) -> its path in a training checkpoint ("model/encoder/tables/user"), breadth first from the
    checkpoint's root as TensorFlow names them."""
    paths: dict[int, str] = {}
    queue = [(model, "model")]
    paths[id(model)] = "model"
    while queue:
        following = []
        for obj, path in queue:
            for name, child in tf.train.TrackableView.children(obj).items():
                if id(child) not in paths:
                    paths[id(child)] = f"{path}/{name}"
                    following.append((child, paths[id(child)]))
        queue = following
    return paths


def dropped_parts(saved: SavedObjects, read: set[str]) -> list[str]:
    """The parts of the previous model's (trainable) weights the new model did not take: their paths, grouped three
    attributes deep below the model ("teacher/towers/like", "encoder/tables/old_feature")."""
    groups = defaultdict(int)
    for key in saved.shapes:
        if not key.startswith("model/") or ".OPTIMIZER_SLOT" in key or not key.endswith(VALUE):
            continue
        path = key[:-len(VALUE)]
        if path not in read:
            groups["/".join(path.removeprefix("model/").split("/")[:3])] += 1
    return sorted(groups)


def describe(record: dict) -> str:
    """The lines a job prints about a warm start."""
    tables = record["tables"]
    carried = sum(t["carried"] for t in tables.values())
    new = sum(t["new_ids_from_oov"] for t in tables.values())
    lines = [f"warm start from {record['checkpoint']} (continuing at step {record['step']}): "
             f"{len(record['carried'])} parts carried ({len(tables)} tables: {carried:,} rows by id or row, "
             f"{new:,} new ids from their OOV row)"]
    lines += [f"  fresh: {name}: {why}" for name, why in sorted(record["fresh"].items())]
    if record["dropped"]:
        lines.append(f"  dropped (not in this model): {', '.join(record['dropped'])}")
    return "\n".join(lines)
