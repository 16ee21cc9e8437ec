"""The tf.distribute strategy of a job, chosen from the TF_CONFIG environment variable.

TF_CONFIG set with a cluster of several workers: MultiWorkerMirroredStrategy
(synchronous data parallelism, one replica per worker on CPU). Unset: the
default single-device strategy. Create the strategy before any other
TensorFlow work in the process (a multi-worker strategy must come first).
"""
import json
import os

import tensorflow as tf

from trainer.errors import ConfigError


def strategy_from_env() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy if TF_CONFIG names several tasks, else the default strategy."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return tf.distribute.get_strategy()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError.single("TF_CONFIG", "", f"not valid JSON: {exc}") from None
    cluster = parsed.get("cluster", {}) if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ConfigError.single("TF_CONFIG", "",
                                 f"expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                                 f"\"task\": {{\"type\": \"worker\", \"index\": i}}}}, got {raw}")
    if sum(len(v) for v in cluster.values()) <= 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def cluster_size(strategy: tf.distribute.Strategy) -> int:
    """Number of tasks in the strategy's cluster (1 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(sum(len(tasks) if isinstance(tasks, list) else len(dict(tasks)) for tasks in cluster.values()), 1)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this task writes the model directory: the chief, or worker 0 of a cluster without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0
                                                    and "chief" not in resolver.cluster_spec().as_dict())
