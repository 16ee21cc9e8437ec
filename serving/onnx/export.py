"""ONNX export of the student: user tower, item tower and the prerank scorer, taking integer ids.

The graphs take the inputs of `serving.onnx.inputs` (table row ids, transformed
numbers). The pruned tables (compact rows behind an int32 index) are inside
the graphs, so row ids are the trained table's rows and the fitted
vocabularies stay valid; with `embeddings` float16 or int8 the compact rows are
stored so (`serving.savedmodel.quantize`) and dequantized in the graph after the
index (Gather, Cast, Add, Mul: plain ONNX ops); `inputs.json` beside the graphs (`serving.onnx.manifest`)
says how raw values become each input.

Graphs: user_vector.onnx (user inputs [N] -> user_vector [N, d]),
item_vector.onnx (item inputs [N] -> item_vector [N, d]) and prerank.onnx
(user inputs [1] + item inputs [N] -> logit [N] = item_vector . user_vector[0] + bias).
"""
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

import onnx
import onnxruntime as ort
import tf2onnx

from serving.onnx.inputs import OnnxInput, all_inputs, onnx_feeds, onnx_inputs, prerank_feeds
from serving.onnx.manifest import describe, readme, vocabulary_file
from serving.savedmodel.prune import PruneRules, TablePruning, prune_model
from serving.savedmodel.quantize import check_format
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.splits import resolve_data
from trainer.errors import ExportError
from trainer.files import atomic_write, publish_directory, remove_stale_temporaries, temporary_for
from trainer.layers.pooling import pool
from trainer.models.joint import JointModel
from trainer.spec.types import Spec
from trainer.training.layout import preprocessing_dir
from trainer.training.trained import load_trained

OPSET = 17
TOLERANCE = 1e-5  # max |ONNX - TensorFlow| accepted by the parity check
GRAPHS = ("user_vector", "item_vector", "prerank")
PARITY_BATCH = 256
MANIFEST, PARITY, README = "inputs.json", "parity.json", "README.md"


@dataclass
class OnnxExport:
    """What `export_onnx` wrote."""

    path: str
    graphs: dict[str, str]  # graph name -> .onnx file
    manifest: str  # inputs.json
    parity: dict[str, float]  # graph name -> max |ONNX - TensorFlow| on the parity rows
    parity_rows: int
    pruning: list[TablePruning] = field(default_factory=list)


# ---- the graphs ----

def side_vector(model: JointModel, side: str, inputs: list[OnnxInput], tensors: dict[str, tf.Tensor]) -> tf.Tensor:
    """The serving vector of `side` from encoded inputs (the same layers as model.user_vector / item_vector)."""
    encoded, augment = {}, None
    for i in inputs:
        x = tensors[i.name]
        if i.augments:
            augment = model.augment_tables[side](x)
        if i.role != "augment":
            encoded[i.feature.name] = _encode(model, i, x)
    if side == "user":
        return model.similarity.user_vector(model.user_tower(encoded, augment))
    return model.similarity.item_vector(model.item_tower(encoded, augment))


def _encode(model: JointModel, i: OnnxInput, x: tf.Tensor) -> tf.Tensor:
    if i.role == "value":
        return x[:, None]
    if i.role == "vector":
        return x
    table = model.encoder.tables[i.feature.embedding.table]
    if i.feature.kind != "sequence":
        return table(x)
    return pool(table(tf.maximum(x, 0)), i.feature.pooling, mask=x >= 0)


def graph_function(model: JointModel, graph: str) -> tf.types.experimental.GenericFunction:
    """The tf.function of one graph, with the input signature of its encoded inputs."""
    user, item = onnx_inputs(model, "user"), onnx_inputs(model, "item")
    if graph == "user_vector":
        specs = [i.tensor_spec() for i in user]
        body = lambda t: {"user_vector": side_vector(model, "user", user, t)}  # noqa: E731
    elif graph == "item_vector":
        specs = [i.tensor_spec() for i in item]
        body = lambda t: {"item_vector": side_vector(model, "item", item, t)}  # noqa: E731
    elif graph == "prerank":
        specs = [i.tensor_spec(1) for i in user] + [i.tensor_spec() for i in item]

        def body(t):
            u = side_vector(model, "user", user, t)  # [1, d]: the user tower runs once
            v = side_vector(model, "item", item, t)  # [N, d]
            return {"logit": model.similarity.logit(u, v)}
    else:
        raise ValueError(f"unknown graph {graph!r}; expected one of {GRAPHS}")
    names = [s.name for s in specs]
    return tf.function(lambda *args: body(dict(zip(names, args))), input_signature=specs)


