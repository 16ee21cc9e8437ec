"""Prune embedding tables before export: keep only rows that carry information.

A row is pruned when it is all zero (FTRL's L1 makes many) or was never updated
in training (its id never appeared, so its values are only the initializer's).
FTRL's slots tell the two apart: a row whose accumulator still holds the initial
value everywhere and whose linear term is still zero was never updated.

Each table becomes a compact table of the kept rows behind an int32 index from
row (the id's row in the trained table) to compact row. Compact row 0 is a
shared zero row: every pruned row maps to it. A table where the index would
cost more bytes than the pruned rows save (small or dense tables) stays a
plain table with its pruned rows set to zero. A never-updated row therefore
reads zeros; in the trained model such a row held random initial values that
carried no information. A vocabulary table's OOV rows start at zero
(`trainer.layers.embedding.EmbeddingTable`'s `zero_rows`): never trained, they
read zeros in the checkpoint and the export alike; trained (rare ids, or
`model.id_dropout`), FTRL's slots show them updated and they are kept.

The kept rows are stored in the export's embedding format (`serving.savedmodel.quantize`: float32 as trained,
float16, or int8 with a per-row float16 scale and offset), dequantized at lookup after the index; the
compact-or-plain choice counts the format's bytes a row.
"""
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from serving.savedmodel.quantize import dequantize, dequantize_rows, quantize, row_bytes
from trainer.errors import ExportError
from trainer.layers.embedding import EmbeddingTable
from trainer.models.joint import JointModel
from trainer.training.layout import teacher_dir
from trainer.training.optimizers import create_slots, make_ftrl
from trainer.training.run_record import recorded_config
from trainer.training.trained import latest_checkpoint, teacher_objects

ZERO_ROW = 0  # compact row every pruned row maps to


@dataclass(frozen=True)
class TablePruning:
    """What pruning and the embedding format did to one table. bytes_before: the trained float32 table;
    bytes_after: the stored rows in the export's format (`quantize.row_bytes`) and the int32 index, if any."""

    table: str
    rows: int
    dim: int
    zero_rows: int  # updated in training, all zero now
    never_updated: int  # FTRL never updated the row (a frozen teacher's table: per the teacher's checkpoint)
    kept: int
    embeddings: str = "float32"  # the stored format (`quantize.FORMATS`)
    max_abs_error: float = 0.0  # max |stored row, dequantized - trained row| over the stored rows

    @property
    def bytes_before(self) -> int:
        return self.rows * self.dim * 4

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.dim, self.embeddings)

    @property
    def compact(self) -> bool:
        """True when a compact table plus index is smaller than the plain table (in the stored format)."""
        return (self.kept + 1) * self.row_bytes + self.rows * 4 < self.rows * self.row_bytes

    @property
    def bytes_after(self) -> int:
        return (self.kept + 1) * self.row_bytes + self.rows * 4 if self.compact else self.rows * self.row_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "compact": self.compact, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after}


class PrunedTable(tf.keras.layers.Layer):
    """Pruned embeddings: rows -> index[rows] -> compact rows (row 0 is zeros); without an index, a plain
    table whose pruned rows are zero. `stored` holds the rows as `quantize.quantize` stores them: "values"
    (float32, float16 or int8) and, for int8, each row's "scale" and "offset"; a lookup gathers them and
    dequantizes (`quantize.dequantize_rows`)."""

    def __init__(self, stored: dict[str, np.ndarray], index: np.ndarray | None, **kwargs):
        super().__init__(**kwargs)
        values = stored["values"]
        self.dim = values.shape[1]
        self.num_rows = len(index) if index is not None else len(values)
        self.values = tf.Variable(values, trainable=False, name="values")
        self.scale = tf.Variable(stored["scale"], trainable=False, name="scale") if "scale" in stored else None
        self.offset = tf.Variable(stored["offset"], trainable=False, name="offset") if "offset" in stored else None
        self.index = None if index is None else tf.Variable(index.astype(np.int32), trainable=False, name="index")

    def stored_variables(self) -> dict[str, tf.Variable]:
        """The variables holding the table ("values", "index", "scale", "offset"; those it has)."""
        named = {"values": self.values, "index": self.index, "scale": self.scale, "offset": self.offset}
        return {k: v for k, v in named.items() if v is not None}

    def call(self, rows: tf.Tensor) -> tf.Tensor:
        if isinstance(rows, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self.call, rows)
        rows = rows if self.index is None else tf.gather(self.index, rows)
        if self.scale is None:
            return dequantize_rows(tf.gather(self.values, rows))
        return dequantize_rows(tf.gather(self.values, rows), tf.gather(self.scale, rows), tf.gather(self.offset, rows))


