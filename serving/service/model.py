"""One served export version: its signatures, its user-vector path, its item vectors and their cache.

The user vector comes from the ONNX user tower when an ONNX export of the same checkpoint is given (the
raw-to-id mapping of its inputs.json, `serving.onnx.raw_feeds`; about 10x quicker than the SavedModel's
user_embedding here), else from the export's `user_embedding` signature. An ONNX export is used only if it
was made from the export's checkpoint and spec, and if its user vector equals the SavedModel's on the
export's own warmup row (within PARITY); otherwise the SavedModel path is used and the reason logged.
Candidates missing from the store but sent with their features go through the export's `item_embedding`.
"""
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.onnx.raw_feeds import RawFeeds
from serving.savedmodel.layout import manifest_fingerprint
from serving.savedmodel.opening import open_export
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import input_columns
from serving.savedmodel.warmup import read_warmup, replay_warmup, request_inputs
from serving.service.vectors import CachedVectors, open_vectors
from trainer.data.records import PAD_ID, PAD_STRING
from trainer.errors import ExportError
from trainer.spec.columns import RawColumn
from trainer.spec.loader import load_spec
from trainer.spec.sides import id_feature

PARITY = 1e-4  # max |ONNX - SavedModel| of the user vector accepted at load
NEEDED = ("user_embedding", "item_embedding")


def column_array(column: RawColumn, values: list) -> np.ndarray:
    """Rows of one raw column as a signature input: [n], sequences [n, L] right-padded, vectors [n, dim]."""
    if column.shape == "list":
        width = max((len(v) for v in values), default=0)
        pad = PAD_STRING if column.dtype == "string" else PAD_ID
        rows = [list(v) + [pad] * (width - len(v)) for v in values]
        return np.asarray(rows, dtype=object if column.dtype == "string" else np.int64).reshape(len(values), width)
    dtype = {"int64": np.int64, "float32": np.float32, "string": object}[column.dtype]
    return np.asarray(values, dtype=dtype)