def convert_graph(model: JointModel, graph: str, path: str, opset: int = OPSET):
    """Convert one graph with tf2onnx into `path`; check that it is plain ONNX with the expected inputs."""
    fn = graph_function(model, graph)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset,
                                             output_path=path)
    check_graph(proto, [s.name for s in fn.input_signature], graph)
    return proto


def check_graph(proto, expected_inputs: list[str], graph: str) -> None:
    """Fail unless the graph is valid, takes exactly `expected_inputs` (no strings) and uses standard ops only."""
    onnx.checker.check_model(proto)
    names = [i.name for i in proto.graph.input]
    if sorted(names) != sorted(expected_inputs):
        raise ExportError(f"{graph}.onnx: inputs {names}, expected {expected_inputs}")
    strings = [i.name for i in proto.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.STRING]
    if strings:
        raise ExportError(f"{graph}.onnx: string inputs {strings}")
    foreign = sorted({f"{n.domain}:{n.op_type}" for n in proto.graph.node
                      if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type)})
    if foreign:  # tf2onnx keeps ops it cannot convert (continue_on_error): refuse them here
        raise ExportError(f"{graph}.onnx: tf2onnx left non-ONNX ops {foreign}")


# ---- parity ----

def reference_outputs(model: JointModel, features: dict) -> dict[str, np.ndarray]:
    """What the TensorFlow model gives for raw `features`: both vectors and row 0's user against every item."""
    u, v = model.user_vector(features), model.item_vector(features)
    return {"user_vector": u.numpy(), "item_vector": v.numpy(), "prerank": model.similarity.logit(u[:1], v).numpy()}


def onnx_outputs(sessions: dict, model: JointModel, features: dict) -> dict[str, np.ndarray]:
    """The three graphs run by onnxruntime on feeds from raw `features` (prerank: row 0's user)."""
    return {"user_vector": sessions["user_vector"].run(None, onnx_feeds(model, features, "user"))[0],
            "item_vector": sessions["item_vector"].run(None, onnx_feeds(model, features, "item"))[0],
            "prerank": sessions["prerank"].run(None, prerank_feeds(model, features))[0]}


def sessions_for(paths: dict[str, str]) -> dict:
    """An onnxruntime session (CPU) per graph."""
    return {g: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for g, p in paths.items()}


def check_parity(model: JointModel, paths: dict[str, str], batches: Iterable[dict]) -> dict:
    """Per graph: max |ONNX - TensorFlow| and max |TensorFlow| over the batches' rows; and the row count."""
    sessions = sessions_for(paths)
    diffs, scales, rows = dict.fromkeys(GRAPHS, 0.0), dict.fromkeys(GRAPHS, 0.0), 0
    for features in batches:
        expected, got = reference_outputs(model, features), onnx_outputs(sessions, model, features)
        for g in GRAPHS:
            if got[g].shape != expected[g].shape:
                raise ExportError(f"{g}.onnx: output shape {got[g].shape}, TensorFlow gives {expected[g].shape}")
            diffs[g] = max(diffs[g], float(np.max(np.abs(got[g] - expected[g]), initial=0.0)))
            scales[g] = max(scales[g], float(np.max(np.abs(expected[g]), initial=0.0)))
        rows += len(expected["item_vector"])
    if rows == 0:
        raise ExportError("no rows to check ONNX parity on")
    return {"max_abs_diff": diffs, "max_abs_output": scales, "rows": rows}


def parity_failures(parity: dict, tolerance: float = TOLERANCE) -> dict[str, float]:
    """Graphs whose max |diff| exceeds `tolerance`."""
    return {g: d for g, d in parity["max_abs_diff"].items() if not d <= tolerance}


# ---- the export ----

