"""The tf.distribute strategy of a job, chosen from the TF_CONFIG environment variable.

TF_CONFIG set with a cluster of several workers: MultiWorkerMirroredStrategy
(synchronous data parallelism, one replica per worker on CPU). Unset: the
default single-device strategy. Create the strategy before any other
TensorFlow work in the process (a multi-worker strategy must come first).
"""
import json
import os

import tensorflow as tf


def strategy_from_env() -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return tf.distribute.get_strategy()
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if sum(len(v) for v in cluster.values()) <= 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()
