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

Two opt-in rules drop more rows (`PruneRules`): by usage, rows that training read fewer than
`rows_below` times (the checkpoint's usage counts, `trainer.training.usage`) are dropped and their ids read the
table's learned out-of-vocabulary row, the row an id unknown to the vocabulary reads (with several OOV rows,
the one the id would hash to); by norm, rows whose L2 norm is below `norm_below` read the zero row (they
differ from it by less than that). A table with no OOV row (hashed, bucketized) and a frozen teacher's
tables (not counted in this training) are not pruned by usage; a checkpoint without usage counts (trained
before they existed, or resumed from such a one) refuses usage pruning.

The kept rows are stored in the export's embedding format (`serving.savedmodel.quantize`: float32 as trained,
float16, or int8 with a per-row float16 scale and offset), dequantized at lookup after the index; the
compact-or-plain choice counts the format's bytes a row.
"""
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from serving.savedmodel.quantize import FLOAT32_MAX_ROWS, dequantize, dequantize_rows, quantize, row_bytes, table_format
from trainer.errors import ConfigError, ExportError
from trainer.layers.embedding import EmbeddingTable
from trainer.layers.encoder import IdLookup
from trainer.models.joint import JointModel
from trainer.training.layout import teacher_dir
from trainer.training.optimizers import create_slots, make_ftrl
from trainer.training.run_record import recorded_config
from trainer.training.trained import latest_checkpoint, teacher_objects
from trainer.training.usage import read_counts

ZERO_ROW = 0  # compact row every pruned row maps to
# why a row is not stored (TablePlan.reason)
KEPT, NEVER_UPDATED, ZERO, RARE, SMALL_NORM = range(5)


@dataclass(frozen=True)
class PruneRules:
    """The opt-in pruning rules (None: off). rows_below: rows read fewer times in training read the table's OOV
    row instead; norm_below: rows of a smaller L2 norm read the zero row."""

    rows_below: int | None = None
    norm_below: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def prune_rules(rows_below: str | int | None = None, norm_below: str | float | None = None) -> PruneRules:
    """The rules from option values (text as typed, or numbers); ConfigError naming the option for a value that
    is not a positive integer (--prune-rows-below) or a positive finite number (--prune-norm-below)."""
    rows = norm = None
    if rows_below is not None:
        try:
            rows = int(str(rows_below).strip())
        except ValueError:
            rows = None
        if rows is None or rows < 1 or isinstance(rows_below, float):
            raise ConfigError.single("--prune-rows-below", "", "expected a positive integer (rows read fewer times "
                                     f"in training are dropped), got {rows_below!r}")
    if norm_below is not None:
        try:
            norm = float(str(norm_below).strip())
        except ValueError:
            norm = None
        if norm is None or not np.isfinite(norm) or norm <= 0:
            raise ConfigError.single("--prune-norm-below", "", "expected a positive number (rows of a smaller L2 "
                                     f"norm are dropped), got {norm_below!r}")
    return PruneRules(rows, norm)


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
    rare_rows: int = 0  # read fewer than PruneRules.rows_below times in training: they read the OOV row
    small_norm_rows: int = 0  # L2 norm below PruneRules.norm_below: they read the zero row
    usage_note: str = ""  # why usage pruning left the table alone, if it was asked for

    def rule_bytes(self, rows: int) -> int:
        """Bytes `rows` dropped rows save: their stored rows, in a compact table (a plain one stores every row)."""
        return rows * self.row_bytes if self.compact else 0

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
                "bytes_after": self.bytes_after, "rare_bytes": self.rule_bytes(self.rare_rows),
                "small_norm_bytes": self.rule_bytes(self.small_norm_rows)}


class PrunedTable(tf.keras.layers.Layer):
    """Pruned embeddings: rows -> index[rows] -> compact rows (row 0 is zeros); without an index, a plain
    table whose pruned rows are zero. `stored` holds the rows as `quantize.quantize` stores them: "values"
    (float32, float16 or int8) and, for int8, each row's "scale" and "offset", kept side by side in one
    [rows, 2] float16 variable (`scale_offset`: one gather a lookup instead of two); a lookup gathers them and
    dequantizes (`quantize.dequantize_rows`)."""

    def __init__(self, stored: dict[str, np.ndarray], index: np.ndarray | None, **kwargs):
        super().__init__(**kwargs)
        values = stored["values"]
        self.dim = values.shape[1]
        self.num_rows = len(index) if index is not None else len(values)
        self.values = tf.Variable(values, trainable=False, name="values")
        self.scale_offset = tf.Variable(np.stack([stored["scale"], stored["offset"]], axis=1), trainable=False,
                                        name="scale_offset") if "scale" in stored else None
        self.index = None if index is None else tf.Variable(index.astype(np.int32), trainable=False, name="index")

    def stored_variables(self) -> dict[str, tf.Variable]:
        """The variables holding the table ("values", "index", "scale_offset"; those it has)."""
        named = {"values": self.values, "index": self.index, "scale_offset": self.scale_offset}
        return {k: v for k, v in named.items() if v is not None}

    def call(self, rows: tf.Tensor) -> tf.Tensor:
        if isinstance(rows, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self.call, rows)
        rows = rows if self.index is None else tf.gather(self.index, rows)
        if self.scale_offset is None:
            return dequantize_rows(tf.gather(self.values, rows))
        scale_offset = tf.gather(self.scale_offset, rows)
        return dequantize_rows(tf.gather(self.values, rows), scale_offset[..., 0], scale_offset[..., 1])


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
    """What pruning does to one table: its trained values, why each row is not stored (`reason`: KEPT, or
    NEVER_UPDATED, ZERO, RARE, SMALL_NORM), the row each row reads (`reads`: itself, its OOV row, or -1 for the
    zero row), the rows FTRL updated (None: unknown, no optimizer state), and a note on usage pruning."""

    values: np.ndarray
    reason: np.ndarray
    reads: np.ndarray
    updated: np.ndarray | None
    usage_note: str = ""

    @property
    def keep(self) -> np.ndarray:
        return self.reason == KEPT

    def count(self, reason: int) -> int:
        return int(np.sum(self.reason == reason))

    def served(self) -> np.ndarray:
        """[rows, dim]: what each row reads in the pruned export (before the embedding format rounds it)."""
        return np.where((self.reads >= 0)[:, None], self.values[np.maximum(self.reads, 0)], 0.0).astype(np.float32)


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


def table_lookup(model: JointModel, slot: TableSlot) -> IdLookup | None:
    """The id lookup whose rows index the table (an augment table's: its feature's table's); None: bucketized."""
    encoder = model.teacher_encoder if slot.label.startswith("teacher/") else model.encoder
    if slot.label.startswith("augment/"):
        return encoder.lookups.get(model.augment_features[slot.key].embedding.table)
    return encoder.lookups.get(slot.key)


def oov_rows_read(lookup: IdLookup) -> np.ndarray | None:
    """[rows]: the OOV row each row's id would read were it unknown to the vocabulary (the OOV rows: themselves);
    None for a table without OOV rows (hashing)."""
    if lookup.oov_rows == 0:
        return None
    k, vocabulary = lookup.oov_rows, list(lookup.vocabulary)
    if k == 1 or not vocabulary:
        return np.concatenate([np.arange(k), np.zeros(len(vocabulary), np.int64)])
    # an id the vocabulary does not hold: the probe hashes every real id among the OOV rows as the real
    # lookup hashes an unknown one (the hash depends on the id alone)
    absent = max(vocabulary) + 1 if lookup.dtype_name == "int64" else "\x00" * (max(map(len, vocabulary)) + 1)
    probe = IdLookup(lookup.dtype_name, [absent], k)
    rows = probe(tf.constant(vocabulary, tf.string if lookup.dtype_name == "string" else tf.int64)).numpy()
    return np.concatenate([np.arange(k), rows.astype(np.int64)])


def check_counted(checkpoint_path: str, rules: PruneRules) -> tuple[dict[str, np.ndarray], int]:
    """The checkpoint's usage counts (`usage.read_counts`); ExportError when it has none, or counts that miss
    steps (resumed from a checkpoint trained before counting existed)."""
    read = read_counts(checkpoint_path)
    if read is None:
        raise ExportError(f"{checkpoint_path}: no usage counts (the model was trained before training counted "
                          f"them): --prune-rows-below {rules.rows_below} cannot be applied; export without it, or "
                          "retrain")
    counts, counted_from = read
    if counted_from > 0:
        raise ExportError(f"{checkpoint_path}: usage counts cover only the steps from {counted_from} (resumed from a "
                          f"checkpoint trained before counting existed): --prune-rows-below {rules.rows_below} "
                          "would drop rows used before; export without it, or retrain")
    return read


def _usage_counts(model: JointModel, slots: dict[str, TableSlot], checkpoint_path: str,
                  rules: PruneRules) -> dict[str, np.ndarray]:
    """Reads per row of every table training counted, by label (`check_counted`'s errors)."""
    counts, _ = check_counted(checkpoint_path, rules)
    return {label: counts[slot.layer.name] for label, slot in slots.items()
            if isinstance(slot.layer, EmbeddingTable) and slot.layer.trainable and slot.layer.name in counts}


def prune_plan(model: JointModel, checkpoint_path: str, rules: PruneRules = PruneRules()) -> dict[str, TablePlan]:
    """The plan of every table, by report label: never-updated and all-zero rows dropped, and the `rules`."""
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
    counts = _usage_counts(model, slots, checkpoint_path, rules) if rules.rows_below is not None else {}
    plan = {}
    for label, v in values.items():
        reason, note = np.full(len(v), KEPT, np.int8), ""
        reads = np.arange(len(v))
        if rules.rows_below is not None:
            lookup = table_lookup(model, slots[label])
            oov = oov_rows_read(lookup) if lookup is not None else None
            if label not in counts:
                note = "not counted (a frozen teacher's table)"
            elif oov is None:
                note = "no OOV row (hashed or bucketized ids)"
            else:
                rare = counts[label] < rules.rows_below
                rare[:lookup.oov_rows] = False  # the OOV rows are what rare ids read
                reason[rare], reads[rare] = RARE, oov[rare]
        free = reason == KEPT
        if label in updated:
            reason[free & ~updated[label]] = NEVER_UPDATED
        reason[(reason == KEPT) & ~np.any(v != 0, axis=1)] = ZERO
        if rules.norm_below is not None:
            reason[(reason == KEPT) & (np.linalg.norm(v, axis=1) < rules.norm_below)] = SMALL_NORM
        reads = np.where(reason == RARE, reads, np.arange(len(v)))
        reads = np.where(reason[reads] == KEPT, reads, -1)  # a row dropped, or reading a dropped OOV row: zeros
        plan[label] = TablePlan(v, reason, reads, updated.get(label), note)
    return plan


def apply_pruning(model: JointModel, checkpoint_path: str, rules: PruneRules = PruneRules()) -> None:
    """Set every table in place to what the pruned export reads for each row (dropped rows zero, rare rows their
    OOV row): the unpruned model with the pruned model's treatment of ids (the reference it must equal)."""
    slots = table_slots(model)
    for label, p in prune_plan(model, checkpoint_path, rules).items():
        slots[label].layer.embeddings.assign(p.served())


def round_tables(model: JointModel, embeddings: str, float32_max_rows: int = FLOAT32_MAX_ROWS) -> None:
    """Set every table's values in place to what an export in format `embeddings` stores for them,
    dequantized (small tables stay float32: `quantize.table_format`): the in-memory model an export's signatures
    must equal. Rows are stored one by one, so a row gets the same values in a compact table as in the full one."""
    for label, slot in table_slots(model).items():
        table = slot.layer.embeddings
        fmt = table_format(embeddings, int(table.shape[0]), float32_max_rows)
        if fmt != "float32":
            table.assign(dequantize(quantize(table.numpy(), fmt, label)))


def prune_model(model: JointModel, checkpoint_path: str, embeddings: str = "float32", prune: bool = True,
                rules: PruneRules = PruneRules(), float32_max_rows: int = FLOAT32_MAX_ROWS) -> list[TablePruning]:
    """Replace every embedding table of `model` by a `PrunedTable` in place, its rows stored in the format
    `embeddings` (tables of at most `float32_max_rows` rows: float32, `quantize.table_format`); the report, one
    entry a table. `prune=False` keeps every row as trained (only the format changes; `rules` need pruning)."""
    slots = table_slots(model)
    if prune:
        plans = prune_plan(model, checkpoint_path, rules)
    else:
        if rules != PruneRules():
            raise ConfigError.single("--no-prune", "", "--prune-rows-below and --prune-norm-below prune: not with "
                                     "--no-prune")
        values = {label: slot.layer.embeddings.numpy() for label, slot in slots.items()}
        plans = {label: TablePlan(v, np.full(len(v), KEPT, np.int8), np.arange(len(v)), None)
                 for label, v in values.items()}
    report = []
    for label, p in plans.items():
        slot = slots[label]
        kept_rows = np.flatnonzero(p.keep)
        rows, dim = p.values.shape
        fmt = table_format(embeddings, rows, float32_max_rows)
        layout = TablePruning(slot.label, rows, dim, p.count(ZERO), p.count(NEVER_UPDATED), len(kept_rows),
                              fmt, 0.0, p.count(RARE), p.count(SMALL_NORM), p.usage_note)
        served = p.served()
        if layout.compact:
            compact = np.full(rows, ZERO_ROW, np.int32)
            compact[kept_rows] = np.arange(1, len(kept_rows) + 1, dtype=np.int32)
            index = np.where(p.reads >= 0, compact[np.maximum(p.reads, 0)], ZERO_ROW).astype(np.int32)
            values = np.concatenate([np.zeros((1, dim), np.float32), p.values[kept_rows]])
        else:
            values, index = served, None
        stored = quantize(values, fmt, slot.label)
        read_back = dequantize(stored)
        error = float(np.max(np.abs((read_back if index is None else read_back[index]) - served), initial=0.0))
        slot.holder[slot.key] = PrunedTable(stored, index, name=f"pruned_{slot.label.replace('/', '_')}")
        report.append(TablePruning(**{**asdict(layout), "max_abs_error": error}))
    return report


def report_table(report: list[TablePruning]) -> str:
    """A text table of the pruning report (bytes before: float32 as trained; after: as stored), with totals; the
    rare and small-norm columns (rows, and bytes they save) when a rule dropped rows or usage pruning was asked."""
    rules = any(r.rare_rows or r.small_norm_rows or r.usage_note for r in report)
    extra = f"{'rare':>9}{'saved':>11}{'small':>9}{'saved':>11}" if rules else ""
    lines = [f"{'table':<24}{'rows':>9}{'kept':>9}{'zero':>9}{'unseen':>9}{extra}{'bytes before':>14}{'after':>12}"
             f"  {'layout':<9}{'format':<9}max |error|"]

    def rule_cells(rare: int, rare_bytes: int, small: int, small_bytes: int) -> str:
        return f"{rare:>9}{rare_bytes:>11,}{small:>9}{small_bytes:>11,}" if rules else ""

    for r in report:
        cells = rule_cells(r.rare_rows, r.rule_bytes(r.rare_rows), r.small_norm_rows, r.rule_bytes(r.small_norm_rows))
        lines.append(f"{r.table:<24}{r.rows:>9}{r.kept:>9}{r.zero_rows:>9}{r.never_updated:>9}{cells}"
                     f"{r.bytes_before:>14,}{r.bytes_after:>12,}  {'compact' if r.compact else 'plain':<9}"
                     f"{r.embeddings:<9}{r.max_abs_error:.3g}{'  usage: ' + r.usage_note if r.usage_note else ''}")
    before, after = sum(r.bytes_before for r in report), sum(r.bytes_after for r in report)
    total = rule_cells(sum(r.rare_rows for r in report), sum(r.rule_bytes(r.rare_rows) for r in report),
                       sum(r.small_norm_rows for r in report), sum(r.rule_bytes(r.small_norm_rows) for r in report))
    lines.append(f"{'total':<24}{sum(r.rows for r in report):>9}{sum(r.kept for r in report):>9}"
                 f"{sum(r.zero_rows for r in report):>9}{sum(r.never_updated for r in report):>9}{total}"
                 f"{before:>14,}{after:>12,}  ({1 - after / max(before, 1):.1%} smaller)")
    return "\n".join(lines)
