"""`inputs.json` and README.md of an ONNX export: how raw values map to each input.

Per input: the vocabulary file and OOV rule, hash buckets (crosses joined with
"\\x1f"), bucket boundaries, or the transform steps with their fitted
statistics; per graph its inputs and outputs; the logit formula.
"""
import os

from serving.onnx.inputs import PAD_ROW, OnnxInput, onnx_inputs
from serving.savedmodel.prune import TablePruning
from trainer.layers.encoder import CROSS_SEPARATOR
from trainer.models.joint import JointModel
from trainer.preprocessing.numeric import EPSILON
from trainer.spec.types import Feature, TransformStep


# ---- how raw values map to inputs (inputs.json) ----

def describe_input(model: JointModel, i: OnnxInput, graphs: dict[str, list[str]]) -> dict:
    f = i.feature
    entry = {"name": i.name, "feature": f.name, "side": f.side, "tower": i.side, "kind": f.kind,
             "holds": {"rows": "table rows", "augment": "table rows", "value": "transformed value",
                       "vector": "dense vector"}[i.role],
             "dtype": i.dtype.name, "shape": i.shape,
             "graphs": [g for g, names in graphs.items() if i.name in names],
             "columns": list(f.columns), "column_dtype": f.dtype, "default": f.default,
             "mapping": _mapping(model, f) if i.role != "vector" else
             {"type": "identity", "rule": f"the column's {f.dim} float32 values as they are"}}
    if i.augments:
        entry["augment"] = (f"these rows also select the dual augmented {i.side} vector (table augment_{i.side}, "
                            "the same rows as the feature's table)")
    if f.kind == "sequence":
        entry["sequence"] = {
            "max_length": f.max_length, "keep": f.keep, "padding": PAD_ROW, "pooling": f.pooling,
            "rule": f"map every id as `mapping` says, keep the {f.keep} {f.max_length} ids, left-align them and "
                    f"pad the row with {PAD_ROW} up to {f.max_length}; {f.pooling} pooling over the non-negative "
                    "rows, an empty sequence pools to zeros"}
    return entry


def _mapping(model: JointModel, f: Feature) -> dict:
    stats = model.encoder.stats.get(f.name)
    if f.embedding is None:
        return {"type": "transform", "steps": [_step(s, stats) for s in f.transforms],
                "rule": "x = float32(raw value); apply the steps in order, in float32"}
    table = f.embedding.table
    rows = {"table": table, "rows": model.encoder.tables[table].num_rows}
    if f.bucketized:
        bounds = list(f.transforms[-1].boundaries)
        return {"type": "bucketize", **rows, "steps": [_step(s, stats) for s in f.transforms[:-1]],
                "boundaries": bounds,
                "rule": "x = float32(raw value); apply the steps in order; row = the number of boundaries <= x "
                        "(TF Bucketize on float32 boundaries; x < boundaries[0] -> 0)"}
    v = f.vocabulary
    if v.source == "hash":
        return {"type": "hash", **rows, "buckets": v.buckets,
                "rule": f"row = Fingerprint64(s) mod {v.buckets}: FarmHash Fingerprint64 of the UTF-8 bytes of s "
                        "(tf.strings.to_hash_bucket_fast, Keras Hashing without salt); s = the id itself for "
                        "strings, its decimal form (tf.strings.as_string) for int64 ids; a cross joins its "
                        f"columns' strings with {CROSS_SEPARATOR!r} (U+001F) first"}
    lookup = model.encoder.lookups[table]
    size = lookup.rows - v.oov_buckets
    return {"type": "vocabulary", **rows, "file": vocabulary_file(table, v.source), "vocabulary_size": size,
            "file_format": "one id per line, the id before the first tab (fitted files: id<TAB>count); "
                           + ("blank lines are skipped" if v.source == "file" else "most frequent first"),
            "oov_buckets": v.oov_buckets,
            "rule": f"an id in the file: row = {v.oov_buckets} + its 0-based line number; any other id: "
                    + _oov_rule(v.oov_buckets, f.dtype)}


def _oov_rule(buckets: int, dtype: str) -> str:
    if buckets == 1:
        return "row = 0"
    if dtype == "string":
        return (f"row = Fingerprint64(id) mod {buckets}, FarmHash Fingerprint64 of its UTF-8 bytes "
                "(Keras StringLookup: tf.strings.to_hash_bucket_fast)")
    return f"row = id mod {buckets}, floor modulo, never negative (Keras IntegerLookup: tf.math.floormod)"


def vocabulary_file(table: str, source: str) -> str:
    return f"preprocessing/vocab/{table}.txt" if source == "data" else f"vocab_files/{table}.txt"