@dataclass
class TableSlot:
    """Where a table lives in the model: `holder[key]` is the layer; `label` names it in reports."""

    holder: dict
    key: str
    label: str

    @property
    def layer(self) -> EmbeddingTable | PrunedTable:
        return self.holder[self.key]


def table_slots(model: JointModel) -> dict[str, TableSlot]:
    """Every embedding table of the model by its report label: "video", "teacher/video" (a student's frozen
    teacher), "augment/user"."""
    groups = [(model.encoder.tables, "")]
    if model.mode == "student":
        groups.append((model.teacher_encoder.tables, "teacher/"))
    if model.has_student and model.augmented:
        groups.append((model.augment_tables, "augment/"))
    return {prefix + k: TableSlot(holder, k, prefix + k) for holder, prefix in groups for k in holder}


@dataclass
class TablePlan:
    """What pruning keeps of one table: its trained values, the rows kept, the rows FTRL updated (None:
    unknown, no optimizer state)."""

    values: np.ndarray
    keep: np.ndarray
    updated: np.ndarray | None


def updated_rows(ftrl: tf.keras.optimizers.legacy.Optimizer, table: tf.Variable,
                 initial_accumulator: float) -> np.ndarray:
    """Bool [rows]: the rows FTRL ever updated (accumulator moved from its initial value, or linear term set)."""
    accumulator = ftrl.get_slot(table, "accumulator").numpy()
    linear = ftrl.get_slot(table, "linear").numpy()
    return ~((accumulator == np.float32(initial_accumulator)) & (linear == 0)).all(axis=1)


def _restore_ftrl_slots(objects: dict, tables: list[tf.Variable], ftrl_config, checkpoint_path: str):
    """An FTRL with slots for `tables`, restored from `checkpoint_path`; `objects` lay the tables out as that
    checkpoint has them (e.g. {"model": model}), so TensorFlow derives every slot's path from the objects."""
    ftrl = make_ftrl(ftrl_config)
    create_slots(ftrl, tables)
    tf.train.Checkpoint(**objects, ftrl=ftrl).restore(checkpoint_path).expect_partial()
    return ftrl


def _teacher_updated_rows(model: JointModel, slots: dict[str, TableSlot], values: dict[str, np.ndarray]) -> dict:
    """A distilled student's frozen teacher tables have no slots in its own checkpoint: their updated rows from
    the teacher's latest checkpoint, for the tables that checkpoint still holds exactly as the student has them."""
    teacher = teacher_dir(model.config)
    latest = latest_checkpoint(teacher) if teacher else None
    labels = [label for label in slots if label.startswith("teacher/")]
    if latest is None or not labels:
        return {}
    tables = [slots[label].layer.embeddings for label in labels]
    ftrl_config = recorded_config(teacher).model.ftrl
    # the tables' values come back from the teacher's checkpoint too; the student's are put back below
    ftrl = _restore_ftrl_slots(teacher_objects(model, tables_only=True), tables, ftrl_config, latest)
    out = {}
    for label, table in zip(labels, tables):
        if np.array_equal(table.numpy(), values[label]):
            out[label] = updated_rows(ftrl, table, ftrl_config.initial_accumulator)
        table.assign(values[label])  # the student's values stay, whatever the teacher's checkpoint holds now
    return out


def prune_plan(model: JointModel, checkpoint_path: str) -> dict[str, TablePlan]:
    """The plan of every table, by report label."""
    slots = table_slots(model)
    for slot in slots.values():
        if isinstance(slot.layer, PrunedTable):
            raise ExportError(f"table {slot.label} is already pruned")
    values = {label: slot.layer.embeddings.numpy() for label, slot in slots.items()}
    trained = [label for label, slot in slots.items() if slot.layer.trainable]
    ftrl = _restore_ftrl_slots({"model": model}, [slots[label].layer.embeddings for label in trained],
                               model.config.model.ftrl, checkpoint_path)
    initial = model.config.model.ftrl.initial_accumulator
    updated = {label: updated_rows(ftrl, slots[label].layer.embeddings, initial) for label in trained}
    updated.update(_teacher_updated_rows(model, slots, values))
    plan = {}
    for label, v in values.items():
        keep = np.any(v != 0, axis=1)
        if label in updated:
            keep &= updated[label]
        plan[label] = TablePlan(v, keep, updated.get(label))
    return plan


