"""`prerank verify-export`: check an export the way TF Serving would use it.

Reads the manifest and loads the SavedModel (`opening.open_export`: a missing,
garbled or foreign file is an ExportError naming it), lists its signatures (as
`saved_model_cli show --all` does, with the rule each input's values keep),
runs every warmup request through its signature (each signature must have
one, and none may be refused), and compares every signature's outputs with the
trained model's on a sample of evaluation data. The reference is the trained
checkpoint with each row set to what the export reads for it (`prune.apply_pruning`:
never-updated rows zero, and with the export's rules rare rows their OOV row,
small rows zero) and, for a float16 or int8 export, every row stored and
dequantized as the export stores it (`prune.round_tables`), so any difference
beyond TOLERANCE is an export error. Every stored row of the export, read back
from its variables and dequantized, must also lie within half a quantization
step of the checkpoint's row (`quantize.half_step`, computed from the
checkpoint's row; a pruned row reads zeros). Every call goes through
`requests.call_signature`.
"""
import os

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from serving.savedmodel.layout import MANIFEST, resolve_version_dir
from serving.savedmodel.opening import export_spec, open_export
from serving.savedmodel.prune import ZERO_ROW, PruneRules, apply_pruning, round_tables, table_slots
from serving.savedmodel.quantize import FORMATS, dequantize, half_step, table_format
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import fine_rank_outputs
from serving.savedmodel.warmup import read_warmup, replay_warmup, signature_inputs
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import ExportError
from trainer.evaluation import metrics
from trainer.spec.sides import user_columns
from trainer.training.trained import load_trained

TOLERANCE = 1e-5


@dataclass
class Verification:
    path: str
    signatures: str  # the saved_model_cli-style listing
    warmup: dict[str, int] = field(default_factory=dict)  # signature -> requests run
    max_diff: dict[str, float] = field(default_factory=dict)  # signature/output -> max |export - trained|
    rows: int = 0
    # "student click" / "teacher click" -> (AUC of the checkpoint as trained, AUC of the export) on the rows:
    # what pruning (never-updated rows read zeros) changes, as a metric
    auc: dict[str, tuple[float, float]] = field(default_factory=dict)
    embeddings: str = "float32"
    # table -> (max |stored row dequantized - checkpoint row|, values beyond half a quantization step)
    rows_checked: dict[str, tuple[float, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(d <= TOLERANCE for d in self.max_diff.values()) and \
            all(bad == 0 for _, bad in self.rows_checked.values())


def describe_signatures(loaded, manifest: dict | None = None) -> str:
    """Signatures with input and output names, dtypes and shapes, and the rules the export's manifest
    records (how many rows a signature's columns hold; the values each input takes), which its in-graph
    checks enforce."""
    rules, rows = (manifest or {}).get("input_rules", {}), (manifest or {}).get("row_rules", {})
    lines = []
    for name in sorted(loaded.signatures):
        fn = loaded.signatures[name]
        lines.append(f"signature_def['{name}']:")
        if name in rows:
            lines.append(f"  rows: {rows[name]}")
        lines.append("  inputs:")
        for key, spec in sorted(fn.structured_input_signature[1].items()):
            rule = f"  {rules[key]}" if key in rules else ""
            lines.append(f"    {key}: {spec.dtype.name} {_shape(spec.shape)}{rule}")
        lines.append("  outputs:")
        for key, spec in sorted(fn.structured_outputs.items()):
            lines.append(f"    {key}: {spec.dtype.name} {_shape(spec.shape)}")
    return "\n".join(lines)


def _shape(shape: tf.TensorShape) -> str:
    return "(" + ", ".join("-1" if d is None else str(d) for d in shape.as_list()) + ")"


def reference_outputs(model, signature: str, features: dict, candidates: int) -> dict[str, np.ndarray]:
    """What the trained model gives for `signature`'s outputs on the same rows."""
    rows = {k: v[:candidates] for k, v in features.items()}
    if signature == "user_embedding":
        u = model.user_vector(rows)
        return {"user_vector": u.numpy(), "logit_bias": np.full(len(u), model.similarity.bias.numpy())}
    if signature == "item_embedding":
        return {"item_vector": model.item_vector(rows).numpy()}
    if signature in ("pairwise", "prerank", "prerank_vectors"):
        if signature != "pairwise":  # row 0's user against every candidate
            users = set(user_columns(model.spec))
            rows = {k: (tf.gather(v, tf.zeros([candidates], tf.int32)) if k in users else v)
                    for k, v in rows.items()}
        out = model(rows)
        logit = out.student_logit.numpy()
        return {"logit": logit, "score": tf.sigmoid(logit).numpy()}
    return {k: v.numpy() for k, v in fine_rank_outputs(model, rows).items()}


def verify_export(path: str, data: str | list[str] | None = None, batches: int = 4,
                  batch_size: int = 256) -> Verification:
    """Verify the export at `path` (a version directory, or a base directory: its newest version)."""
    export_dir = resolve_version_dir(path)
    requests = read_warmup(export_dir)  # before the SavedModel: a garbled small file is named at once
    opened = open_export(export_dir)
    manifest, loaded = opened.manifest, opened.loaded
    result = Verification(export_dir, describe_signatures(loaded, manifest))
    result.warmup = replay_warmup(loaded.signatures, export_dir, requests)
    spec = export_spec(manifest)
    data = data or spec.data.eval or manifest["warmup_data"]  # the export's own warmup rows exist in any case
    model = load_trained(spec, manifest["model_dir"], data, checkpoint=manifest["checkpoint"])
    names = [n for n in loaded.signatures if n != "serving_default"]
    pipeline = make_pipeline(spec, data, InputConfig(batch_size=batch_size, shuffle_buffer=0))
    read = [batch for _, batch in zip(range(batches), pipeline)]
    scored = [n for n in ("pairwise", "fine_rank") if n in names]
    as_trained = [{n: reference_outputs(model, n, b["features"], _rows(b)) for n in scored} for b in read]
    if manifest["pruned"]:  # the reference from here on: each row reads what the export reads for it (dropped
        # rows zeros, rows dropped as rare their OOV row)
        apply_pruning(model, manifest["checkpoint"], PruneRules(**manifest.get("prune_rules") or {}))
    result.embeddings = _embeddings(export_dir, manifest)
    small = manifest.get("float32_max_rows", 0)  # exports before small tables stayed float32: none did
    result.rows_checked = check_stored_rows(model, loaded, result.embeddings, small)
    round_tables(model, result.embeddings, small)  # ... and every row is what the export stores, dequantized
    exported: list[dict] = []
    for i, batch in enumerate(read):
        features, n = batch["features"], _rows(batch)
        result.rows += n
        exported.append({})
        for name in names:
            inputs = signature_inputs(spec, name, features, n,  # prerank_vectors: the reference's item vectors
                                      lambda items: model.item_vector(items).numpy())
            got = call_signature(loaded.signatures[name], inputs, f"{export_dir}: {name} on batch {i} of {data}")
            exported[-1][name] = got
            want = reference_outputs(model, name, features, n)
            for key, value in want.items():
                diff = float(np.max(np.abs(got[key] - value))) if value.size else 0.0
                label = f"{name}/{key}"
                result.max_diff[label] = max(result.max_diff.get(label, 0.0), diff)
    result.auc = _aucs(model, read, as_trained, exported)
    return result


def _embeddings(export_dir: str, manifest: dict) -> str:
    """The export's embedding format (exports before formats existed stored float32)."""
    value = manifest.get("embeddings", "float32")
    if value not in FORMATS:
        raise ExportError(f"{os.path.join(export_dir, MANIFEST)}: 'embeddings' is {value!r}; expected one of "
                          f"{', '.join(FORMATS)}")
    return value


def check_stored_rows(model, loaded, embeddings: str, float32_max_rows: int = 0) -> dict[str, tuple[float, int]]:
    """Per table the export stores (its `embedding_tables`): every row read back from the export's variables
    through its index and dequantized, against `model`'s row (the checkpoint's, never-updated rows zeroed):
    (max |difference|, values beyond half a quantization step of the checkpoint's value). A row the export
    pruned must read zeros (its bound is 0). Tables of at most `float32_max_rows` rows are float32 (bound 0)."""
    slots = table_slots(model)
    out = {}
    for label, stored in getattr(loaded, "embedding_tables", {}).items():
        arrays = {k: v.numpy() for k, v in stored.items()}
        index = arrays.pop("index", None)
        rows = dequantize(arrays)
        want = slots[label].layer.embeddings.numpy()
        got = rows if index is None else rows[index]
        bound = half_step(want, table_format(embeddings, len(want), float32_max_rows))
        if index is not None:  # pruned rows are zeros by design, not by rounding
            bound = np.where((index == ZERO_ROW)[:, None], 0.0, bound)
            want = np.where((index == ZERO_ROW)[:, None], 0.0, want)
        error = np.abs(got - want)
        out[label] = (float(np.max(error, initial=0.0)), int(np.sum(error > bound)))
    return out


def _rows(batch: dict) -> int:
    return int(tf.shape(batch["sample_weight"])[0])


def _aucs(model, batches: list[dict], as_trained: list[dict], exported: list[dict]) -> dict[str, tuple[float, float]]:
    """AUC of the student (pairwise logit) and of each binary teacher task (fine_rank), as trained vs exported."""
    out = {}
    labels = {task: np.concatenate([b["labels"][task].numpy() for b in batches]) for task in model.labels}
    outputs = [("student", model.student_task, "pairwise", "logit")] if model.has_student else []
    outputs += [("teacher", task, "fine_rank", task) for task, label in model.labels.items() if label.type == "binary"]
    for who, task, signature, key in outputs:
        if not batches or signature not in as_trained[0]:
            continue
        trained = np.concatenate([np.asarray(b[signature][key]) for b in as_trained])
        served = np.concatenate([np.asarray(b[signature][key]) for b in exported])
        out[f"{who} {task}"] = (metrics.auc(labels[task], trained), metrics.auc(labels[task], served))
    return out
