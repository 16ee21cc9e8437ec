"""`prerank evaluate --export DIR`: the metrics of `prerank evaluate`, scored by what is served.

The export is opened as TF Serving loads it (`opening.open_export`: the manifest, then the SavedModel with the
signatures the manifest lists), and every score comes from its own signatures, called as a client calls them
(`requests.call_signature`: raw columns, sequences right-padded, inputs checked): `fine_rank` gives the
teacher's task predictions, raw outputs, regression estimates and fused score; `pairwise` the student's
logit. The spec is the one the manifest names (refused if it changed since). The rows, the item catalog, the
K candidates sampled for each group (the same draws) and the metrics are those of `prerank evaluate` on a
checkpoint (`trainer.evaluation`: `predict_with`, `quality`, `consistency`, `strict_result`); only where the
scores come from differs. So the two agree to float rounding on an unpruned export, and differ by what pruning
changes on a pruned one (never-updated rows read zeros in the export, their initial values in the checkpoint).

An export without `pairwise` (a teacher-only model's) is evaluated on what it has: the teacher's metrics, with
a note that the student's and the consistency are left out. One without `fine_rank` cannot be (the teacher
is the reference of consistency, and every prerank export has it): an ExportError.

The result is written to BASE/<version>.evaluation.json, beside the version directory: a published version
is never written into (TF Serving may be serving it), and TF Serving ignores names that are not integers.
"""
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from serving.savedmodel.layout import MANIFEST, resolve_version_dir
from serving.savedmodel.opening import OpenedExport, export_spec, open_export
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import input_columns, serving_inputs
from trainer.data import corrupt
from trainer.api import evaluation_catalog
from trainer.data.catalog import ItemCatalog
from trainer.data.splits import resolve_data
from trainer.errors import ExportError
from trainer.evaluation.evaluate import evaluate_scorer
from trainer.files import write_json_atomic
from trainer.losses.groups import candidate_features
from trainer.spec.sides import user_columns
from trainer.spec.types import Spec

ROWS_PER_CALL = 4096  # candidate rows per signature call
EXPORT_EVALUATION_SUFFIX = ".evaluation.json"
TEACHER_ONLY_NOTE = "the export has no pairwise signature (a teacher-only model): student metrics and consistency " \
                    "are left out"


def evaluation_path(export_dir: str) -> str:
    """Where the evaluation of the version `export_dir` goes by default: BASE/<version>.evaluation.json."""
    return os.path.normpath(export_dir) + EXPORT_EVALUATION_SUFFIX


