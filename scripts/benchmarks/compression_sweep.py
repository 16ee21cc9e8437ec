"""What each way of storing the tables costs and saves, measured on the exports themselves.

One trained model is exported several times (`Variant`: float32 unpruned, float32 zero-pruned, float16, int8 on
every table, int8 with the small tables float32, and that with usage pruning at a few thresholds; student-only
exports of some); each export's student is scored through its own SavedModel (`evaluate_export`: the `pairwise`
signature on the evaluation rows; a student-only variant scores as the full export of the same tables, so it is
only weighed), and its student tables' bytes are read from its pruning report (the rows as stored, with the
int32 index; unpruned: rows x dim x 4). `latency` times the `prerank` and `user_embedding` signatures of two
exports, calls alternating, so that both see the same machine load. `scripts/sweep_compression.py` runs it.
"""
import os
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from benchmarks.l1_sweep import student_tables
from benchmarks.serving_bench import Latency, candidate_inputs, measure_pair, user_inputs
from serving.savedmodel.evaluation import evaluate_export
from serving.savedmodel.export import ExportResult, export_model
from serving.savedmodel.prune import PruneRules, table_slots
from serving.savedmodel.quantize import FLOAT32_MAX_ROWS
from serving.savedmodel.requests import check_inputs
from trainer.data.catalog import build_catalog
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.spec.types import Spec
from trainer.tables import text_table
from trainer.training.trained import load_trained


@dataclass(frozen=True)
class Variant:
    name: str
    embeddings: str
    prune: bool
    rows_below: int | None = None  # usage pruning (`PruneRules.rows_below`)
    float32_max_rows: int = FLOAT32_MAX_ROWS  # tables this small stay float32 (`quantize.table_format`)
    student_only: bool = False  # weighed only: its student scores as the full export with the same tables


USAGE_THRESHOLDS = (2, 5, 10)
VARIANTS = (Variant("float32 unpruned", "float32", False), Variant("float32 zero-pruned", "float32", True),
            Variant("float16 zero-pruned", "float16", True),
            Variant("int8, every table", "int8", True, float32_max_rows=0),
            Variant("int8 zero-pruned", "int8", True),
            *(Variant(f"int8, rows read < {n} dropped", "int8", True, n) for n in USAGE_THRESHOLDS),
            Variant("student-only float32 unpruned", "float32", False, student_only=True),
            *(Variant(f"student-only int8, rows read < {n} dropped", "int8", True, n, student_only=True)
              for n in USAGE_THRESHOLDS[1:]))


@dataclass(frozen=True)
class Point:
    variant: str
    version: int
    student_auc: float | None  # through the export's pairwise signature (None: student-only, not scored)
    student_bytes: int  # the student's tables as the export stores them
    all_bytes: int  # every table
    variables_bytes: int  # the SavedModel's variables/ on disk
    max_abs_error: float  # largest |stored row - trained row| over the student's tables

    def as_dict(self) -> dict:
        return asdict(self)


def student_labels(spec: Spec, labels: list[str]) -> list[str]:
    """The pruning report's labels of the tables the student reads (its features' and the augment tables)."""
    mine = student_tables(spec)
    return [label for label in labels if label in mine or label.startswith("augment/")]


def trained_table_bytes(spec: Spec, model_dir: str, data: str) -> dict[str, int]:
    """Bytes of every table as trained (float32), by report label."""
    model = load_trained(spec, model_dir, data)
    return {label: int(np.prod(slot.layer.embeddings.shape)) * 4 for label, slot in table_slots(model).items()}


def export_variant(spec: Spec, model_dir: str, base: str, variant: Variant, warmup_data: str) -> ExportResult:
    return export_model(spec, model_dir, base, sample_data=warmup_data, prune=variant.prune,
                        measure_unpruned=False, embeddings=variant.embeddings, log=lambda *_: None,
                        rules=PruneRules(variant.rows_below), float32_max_rows=variant.float32_max_rows,
                        student_only=variant.student_only)


