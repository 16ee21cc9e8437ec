"""The tf.distribute strategy of a job, chosen from the TF_CONFIG environment variable.

TF_CONFIG unset (or a cluster of one task): the default single-device strategy.
A cluster of several workers: MultiWorkerMirroredStrategy (synchronous data
parallelism, one replica per worker on CPU). A cluster with `ps` tasks:
ParameterServerStrategy, on the chief only (it runs the ClusterCoordinator and
the loop, `trainer.training.coordinated`); its worker and ps tasks run a
`tf.distribute.Server` instead (`trainer.training.cluster_server`). Embedding
tables are split by rows across the parameter servers (`table_partitioner`).
Create the strategy before any other TensorFlow work in the process (a
multi-worker strategy must come first).
"""
import math

import tensorflow as tf

from trainer.config.cluster import cluster_from_env
from trainer.errors import ConfigError
from trainer.layers.embedding import building_table

SERVER_TASKS = ("worker", "ps")  # the tasks of a parameter-server cluster that serve instead of training


def server_task() -> dict | None:
    """This task ({"type", "index"}) when TF_CONFIG names a parameter-server cluster and this task is one of its
    workers or parameter servers (which serve instead of training); else None.

    ConfigError when such a cluster has no chief (the coordinator runs on the chief) or no worker.
    """
    cluster, task = cluster_from_env()
    if not cluster.get("ps"):
        return None
    if len(cluster.get("chief", [])) != 1 or not cluster.get("worker"):
        raise ConfigError.single("TF_CONFIG", "cluster", "a cluster with \"ps\" tasks needs one \"chief\" (it runs "
                                 f"the coordinator) and at least one \"worker\"; got {sorted(cluster)}")
    if task.get("type") not in ("chief", *SERVER_TASKS):
        raise ConfigError.single("TF_CONFIG", "task.type", f"expected chief, worker or ps, got {task.get('type')!r}")
    return task if task["type"] in SERVER_TASKS else None


def strategy_from_env(min_shard_mb: float = 64.0) -> tf.distribute.Strategy:
    """The strategy TF_CONFIG selects (see the module docstring); `min_shard_mb`: `training.min_shard_mb`."""
    cluster, _ = cluster_from_env()
    if cluster.get("ps"):
        if server_task() is not None:
            raise ConfigError.single("TF_CONFIG", "task.type", "a worker or ps task of a parameter-server cluster "
                                     "serves: run `prerank train` (it serves until the chief finishes)")
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return tf.distribute.ParameterServerStrategy(
            resolver, variable_partitioner=table_partitioner(len(cluster["ps"]), min_shard_mb))
    if sum(len(v) for v in cluster.values()) <= 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def table_partitioner(parameter_servers: int, min_shard_mb: float):
    """The variable partitioner of a parameter-server job: an embedding table (`building_table`) is split by rows
    into as many shards of at least `min_shard_mb` MB as fit, at most `parameter_servers`; every other variable
    stays whole (it lives on one parameter server)."""
    def partition(shape: tf.TensorShape, dtype: tf.DType, axis: int = 0) -> list[int]:
        partitions = [1] * shape.rank
        if building_table():
            partitions[axis] = shard_count(shape, dtype, parameter_servers, min_shard_mb)
        return partitions

    return partition


def shard_count(shape, dtype: tf.DType, parameter_servers: int, min_shard_mb: float) -> int:
    """Shards of a table of `shape`: as many of at least `min_shard_mb` MB as fit, at most one a parameter server
    and one a row."""
    rows = int(shape[0])
    total = rows * math.prod(int(d) for d in shape[1:]) * tf.as_dtype(dtype).size
    return max(1, min(parameter_servers, rows, int(total // (min_shard_mb * (1 << 20)))))


def uses_parameter_servers(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is a ParameterServerStrategy (the coordinator's loop)."""
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


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