class ExportScorer:
    """Scores from an export's signatures: `fine_rank` for the teacher, `pairwise` for the student (if it has
    one), on each batch's rows and then on each group's candidates (user columns of the group's first row,
    every other column from the catalog), `rows_per_call` rows a call.

    Args:
      opened: the export (`opening.open_export`).
      spec: its spec (`opening.export_spec`).
      catalog: the item table candidates are sampled from (None: exposed rows only).
      rows_per_call: candidate rows per signature call.
    """

    def __init__(self, opened: OpenedExport, spec: Spec, catalog: ItemCatalog | None = None,
                 rows_per_call: int = ROWS_PER_CALL):
        self.spec, self.catalog, self.rows_per_call = spec, catalog, rows_per_call
        self.path, manifest, signatures = opened.path, opened.manifest, opened.loaded.signatures
        if "fine_rank" not in signatures:
            raise ExportError(f"{os.path.join(self.path, 'saved_model.pb')}: no fine_rank signature (it has "
                              f"{', '.join(sorted(signatures))}); evaluating an export needs the teacher's scores")
        self.fine_rank, self.pairwise = signatures["fine_rank"], signatures.get("pairwise")
        self.has_student = self.pairwise is not None
        self.labels = {label.name: label for label in spec.labels}
        self.student_task = manifest.get("student_task")
        outputs = set(self.fine_rank.structured_outputs)
        wanted = {"fused_score"} | {f"{t}{suffix}" for t in self.labels for suffix in ("", "_output")} | \
            {f"{t}_estimate" for t, label in self.labels.items() if label.type == "regression"}
        missing = sorted(wanted - outputs)
        if missing:
            raise ExportError(f"{os.path.join(self.path, 'saved_model.pb')}: fine_rank has no output(s) "
                              f"{', '.join(missing)}; exported by an earlier prerank? Export the model again")
        if self.has_student and "student_task" not in manifest:
            raise ExportError(f"{os.path.join(self.path, MANIFEST)}: no 'student_task'; exported by an earlier "
                              "prerank? Export the model again")
        self.all_columns = input_columns(spec, "all")
        self.student_columns = input_columns(spec, "user") + input_columns(spec, "item")
        self.users = user_columns(spec)

    def _call(self, features: dict, what: str) -> dict[str, np.ndarray]:
        """The signatures' scores of the rows of `features` (raw columns, ragged or padded)."""
        where = f"{self.path}: {{}} on {what}"
        teacher = call_signature(self.fine_rank, serving_inputs(features, self.all_columns), where.format("fine_rank"))
        out = {"teacher_score": teacher["fused_score"]}
        for task, label in self.labels.items():
            out[f"teacher/{task}"], out[f"raw/{task}"] = teacher[task], teacher[f"{task}_output"]
            if label.type == "regression":
                out[f"estimate/{task}"] = teacher[f"{task}_estimate"]
        if self.has_student:
            student = call_signature(self.pairwise, serving_inputs(features, self.student_columns),
                                     where.format("pairwise"))
            out["student_logit"] = student["logit"]
        return out

    def score(self, features: dict, first_rows: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Scores of the batch's rows, then of `items` [G, K] (catalog rows) for the groups whose first rows
        are `first_rows` [G], group after group (`trainer.evaluation.predict.Scorer`)."""
        parts = [self._call(features, "evaluation rows")]
        owners, flat = np.repeat(first_rows, items.shape[1]), items.reshape(-1)
        columns = [c.name for c in self.all_columns]
        for start in range(0, len(flat), self.rows_per_call):
            rows = slice(start, start + self.rows_per_call)
            candidates = candidate_features(features, tf.constant(owners[rows], tf.int32), self.catalog,
                                            tf.constant(flat[rows], tf.int64), self.users, columns)
            parts.append(self._call(candidates, "sampled candidates"))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate_export(path: str, data: str | list[str] | None = None, sampled: tuple[int, ...] = (0,),
                    items: str | list[str] | None = None, batch_size: int = 2048, max_batches: int | None = None,
                    seed: int = 0, skip_corrupt: bool = False, out: str | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Evaluate the export at `path` (a version directory, or a base directory: its newest version) with its
    own signatures, as `trainer.evaluate` evaluates a checkpoint, and write the result (JSON) to `out`
    (default: BASE/<version>.evaluation.json); the result. The other arguments are `trainer.evaluate`'s (the
    evaluation files, the numbers of sampled candidates, the item table's files, ...), with the same defaults:
    the spec is the one the export's manifest names."""
    opened = open_export(resolve_version_dir(path))
    return evaluate_opened(opened, data, sampled, items, batch_size, max_batches, seed, skip_corrupt, out, log)


def evaluate_opened(opened: OpenedExport, data: str | list[str] | None = None, sampled: tuple[int, ...] = (0,),
                    items: str | list[str] | None = None, batch_size: int = 2048, max_batches: int | None = None,
                    seed: int = 0, skip_corrupt: bool = False, out: str | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """`evaluate_export` of an export already opened (`opening.open_export`); the arguments as there."""
    export_dir, manifest = opened.path, opened.manifest
    spec = export_spec(manifest)
    data = resolve_data(data, spec, "eval", purpose="evaluation data")
    scorer = ExportScorer(opened, spec)  # an export that cannot be evaluated is refused before data is read
    if not scorer.has_student:
        log(f"note: {TEACHER_ONLY_NOTE}")
    skipped: dict[str, list[dict]] = {}
    if any(sampled) and scorer.has_student:
        if "catalog_id_feature" not in manifest:
            raise ExportError(f"{os.path.join(export_dir, MANIFEST)}: no 'catalog_id_feature'; exported by an "
                              "earlier prerank? Export the model again")
        scorer.catalog = evaluation_catalog(spec, items, data, manifest["catalog_id_feature"], skip_corrupt, log)
        skipped["catalog"] = scorer.catalog.skipped
    result = evaluate_scorer(scorer, data, batch_size, max_batches, tuple(sampled), seed=seed,
                             skip_corrupt=skip_corrupt)
    skipped["evaluation"] = corrupt.report(result.pop("skipped"), log, "evaluation: ")
    result = {"data": data, "export": export_dir, "version": manifest["version"],
              "checkpoint": manifest["checkpoint"], "pruned": manifest["pruned"], **result, "skipped": skipped}
    if not scorer.has_student:
        result["note"] = TEACHER_ONLY_NOTE
    write_json_atomic(out or evaluation_path(export_dir), result)
    return result