def measure_export(spec: Spec, variant: Variant, result: ExportResult, data: str, trained_bytes: dict) -> Point:
    """Score the export's student on `data` and count its bytes; `trained_bytes` are the float32 tables as
    trained (label -> bytes), for an export that stores them as they are (no pruning report)."""
    auc = None
    if not variant.student_only:
        metrics = evaluate_export(result.path, data, sampled=(0,), out=os.path.join(result.path + ".evaluation.json"),
                                  log=lambda *_: None)
        auc = float(metrics["student"]["auc"])
    stored = {r.table: r.bytes_after for r in result.pruning} or trained_bytes
    mine = student_labels(spec, list(stored))
    errors = [r.max_abs_error for r in result.pruning if r.table in mine]
    return Point(variant.name, result.version, auc, sum(stored[t] for t in mine),
                 sum(stored.values()), result.variables_bytes_after, max(errors, default=0.0))


def sweep_table(points: list[Point]) -> str:
    """Each export against the first (float32 unpruned): AUC lost, student bytes saved; variables/ bytes saved
    against the first export of the same kind (full or student-only)."""
    base = points[0]
    first = {}
    for p in points:
        first.setdefault(p.variant.startswith("student-only"), p)
    return text_table(
        ["export", "student AUC", "lost", "student table bytes", "saved", "all table bytes", "saved",
         "variables/ bytes", "saved", "max |row error|"],
        [[p.variant, "(not scored)" if p.student_auc is None else f"{p.student_auc:.5f}",
          "" if p.student_auc is None else f"{base.student_auc - p.student_auc:+.5f}", f"{p.student_bytes:,}",
          f"{1 - p.student_bytes / base.student_bytes:.1%}", f"{p.all_bytes:,}", f"{1 - p.all_bytes / base.all_bytes:.1%}",
          f"{p.variables_bytes:,}",
          f"{1 - p.variables_bytes / first[p.variant.startswith('student-only')].variables_bytes:.1%}",
          f"{p.max_abs_error:.2g}"] for p in points])


@dataclass(frozen=True)
class LatencyRow:
    signature: str
    rows: str
    baseline: Latency
    other: Latency
    max_diff: float  # |other - baseline| over the outputs: what the format changes


def latency(spec: Spec, baseline_dir: str, other_dir: str, data: str, candidates: int, reps: int) -> list[LatencyRow]:
    """p50 / p99 of `prerank` (1 user + `candidates` items) and `user_embedding` (1 user) in two exports, the
    calls alternating; real rows of `data`."""
    a, b = tf.saved_model.load(baseline_dir), tf.saved_model.load(other_dir)
    batch = next(iter(make_pipeline(spec, data, InputConfig(batch_size=256, shuffle_buffer=0))))
    catalog = build_catalog(spec, data)
    user = user_inputs(spec, batch["features"])
    cases = [("prerank", f"1 user + {candidates} items", {**user, **candidate_inputs(spec, catalog, candidates)}),
             ("user_embedding", "1 user", user)]
    rows = []
    for name, label, inputs in cases:
        first, second = a.signatures[name], b.signatures[name]
        tensors = check_inputs(first, inputs, f"benchmark {name} ({label})")
        diff = max(float(np.max(np.abs(first(**tensors)[k].numpy() - second(**tensors)[k].numpy())))
                   for k in first.structured_outputs)
        base, other = measure_pair(lambda: first(**tensors), lambda: second(**tensors), reps)
        rows.append(LatencyRow(name, label, base, other, diff))
    return rows


def latency_table(rows: list[LatencyRow], baseline: str, other: str) -> str:
    return text_table(["signature", "rows", f"{baseline} p50", "p99", f"{other} p50", "p99", "p50 ratio", "p99 ratio",
                       "max |diff|"],
                      [[r.signature, r.rows, f"{r.baseline.p50:.3f}", f"{r.baseline.p99:.3f}", f"{r.other.p50:.3f}",
                        f"{r.other.p99:.3f}", f"{r.other.p50 / r.baseline.p50:.2f}x",
                        f"{r.other.p99 / r.baseline.p99:.2f}x", f"{r.max_diff:.2g}"] for r in rows])
