"""What FTRL's L1 strength buys at export: rows pruned, embedding bytes saved, student AUC lost.

`measure` loads one trained model, prunes it as `prerank export` does, and
scores the pruned student on held-out data; `scripts/sweep_l1.py` trains one
model per L1 value and compares each against the unregularised, unpruned one.
Bytes are counted for every table (what the SavedModel carries) and for the
student's tables alone (what pre-ranking serving reads: user, context and item
features).
"""
from dataclasses import asdict, dataclass


from serving.savedmodel.prune import prune_model
from trainer.evaluation.metrics import auc
from trainer.evaluation.predict import predict
from trainer.spec.types import STUDENT_SIDES, Spec
from trainer.training.trained import load_trained


@dataclass(frozen=True)
class SweepPoint:
    l1: float
    auc: float  # student AUC of the trained (unpruned) model
    pruned_auc: float  # the same after pruning
    rows: int
    rows_pruned: int
    bytes_before: int  # every table
    bytes_after: int
    student_bytes_before: int  # the student's tables only
    student_bytes_after: int

    def as_dict(self) -> dict:
        return asdict(self)


def student_tables(spec: Spec) -> set[str]:
    """Labels (as in the pruning report) of the tables the student reads: its features' and augment tables."""
    return {f.embedding.table for f in spec.features_on(*STUDENT_SIDES) if f.embedding is not None}


def measure(spec: Spec, model_dir: str, data: str, l1: float) -> SweepPoint:
    """Prune the model of `model_dir` and score its student on `data` before and after."""
    model = load_trained(spec, model_dir, data)
    student_task = model.student_task
    before = predict(model, data)
    report = prune_model(model, model.checkpoint_path)
    after = predict(model, data)
    labels = before.labels[student_task]
    student = student_tables(spec)
    mine = [r for r in report if r.table in student or r.table.startswith("augment/")]
    return SweepPoint(
        l1=l1, auc=auc(labels, before.student_logit), pruned_auc=auc(labels, after.student_logit),
        rows=sum(r.rows for r in report), rows_pruned=sum(r.rows - r.kept for r in report),
        bytes_before=sum(r.bytes_before for r in report), bytes_after=sum(r.bytes_after for r in report),
        student_bytes_before=sum(r.bytes_before for r in mine),
        student_bytes_after=sum(r.bytes_after for r in mine))


def sweep_table(points: list[SweepPoint]) -> str:
    """The sweep against its first point (the unregularised baseline): AUC lost and bytes saved."""
    base = points[0]
    lines = [f"{'L1':>8}{'AUC':>9}{'pruned':>9}{'lost':>9}{'rows pruned':>13}{'all bytes':>12}{'saved':>8}"
             f"{'student bytes':>15}{'saved':>8}"]
    for p in points:
        lines.append(f"{p.l1:>8g}{p.auc:>9.4f}{p.pruned_auc:>9.4f}{base.auc - p.pruned_auc:>9.4f}"
                     f"{p.rows_pruned / p.rows:>13.1%}{p.bytes_after:>12,}{1 - p.bytes_after / base.bytes_before:>8.1%}"
                     f"{p.student_bytes_after:>15,}{1 - p.student_bytes_after / base.student_bytes_before:>8.1%}")
    return "\n".join(lines)


def best_point(points: list[SweepPoint], max_auc_loss: float = 0.002, min_saving: float = 0.4) -> SweepPoint | None:
    """The strongest L1 meeting both bars on the student's tables, or None."""
    base = points[0]
    good = [p for p in points if base.auc - p.pruned_auc <= max_auc_loss
            and 1 - p.student_bytes_after / base.student_bytes_before >= min_saving]
    return max(good, key=lambda p: p.l1) if good else None