def export_onnx(spec: Spec, model_dir: str, out_dir: str, data: str | list[str] | None = None, parity_batches: int = 2,
                opset: int = OPSET, tolerance: float = TOLERANCE, log: Callable[[str], None] = print,
                embeddings: str = "float32", rules: PruneRules = PruneRules()) -> OnnxExport:
    """Export the pruned student of `model_dir` as ONNX into the new directory `out_dir` (all or nothing).

    `data` (default: the spec's eval data) gives `parity_batches` batches on which onnxruntime must match
    the pruned TensorFlow model within `tolerance` (see `parity_failures`), else ExportError and nothing is written.
    `embeddings`: how the kept rows are stored, as `prerank export --embeddings` stores them; `rules`: the opt-in
    pruning rules, as `prerank export --prune-rows-below / --prune-norm-below` apply them.
    """
    check_format(embeddings)
    out_dir = os.path.normpath(out_dir)
    if os.path.exists(out_dir):
        raise ExportError(f"{out_dir} already exists: an ONNX export never overwrites; remove it or choose "
                          "another directory")
    data = resolve_data(data, spec, "eval", purpose="rows for the ONNX parity check")
    model = load_trained(spec, model_dir, data)
    if not model.has_student:
        raise ExportError(f"{model_dir}: a teacher-only model (model.mode: teacher) has no student to export")
    pruning = prune_model(model, model.checkpoint_path, embeddings, rules=rules)
    all_inputs(model)  # fail early on clashing input names
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    remove_stale_temporaries(os.path.dirname(out_dir) or ".")
    temp = temporary_for(out_dir)
    shutil.rmtree(temp, ignore_errors=True)
    os.makedirs(temp)
    try:
        paths = {g: os.path.join(temp, f"{g}.onnx") for g in GRAPHS}
        for g, path in paths.items():
            log(f"converting {g} -> {path}")
            convert_graph(model, g, path, opset)
        _write_description(model, spec, model_dir, temp, pruning, opset, embeddings, rules)
        batches = _parity_batches(spec, data, parity_batches)
        parity = check_parity(model, paths, batches)
        atomic_write(os.path.join(temp, PARITY), json.dumps(
            {**parity, "tolerance": tolerance, "data": data,
             "rule": "max |diff| <= tolerance",
             "prerank": "row 0's user of each batch against every row's item"}, indent=2) + "\n")
        bad = parity_failures(parity, tolerance)
        if bad:
            raise ExportError(f"ONNX differs from TensorFlow by more than {tolerance} on {parity['rows']} rows of "
                              f"{data}: " + ", ".join(f"{g} {d:.3g}" for g, d in bad.items()))
        publish_directory(temp, out_dir)  # one step: readers see the whole export or none
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    diffs, rows = parity["max_abs_diff"], parity["rows"]
    log(f"wrote {out_dir}: {', '.join(f'{g} max |diff| {d:.2g}' for g, d in diffs.items())} on {rows} rows")
    return OnnxExport(out_dir, {g: os.path.join(out_dir, f"{g}.onnx") for g in GRAPHS},
                      os.path.join(out_dir, MANIFEST), diffs, rows, pruning)


def _write_description(model: JointModel, spec: Spec, model_dir: str, temp: str, pruning: list[TablePruning],
                       opset: int, embeddings: str, rules: PruneRules) -> None:
    """Copy the fitted preprocessing (and file vocabularies); write inputs.json and README.md."""
    shutil.copytree(preprocessing_dir(model_dir, model.config), os.path.join(temp, "preprocessing"))
    for i in onnx_inputs(model, "user") + onnx_inputs(model, "item"):
        v = i.feature.vocabulary
        if v is not None and v.source == "file":
            target = os.path.join(temp, vocabulary_file(i.feature.embedding.table, "file"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(v.path, target)
    sources = {"model_dir": os.path.abspath(model_dir), "checkpoint": os.path.abspath(model.checkpoint_path),
               "spec": spec.path, "spec_fingerprint": spec.fingerprint, "embeddings": embeddings,
               "prune_rules": rules.as_dict()}
    doc = describe(model, pruning, opset, sources)
    atomic_write(os.path.join(temp, MANIFEST), json.dumps(doc, indent=2) + "\n")
    atomic_write(os.path.join(temp, README), readme(doc))


def _parity_batches(spec: Spec, data: list[str], count: int) -> list[dict]:
    config = InputConfig(batch_size=PARITY_BATCH, shuffle_buffer=0, deterministic=True)
    batches = []
    for batch in make_pipeline(spec, data, config):
        if len(batches) >= count:
            break
        batches.append(batch["features"])
    return batches