def _step(step: TransformStep, stats) -> dict:
    if step.op == "log1p":
        return {"op": "log1p", "formula": "sign(x) * log(1 + |x|)"}
    if step.op == "zscore":
        return {"op": "zscore", "mean": stats.mean, "std": stats.std,
                "formula": f"(x - mean) / max(std, {EPSILON})"}
    return {"op": "minmax", "min": stats.min, "max": stats.max, "formula": f"(x - min) / max(max - min, {EPSILON})"}


def describe(model: JointModel, pruning: list[TablePruning], opset: int, sources: dict) -> dict:
    """The inputs.json document: graphs, inputs, the tables behind them and the logit formula."""
    user, item = onnx_inputs(model, "user"), onnx_inputs(model, "item")
    d = model.config.model.student.user_tower[-1]
    graphs = {
        "user_vector": {"file": "user_vector.onnx", "inputs": [i.name for i in user], "batch": "N",
                        "outputs": {"user_vector": {"dtype": "float32", "shape": [None, d]}}},
        "item_vector": {"file": "item_vector.onnx", "inputs": [i.name for i in item], "batch": "N",
                        "outputs": {"item_vector": {"dtype": "float32", "shape": [None, d]}}},
        "prerank": {"file": "prerank.onnx", "inputs": [i.name for i in user + item],
                    "batch": "user inputs 1 (one user), item inputs N (the candidates)",
                    "outputs": {"logit": {"dtype": "float32", "shape": [None]}}}}
    names = {g: v["inputs"] for g, v in graphs.items()}
    bias = float(model.similarity.bias.numpy())
    used = {i.feature.embedding.table for i in user + item if i.feature.embedding is not None}
    tables = {p.table: p.as_dict() for p in pruning
              if p.table in used or (model.augmented and p.table in ("augment/user", "augment/item"))}
    return {
        "format": 1, **sources, "opset": opset,
        "logit": {"formula": "logit = item_vector . user_vector + bias; score = sigmoid(logit)", "bias": bias,
                  "similarity": model.config.model.student.similarity.name},
        "graphs": graphs,
        "inputs": [describe_input(model, i, names) for i in user + item],
        "tables": tables,
        "row_ids": "rows index the trained table: valid rows are 0 .. rows-1 (ONNX Gather wraps negative "
                   "indices and fails beyond rows, so never send them outside sequences); rows pruned at export "
                   "(never updated or all zero) read zeros"}


def readme(doc: dict) -> str:
    """The README.md of an export, from the inputs.json document."""
    lines = ["# prerank student as ONNX", "",
             f"Exported from `{doc['model_dir']}` (checkpoint `{os.path.basename(doc['checkpoint'])}`, spec "
             f"`{doc['spec']}`), opset {doc['opset']}. Inputs are ids and numbers *after* the model's "
             "preprocessing; `inputs.json` says exactly how raw values map to them (fitted vocabularies and "
             "statistics are in `preprocessing/`).", "",
             "## Graphs", ""]
    for g, info in doc["graphs"].items():
        outs = ", ".join(f"`{n}` {o['dtype']} {_shape(o['shape'])}" for n, o in info["outputs"].items())
        lines.append(f"- `{info['file']}`: {len(info['inputs'])} inputs (batch: {info['batch']}) -> {outs}")
    lines += ["", f"`{doc['logit']['formula']}` with bias = {doc['logit']['bias']!r} "
                  f"(similarity: {doc['logit']['similarity']}).", "",
              "## Inputs", "", "| input | feature | tower | dtype | shape | from column(s) | mapping |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for i in doc["inputs"]:
        lines.append(f"| `{i['name']}` | {i['feature']} ({i['kind']}) | {i['tower']} | {i['dtype']} | "
                     f"{_shape(i['shape'])} | {', '.join(i['columns'])} | {_mapping_summary(i)} |")
    lines += ["", doc["row_ids"] + ".", ""]
    return "\n".join(lines)


def _shape(shape: list) -> str:
    return "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"


def _mapping_summary(entry: dict) -> str:
    m = entry["mapping"]
    if m["type"] == "vocabulary":
        text = f"vocabulary `{m['file']}`, {m['oov_buckets']} OOV row(s) first"
    elif m["type"] == "hash":
        text = f"FarmHash64 mod {m['buckets']}"
    elif m["type"] == "bucketize":
        text = f"bucketize {m['boundaries']}"
    elif m["type"] == "transform":
        text = " then ".join(s["op"] for s in m["steps"]) or "as is"
    else:
        text = "as is"
    if "sequence" in entry:
        s = entry["sequence"]
        text += f"; keep {s['keep']} {s['max_length']}, pad {s['padding']}, {s['pooling']} pooled"
    if "augment" in entry:
        text += "; also the augment rows"
    return text.replace("|", "\\|")
