"""The tf.distribute strategy of a job, chosen from the TF_CONFIG environment variable.

TF_CONFIG set with a cluster of several workers: MultiWorkerMirroredStrategy
(synchronous data parallelism, one replica per worker on CPU). Unset: the
default single-device strategy. Create the strategy before any other
TensorFlow work in the process (a multi-worker strategy must come first).
"""
import json
import os

import tensorflow as tf

from trainer.errors import DataError


def strategy_from_env() -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return tf.distribute.get_strategy()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"TF_CONFIG is not valid JSON: {exc}") from None
    cluster = parsed.get("cluster", {}) if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise DataError(f"TF_CONFIG: expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                        f"\"task\": {{\"type\": \"worker\", \"index\": i}}}}, got {raw}")
    if sum(len(v) for v in cluster.values()) <= 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()
