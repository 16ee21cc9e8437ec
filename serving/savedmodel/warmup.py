"""TF Serving warmup: one PredictionLog per signature, built from real rows with the serving-api protos.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file of
PredictionLog) when it loads a version, so the first real request does not pay
for graph initialisation. Inputs come from the spec (`signatures.input_columns`).
"""
import os
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from serving.savedmodel.layout import WARMUP_FILE
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import ITEM_VECTORS, input_columns, serving_inputs
from trainer.data.records import clean_message
from trainer.errors import DataError, ExportError
from trainer.spec.types import Spec

MAX_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords: a longer warmup file fails the version's load


ItemVectors = Callable[[dict[str, np.ndarray]], np.ndarray]  # item columns -> item vectors [N, d]


def signature_inputs(spec: Spec, signature: str, features: dict, candidates: int,
                     item_vectors: ItemVectors | None = None) -> dict[str, np.ndarray]:
    """Inputs of `signature` from a batch's features: `candidates` rows (prerank: row 0's user and
    `candidates` items; prerank_vectors: row 0's user and the vectors `item_vectors` gives those items)."""
    rows = slice(0, candidates)
    if signature == "prerank_vectors":
        if item_vectors is None:
            raise ExportError("prerank_vectors inputs need the candidates' item vectors (item_vectors)")
        items = serving_inputs(features, input_columns(spec, "item"), rows)
        return {**serving_inputs(features, input_columns(spec, "user"), slice(0, 1)),
                ITEM_VECTORS: np.asarray(item_vectors(items), np.float32)}
    if signature == "prerank":
        return {**serving_inputs(features, input_columns(spec, "user"), slice(0, 1)),
                **serving_inputs(features, input_columns(spec, "item"), rows)}
    if signature == "pairwise":
        return serving_inputs(features, input_columns(spec, "user") + input_columns(spec, "item"), rows)
    role = {"user_embedding": "user", "item_embedding": "item", "fine_rank": "all"}[signature]
    return serving_inputs(features, input_columns(spec, role), rows)


def predict_request(model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> predict_pb2.PredictRequest:
    """A TF Serving PredictRequest of `signature` with `inputs` as tensor protos."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def write_warmup(export_dir: str, spec: Spec, signatures: list[str], features: dict, model_name: str,
                 candidates: int = 16, item_vectors: ItemVectors | None = None) -> str:
    """Write the warmup file of `export_dir` (one request per signature); its path. `item_vectors` computes
    the candidates' vectors of the prerank_vectors request (the export's own item_embedding)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in signatures:
            rows = 1 if signature in ("prerank", "prerank_vectors") else candidates
            inputs = signature_inputs(spec, signature, features, rows, item_vectors)
            request = predict_request(model_name, signature, inputs)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: str) -> list[predict_pb2.PredictRequest]:
    """The requests of an export's warmup file; an ExportError naming the file (and the record) if it is
    missing, not a TFRecord file of PredictionLog protos holding PredictRequests, or longer than TF
    Serving replays (it refuses a version whose warmup file holds more than MAX_RECORDS)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no warmup file; expected the warmup requests `prerank export` writes")
    expected = "expected a TFRecord file of PredictionLog protos (TF Serving's warmup format)"
    requests = []
    try:
        for i, record in enumerate(tf.data.TFRecordDataset(path)):
            if i >= MAX_RECORDS:
                raise ExportError(f"{path}: more than {MAX_RECORDS} records, TF Serving's maximum")
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            except DecodeError as e:
                raise ExportError(f"{path}: record {i} is not a PredictionLog ({e}); {expected}") from None
            if log.WhichOneof("log_type") != "predict_log":
                raise ExportError(f"{path}: record {i} holds {log.WhichOneof('log_type') or 'no log'}, not a "
                                  "predict_log; prerank's signatures take PredictRequests")
            requests.append(log.predict_log.request)
    except tf.errors.OpError as e:  # DataLossError: not a TFRecord file, or a truncated one
        raise ExportError(f"{path}: unreadable after {len(requests)} record(s) ({clean_message(e.message)}); "
                          f"{expected}") from None
    return requests


def request_inputs(request: predict_pb2.PredictRequest, where: str) -> dict[str, np.ndarray]:
    """A PredictRequest's inputs as arrays; an ExportError naming the input whose TensorProto is garbled."""
    inputs = {}
    for name, proto in request.inputs.items():
        try:
            inputs[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as e:
            raise ExportError(f"{where}: input '{name}' is not a readable TensorProto ({e})") from None
    return inputs


def replay_warmup(signatures: Mapping, export_dir: str,
                  requests: list[predict_pb2.PredictRequest] | None = None) -> dict[str, int]:
    """Run each warmup request of `export_dir` (`requests`, if already read) through its signature
    (`signatures`: name -> function, e.g. a loaded SavedModel's, or the ServingModule's before it is
    published) as TF Serving does when it loads the version; an ExportError on a missing signature, a refused
    request, a non-finite output, or a signature without a request. Returns signature -> requests run."""
    counts: dict[str, int] = {}
    path = os.path.join(export_dir, WARMUP_FILE)
    for i, request in enumerate(read_warmup(export_dir) if requests is None else requests):
        name = request.model_spec.signature_name or "serving_default"
        where = f"{path}: request {i} ({name})"
        if name not in signatures:
            raise ExportError(f"{where}: names signature '{name}', which the export lacks "
                              f"(it has {', '.join(sorted(signatures))})")
        try:
            outputs = call_signature(signatures[name], request_inputs(request, where), where)
        except DataError as e:  # the export's own warmup request is refused: TF Serving would not load it
            raise ExportError(str(e)) from None
        for key, value in outputs.items():
            if not np.all(np.isfinite(value)):
                raise ExportError(f"{where}: output '{key}' is not finite")
        counts[name] = counts.get(name, 0) + 1
    missing = sorted(set(signatures) - set(counts) - {"serving_default"})
    if missing:
        raise ExportError(f"{path}: no warmup request for signature(s) {', '.join(missing)}; `prerank export` "
                          "writes one per signature")
    return counts
