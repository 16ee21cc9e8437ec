"""The worker and parameter-server tasks of a parameter-server cluster: serve until the chief is done.

Every task runs the same `prerank train` command; on a worker or ps task
(`distribution.server_task`) it starts a `tf.distribute.Server` and serves the
chief's coordinator: a parameter server holds its shards of the variables, a
worker runs the steps the coordinator schedules on it. A server never ends on
its own, so the task watches the chief:

- the chief writes MODEL_DIR/cluster_done when its job ends (`mark_done`): a
  server started before that exits (a server started after it, for a rerun of
  the job, waits for the new chief's mark);
- a chief that stops answering on its address (killed) for
  `training.cluster_grace_seconds`: the server exits. A chief rerun within that
  time finds the servers still there and resumes from its last checkpoint;
  after it, every task is rerun.
"""
import os
import socket
import time
import uuid

import tensorflow as tf

from trainer.files import atomic_write

DONE_FILE = "cluster_done"  # MODEL_DIR/cluster_done: written by the chief when its job ends
POLL_SECONDS = 0.5


def done_path(model_dir: str) -> str:
    return os.path.join(model_dir, DONE_FILE)


def mark_done(model_dir: str) -> None:
    """The chief's job has ended: the servers started before now exit (a new mark each time)."""
    atomic_write(done_path(model_dir), uuid.uuid4().hex.encode())


def _read_mark(model_dir: str) -> bytes | None:
    try:
        with open(done_path(model_dir), "rb") as fh:
            return fh.read()
    except OSError:
        return None


def answers(address: str) -> bool:
    """Whether something accepts a TCP connection at `address` (host:port)."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def serve(task: dict, model_dir: str, grace_seconds: float, log=print) -> str:
    """Serve as TF_CONFIG's task `task` until the chief is done (see the module docstring); why it stopped."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec()
    chief = cluster.as_dict()["chief"][0]
    mark = _read_mark(model_dir)
    server = tf.distribute.Server(cluster, job_name=task["type"], task_index=int(task.get("index", 0)),
                                  protocol="grpc", start=True)
    log(f"{task['type']} {task.get('index', 0)}: serving at {server.target}, until the chief ({chief}) is done")
    seen, last_seen = False, time.time()
    while True:
        if _read_mark(model_dir) not in (mark, None):
            return "the chief finished"
        if answers(chief):
            seen, last_seen = True, time.time()
        elif seen and time.time() - last_seen > grace_seconds:
            return f"the chief stopped answering for {grace_seconds:g} s"
        time.sleep(POLL_SECONDS)
