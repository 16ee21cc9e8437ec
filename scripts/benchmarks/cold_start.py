"""AUC on the cold-start rows: the evaluation rows whose user or item id a model has no row for.

`slices` marks the rows (`trainer.evaluation.cold_start.out_of_vocabulary`, with the vocabularies of one
reference model directory, so several models are compared on the same rows); `checkpoint_scores` scores a
model directory's checkpoint (`trainer.evaluation.predict.predict`) and `export_scores` an export's own
signatures (`fine_rank` for the teacher, `pairwise` for the student), both per row in file order;
`cold_start_table` prints each source's AUCs on every slice. `scripts/cold_start.py` is the command.
"""
from dataclasses import dataclass

import numpy as np

from serving.savedmodel.opening import open_export
from serving.savedmodel.requests import call_signature
from serving.savedmodel.warmup import signature_inputs
from trainer.config.derived import student_task
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.evaluation.cold_start import out_of_vocabulary, slice_aucs
from trainer.evaluation.predict import predict
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec.types import Spec
from trainer.training.layout import preprocessing_dir
from trainer.training.run_record import recorded_config
from trainer.training.trained import load_trained


@dataclass
class Scores:
    """One source's per-row outputs on the evaluation rows: labels and the scores AUC is taken of, keyed
    "teacher <task>" (each binary task's probability) and "student <task>" (the student's logit)."""

    source: str  # "MODEL_DIR (checkpoint)" or "EXPORT (export)"
    labels: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


def binary_tasks(spec: Spec) -> list[str]:
    return [label.name for label in spec.labels if label.type == "binary"]


def slices(spec: Spec, reference_dir: str, data: str | list[str], features: list[str]) -> dict[str, np.ndarray]:
    """Slice name -> bool [rows]: "all", "<feature> unseen" per feature (out of the reference model
    directory's vocabulary), and "any unseen" (any of them) when there are several."""
    fitted = Preprocessing.load(preprocessing_dir(reference_dir, recorded_config(reference_dir)))
    unseen = out_of_vocabulary(spec, fitted, data, features)
    n = len(next(iter(unseen.values())))
    out = {"all": np.ones(n, bool), **{f"{name} unseen": mask for name, mask in unseen.items()}}
    if len(features) > 1:
        out["any unseen"] = np.any(np.stack(list(unseen.values())), axis=0)
    return out


def _keyed(spec: Spec, task: str, labels: dict[str, np.ndarray], teacher: dict[str, np.ndarray],
           student: np.ndarray | None) -> tuple[dict, dict]:
    """Labels and scores under the keys of `Scores`."""
    keyed_labels, keyed_scores = {}, {}
    for t in binary_tasks(spec):
        keyed_labels[f"teacher {t}"], keyed_scores[f"teacher {t}"] = labels[t], teacher[t]
    if student is not None:
        keyed_labels[f"student {task}"], keyed_scores[f"student {task}"] = labels[task], student
    return keyed_labels, keyed_scores


def checkpoint_scores(spec: Spec, model_dir: str, data: str | list[str]) -> Scores:
    """The latest checkpoint of `model_dir` on every row of `data`."""
    model = load_trained(spec, model_dir, data)
    p = predict(model, data)
    student = p.student_logit if model.has_student else None
    return Scores(f"{model_dir} (checkpoint)", *_keyed(spec, model.student_task, p.labels, p.teacher, student))


def export_scores(spec: Spec, export: str, data: str | list[str], batch_size: int = 1024) -> Scores:
    """The export's signatures on every row of `data`: `fine_rank` (each task's probability) and `pairwise`
    (the student's logit), called as a client would (`requests.call_signature`)."""
    opened = open_export(export)
    signatures = opened.loaded.signatures
    task = student_task(recorded_config(opened.manifest["model_dir"]), spec)
    parts: dict[str, list[np.ndarray]] = {}
    config = InputConfig(batch_size=batch_size, shuffle_buffer=0, deterministic=True)
    for i, batch in enumerate(make_pipeline(spec, data, config)):
        n = int(batch["sample_weight"].shape[0])
        for t, label in batch["labels"].items():
            parts.setdefault(f"label/{t}", []).append(label.numpy())
        teacher = call_signature(signatures["fine_rank"], signature_inputs(spec, "fine_rank", batch["features"], n),
                                 f"{opened.path}: fine_rank on batch {i}")
        for t in binary_tasks(spec):
            parts.setdefault(f"teacher/{t}", []).append(teacher[t])
        if "pairwise" in signatures:
            student = call_signature(signatures["pairwise"], signature_inputs(spec, "pairwise", batch["features"], n),
                                     f"{opened.path}: pairwise on batch {i}")
            parts.setdefault("student", []).append(student["logit"])
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    labels = {k.split("/", 1)[1]: v for k, v in joined.items() if k.startswith("label/")}
    teacher = {k.split("/", 1)[1]: v for k, v in joined.items() if k.startswith("teacher/")}
    return Scores(f"{opened.path} (export)", *_keyed(spec, task, labels, teacher, joined.get("student")))


def cold_start_table(slice_rows: dict[str, np.ndarray], sources: list[Scores]) -> str:
    """A markdown table: per source and slice, the slice's rows and the AUC of every score."""
    keys = list(sources[0].scores) if sources else []
    lines = ["| source | slice | rows | " + " | ".join(f"{k} AUC" for k in keys) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for s in sources:
        for name, rows in slice_rows.items():
            if len(rows) != len(next(iter(s.labels.values()))):
                raise ValueError(f"{s.source}: {len(next(iter(s.labels.values())))} rows scored, the slices "
                                 f"have {len(rows)}")
            aucs = slice_aucs(s.labels, s.scores, rows)
            cells = " | ".join("n/a" if aucs.get(k) is None else f"{aucs[k]:.4f}" for k in keys)
            lines.append(f"| {s.source} | {name} | {int(rows.sum()):,} | {cells} |")
    return "\n".join(lines)
