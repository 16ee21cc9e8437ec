"""TF Serving warmup: one PredictionLog per signature, built from real rows with the serving-api protos.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file of
PredictionLog) when it loads a version, so the first real request does not pay
for graph initialisation. Inputs come from the spec (`signatures.input_columns`).
"""
import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from serving.savedmodel.layout import WARMUP_FILE
from serving.savedmodel.signatures import input_columns, serving_inputs
from trainer.spec.types import Spec


def signature_inputs(spec: Spec, signature: str, features: dict, candidates: int) -> dict[str, np.ndarray]:
    """Inputs of `signature` from a batch's features: `candidates` rows (prerank: row 0's user and
    `candidates` items)."""
    rows = slice(0, candidates)
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
                 candidates: int = 16) -> str:
    """Write the warmup file of `export_dir` (one request per signature); its path."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in signatures:
            rows = 1 if signature == "prerank" else candidates
            request = predict_request(model_name, signature, signature_inputs(spec, signature, features, rows))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup(export_dir: str) -> list[predict_pb2.PredictRequest]:
    """The requests of an export's warmup file."""
    requests = []
    for record in tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests
