"""The cluster a job runs in, from the TF_CONFIG environment variable (plain JSON: no TensorFlow).

`trainer.training.distribution` picks the strategy from it; the configuration checks size tables by it (a
table of a parameter-server job is split across the parameter servers).
"""
import json
import os

from trainer.errors import ConfigError


def cluster_from_env() -> tuple[dict[str, list[str]], dict]:
    """(cluster, task) of TF_CONFIG ({} and {} when it is unset); ConfigError when it is malformed."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}, {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError.single("TF_CONFIG", "", f"not valid JSON: {exc}") from None
    cluster = parsed.get("cluster", {}) if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ConfigError.single("TF_CONFIG", "",
                                 f"expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                                 f"\"task\": {{\"type\": \"worker\", \"index\": i}}}}, got {raw}")
    task = parsed.get("task", {})
    return cluster, task if isinstance(task, dict) else {}


def parameter_servers() -> int:
    """The ps tasks TF_CONFIG names (0: not a parameter-server job)."""
    return len(cluster_from_env()[0].get("ps", []))