def zero_never_updated(model: JointModel, checkpoint_path: str) -> None:
    """Set never-updated rows to zero in place: the unpruned model with the pruned model's treatment of
    never-seen ids (the reference the pruned model must equal)."""
    slots = table_slots(model)
    for label, p in prune_plan(model, checkpoint_path).items():
        if p.updated is not None:
            slots[label].layer.embeddings.assign(np.where(p.updated[:, None], p.values, 0.0))


def round_tables(model: JointModel, embeddings: str) -> None:
    """Set every table's values in place to what an export in format `embeddings` stores for them,
    dequantized: the in-memory model an export's signatures must equal. Rows are stored one by one, so a row
    gets the same values in a compact table as in the full one."""
    if embeddings == "float32":
        return
    for label, slot in table_slots(model).items():
        table = slot.layer.embeddings
        table.assign(dequantize(quantize(table.numpy(), embeddings, label)))


def prune_model(model: JointModel, checkpoint_path: str, embeddings: str = "float32",
                prune: bool = True) -> list[TablePruning]:
    """Replace every embedding table of `model` by a `PrunedTable` in place, its rows stored in the format
    `embeddings`; the report, one entry a table. `prune=False` keeps every row as trained (only the format
    changes)."""
    slots = table_slots(model)
    if prune:
        plans = prune_plan(model, checkpoint_path)
    else:
        values = {label: slot.layer.embeddings.numpy() for label, slot in slots.items()}
        plans = {label: TablePlan(v, np.ones(len(v), bool), None) for label, v in values.items()}
    report = []
    for label, p in plans.items():
        slot = slots[label]
        kept_rows = np.flatnonzero(p.keep)
        rows, dim = p.values.shape
        never = int((~p.updated).sum()) if p.updated is not None else 0
        layout = TablePruning(slot.label, rows, dim, rows - len(kept_rows) - never, never, len(kept_rows),
                              embeddings)
        if layout.compact:
            index = np.full(rows, ZERO_ROW, np.int32)
            index[kept_rows] = np.arange(1, len(kept_rows) + 1, dtype=np.int32)
            values = np.concatenate([np.zeros((1, dim), np.float32), p.values[kept_rows]])
        else:
            values, index = np.where(p.keep[:, None], p.values, 0.0).astype(np.float32), None
        stored = quantize(values, embeddings, slot.label)
        error = float(np.max(np.abs(dequantize(stored) - values), initial=0.0))
        slot.holder[slot.key] = PrunedTable(stored, index, name=f"pruned_{slot.label.replace('/', '_')}")
        report.append(TablePruning(**{**asdict(layout), "max_abs_error": error}))
    return report


def report_table(report: list[TablePruning]) -> str:
    """A text table of the pruning report (bytes before: float32 as trained; after: as stored), with totals."""
    lines = [f"{'table':<24}{'rows':>9}{'kept':>9}{'zero':>9}{'unseen':>9}{'bytes before':>14}{'after':>12}"
             f"  {'layout':<9}{'format':<9}max |error|"]
    for r in report:
        lines.append(f"{r.table:<24}{r.rows:>9}{r.kept:>9}{r.zero_rows:>9}{r.never_updated:>9}"
                     f"{r.bytes_before:>14,}{r.bytes_after:>12,}  {'compact' if r.compact else 'plain':<9}"
                     f"{r.embeddings:<9}{r.max_abs_error:.3g}")
    before, after = sum(r.bytes_before for r in report), sum(r.bytes_after for r in report)
    lines.append(f"{'total':<24}{sum(r.rows for r in report):>9}{sum(r.kept for r in report):>9}"
                 f"{sum(r.zero_rows for r in report):>9}{sum(r.never_updated for r in report):>9}"
                 f"{before:>14,}{after:>12,}  ({1 - after / max(before, 1):.1%} smaller)")
    return "\n".join(lines)