@dataclass
class ServedModel:
    """An export version ready to score: load with `ServedModel.load`."""

    export_dir: str
    version: int
    fingerprint: str
    manifest: dict
    signatures: Any
    user_columns: list[RawColumn]
    item_columns: list[RawColumn]
    id_column: RawColumn
    vectors: CachedVectors
    user_path: str  # "onnx" or "savedmodel"
    onnx_note: str  # why the ONNX user tower is or is not used
    loaded_seconds: float = 0.0
    feeds: RawFeeds | None = None
    session: Any = None
    bias: float = 0.0
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, export_dir: str, store: str, cache_items: int, onnx_dir: str | None = None,
             log: Callable[[str], None] = print) -> "ServedModel":
        """Open the export at `export_dir` with its item vectors in `store`, replay its warmup requests and
        warm the scoring path; an ExportError if anything is missing or refused."""
        start = time.perf_counter()
        opened = open_export(export_dir)
        manifest = opened.manifest
        fingerprint = manifest_fingerprint(opened.path, manifest)
        missing = [n for n in NEEDED if n not in opened.loaded.signatures]
        if missing:
            raise ExportError(f"{opened.path}: no {', '.join(missing)} signature (a teacher-only export?); the "
                              "service scores with the student")
        spec = load_spec(manifest["spec"])
        if spec.fingerprint != manifest["spec_fingerprint"]:
            raise ExportError(f"{manifest['spec']} changed since the export (fingerprint {spec.fingerprint}, "
                              f"export {manifest['spec_fingerprint']})")
        item_columns = input_columns(spec, "item")
        id_name = spec.feature(id_feature(spec, "item")).columns[0]
        source = open_vectors(store, fingerprint)
        dim = int(opened.loaded.signatures["user_embedding"].structured_outputs["user_vector"].shape[-1])
        if source.dim != dim or source.model_version != manifest["version"]:
            raise ExportError(f"{source.where}: vectors of dim {source.dim}, model version {source.model_version}; the "
                              f"export {opened.path} has dim {dim}, version {manifest['version']}")
        served = cls(opened.path, int(manifest["version"]), fingerprint, manifest, opened.loaded.signatures,
                     input_columns(spec, "user"), item_columns, next(c for c in item_columns if c.name == id_name),
                     CachedVectors(source, cache_items), "savedmodel", "no ONNX export given")
        replay_warmup(opened.loaded.signatures, opened.path)  # as TF Serving does when it loads a version
        warm_user = served.warmup_user()
        _, served.bias = served.savedmodel_user_vector(warm_user)
        if onnx_dir:
            served.use_onnx(onnx_dir, warm_user)
        log(f"model version {served.version} ({fingerprint}): user vector through {served.user_path} "
            f"({served.onnx_note}); item vectors from {source.where}")
        served.user_vector(warm_user)
        served.loaded_seconds = time.perf_counter() - start
        return served

    # ---- user vectors ----
    def warmup_user(self) -> dict[str, Any]:
        """The user of the export's own prerank warmup request, as a request's user dict."""
        for request in read_warmup(self.export_dir):
            if request.model_spec.signature_name == "user_embedding":
                inputs = request_inputs(request, self.export_dir)
                return {c.name: request_value(inputs[c.name][0], c) for c in self.user_columns}
        raise ExportError(f"{self.export_dir}: no user_embedding warmup request")

    def savedmodel_user_vector(self, user: dict[str, Any]) -> tuple[np.ndarray, float]:
        inputs = {c.name: column_array(c, [user[c.name]]) for c in self.user_columns}
        out = call_signature(self.signatures["user_embedding"], inputs, "user")
        return out["user_vector"][0], float(out["logit_bias"][0])

    def use_onnx(self, onnx_dir: str, user: dict[str, Any]) -> None:
        """Switch the user vector to the ONNX user tower if it is this export's model and agrees with it."""
        feeds = RawFeeds(onnx_dir, "user_vector")
        doc = feeds.doc
        formats = (doc.get("embeddings", "float32"), self.manifest.get("embeddings", "float32"))
        rules = [{k: v for k, v in (d.get("prune_rules") or {}).items() if v is not None} for d in (doc, self.manifest)]
        same = doc.get("checkpoint") == self.manifest["checkpoint"] and \
            doc.get("spec_fingerprint") == self.manifest["spec_fingerprint"] and self.manifest["pruned"] and \
            formats[0] == formats[1] and rules[0] == rules[1]
        if not same:
            self.onnx_note = (f"{onnx_dir} was exported from {doc.get('checkpoint')} ({formats[0]} tables, pruning "
                              f"rules {rules[0]}), not this export's {self.manifest['checkpoint']} (pruned: "
                              f"{self.manifest['pruned']}, {formats[1]} tables, pruning rules {rules[1]})")
            return
        session = user_tower_session(onnx_dir, feeds)
        want, _ = self.savedmodel_user_vector(user)
        got = session.run(None, feeds.feeds(user))[0][0]
        diff = float(np.max(np.abs(got - want)))
        if not diff <= PARITY or abs(feeds.bias - self.bias) > PARITY:
            self.onnx_note = f"{onnx_dir}: its user vector differs from the SavedModel's by {diff:.3g}"
            return
        self.feeds, self.session, self.user_path = feeds, session, "onnx"
        self.onnx_note = f"{onnx_dir}, max |ONNX - SavedModel| {diff:.2g} on the warmup user"

    def user_vector(self, user: dict[str, Any]) -> np.ndarray:
        """The user's vector [d] (ONNX or SavedModel); a DataError naming the column for a refused value."""
        if self.session is not None:
            return self.session.run(None, self.feeds.feeds(user))[0][0]
        return self.savedmodel_user_vector(user)[0]

    # ---- items sent with their features ----
    def embed_items(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Vectors [n, d] of items given by their raw columns (the export's item_embedding)."""
        inputs = {c.name: column_array(c, [r[c.name] for r in rows]) for c in self.item_columns}
        return call_signature(self.signatures["item_embedding"], inputs, "item_features")["item_vector"]

    async def close(self) -> None:
        await self.vectors.source.close()


def user_tower_session(onnx_dir: str, feeds: RawFeeds) -> ort.InferenceSession:
    """The ONNX user tower of an ONNX export, one thread (a request's tower is small; the event loop waits)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(os.path.join(onnx_dir, feeds.doc["graphs"]["user_vector"]["file"]), options,
                                providers=["CPUExecutionProvider"])


def request_value(value: Any, column: RawColumn) -> Any:
    """A warmup input row as a request's JSON value (sequences without their padding)."""
    if column.shape == "list":
        pad = PAD_STRING.encode() if column.dtype == "string" else PAD_ID
        items = [v for v in value.tolist() if v != pad]
        return [v.decode() if isinstance(v, bytes) else int(v) for v in items]
    if column.shape == "vector":
        return [float(v) for v in value.tolist()]
    if column.dtype == "string":
        return value.decode() if isinstance(value, bytes) else str(value)
    return int(value) if column.dtype == "int64" else float(value)
