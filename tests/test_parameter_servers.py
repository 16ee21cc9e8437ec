"""Parameter-server jobs: sharded tables, their lookups and initial rows (fast), and one loopback cluster (2 workers,
2 parameter servers, a chief; real processes) shared by the slow tests.

The cluster's job is run once (`ps_job`) and the tests read what it left: the chief trains, a worker is killed with
SIGKILL and the job goes on, the worker is restarted; the chief is killed with SIGKILL after a checkpoint and rerun
(it resumes on the same servers); a parameter server is killed (the job fails, saying how to resume), restarted,
and the chief rerun resumes for one step; then every task exits on its own.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.local_servers import free_ports
from conftest import spec_text
from trainer.cli import main
from trainer.config.cluster import parameter_servers
from trainer.data.datasets.synthetic import generate
from trainer.errors import ConfigError, ModelDirError
from trainer.layers.embedding import EmbeddingTable, ShardedVariable, shards
from trainer.spec import load_spec
from trainer.spec.table_size import oversized_tables
from trainer.training.checkpoints import restore
from trainer.training.distribution import shard_count
from trainer.training.usage import read_counts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
TIMEOUT = 240  # seconds any one wait may take on a loaded machine
LONG = 1_000_000  # training.max_steps of the chiefs that are killed before they finish
TABLES = {"user": (300, 8), "video": (500, 8)}  # the training_job spec's sharded tables (rows, dim)


# ---- sharded tables, in one process ----

def sharded(values: np.ndarray, n: int) -> ShardedVariable:
    """`values` as a ShardedVariable of `n` shards, "div" partitioned as ParameterServerStrategy does."""
    sizes = [len(values) // n + (1 if i < len(values) % n else 0) for i in range(n)]
    offsets = np.cumsum([0] + sizes)
    return ShardedVariable([tf.Variable(values[a:b]) for a, b in zip(offsets[:-1], offsets[1:])])


def test_lookups_through_a_sharded_table_equal_those_of_the_whole_table():
    values = np.random.default_rng(0).normal(size=(301, 4)).astype(np.float32)
    whole, split = EmbeddingTable(301, 4), EmbeddingTable(301, 4)
    whole.build(None)
    split.build(None)
    whole.embeddings.assign(values)
    split.embeddings = sharded(values, 3)  # shards of 101, 100, 100 rows
    assert [s.shape[0] for s in shards(split.embeddings)] == [101, 100, 100]
    ids = tf.constant([[0, 100, 101, 200], [201, 300, 5, 5]])  # both sides of each shard boundary, a repeat
    compiled = tf.function(lambda rows: split(rows))  # tf.nn.embedding_lookup (eagerly: lookup_each_shard)
    for lookup in (split, compiled):
        np.testing.assert_array_equal(lookup(ids).numpy(), values[ids.numpy()])
        np.testing.assert_array_equal(lookup(ids).numpy(), whole(ids).numpy())
        ragged = tf.ragged.constant([[0, 300], [], [101, 100, 200]])
        np.testing.assert_array_equal(lookup(ragged).flat_values.numpy(), values[[0, 300, 101, 100, 200]])
    with tf.GradientTape() as tape:  # sparse gradients for each shard, eagerly too
        loss = tf.reduce_sum(split(tf.constant([0, 101, 300])))
    grads = tape.gradient(loss, shards(split.embeddings))
    assert [sorted(g.indices.numpy().tolist()) for g in grads] == [[0], [0], [99]]
    # The v1 default ("mod") would read other rows: the table must not be looked up that way.
    mod = tf.compat.v1.nn.embedding_lookup([s for s in shards(split.embeddings)], ids, partition_strategy="mod")
    assert not np.array_equal(mod.numpy(), values[ids.numpy()])


def test_a_shard_starts_with_its_own_rows_of_the_initial_values_zero_rows_included():
    table = EmbeddingTable(10, 3, initializer="uniform", zero_rows=4)
    first = table._initial_values((10, 3), tf.float32, partition_shape=(3, 3), partition_offset=(0, 0))
    second = table._initial_values((10, 3), tf.float32, partition_shape=(4, 3), partition_offset=(3, 0))
    third = table._initial_values((10, 3), tf.float32, partition_shape=(3, 3), partition_offset=(7, 0))
    assert first.shape == (3, 3) and second.shape == (4, 3) and third.shape == (3, 3)
    assert not np.any(first.numpy()) and not np.any(second.numpy()[0])  # rows 0..3: zero
    assert np.all(np.abs(second.numpy()[1:]) > 0) and np.all(np.abs(third.numpy()) > 0)


def test_a_table_is_split_into_shards_of_at_least_min_shard_mb_at_most_one_a_parameter_server():
    mb = 1 << 20
    assert shard_count((mb // 16, 4), tf.float32, 2, 1.0) == 1  # 1 MB: one shard of 1 MB
    assert shard_count((mb // 8, 4), tf.float32, 2, 1.0) == 2
    assert shard_count((10 * mb, 4), tf.float32, 2, 1.0) == 2  # 40 MB, two parameter servers
    assert shard_count((3, 4), tf.float32, 8, 1e-6) == 3  # never more shards than rows


def test_a_restore_still_refuses_a_checkpoint_missing_one_of_the_objects(tmp_path):
    # `restore` tolerates the slot wrappers a sharded table's restore makes, and nothing else.
    path = tf.train.Checkpoint(a=tf.Variable([1.0])).save(str(tmp_path / "ckpt"))
    a, b = tf.Variable([0.0]), tf.Variable([0.0])
    restore(tf.train.Checkpoint(a=a), path)
    assert a.numpy().tolist() == [1.0]
    with pytest.raises(ModelDirError, match="does not hold the model"):
        restore(tf.train.Checkpoint(a=a, b=b), path)


def test_the_table_size_bound_is_per_parameter_server_on_a_ps_job(tmp_path, monkeypatch):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(spec_text("training_job"))
    spec = load_spec(str(spec_path))  # the video table: 500 rows of dim 8, 48,000 bytes with FTRL's slots
    limit = 30_000 / 1e9  # GB
    assert [m for m in oversized_tables(spec, limit) if "table 'video'" in m]
    assert not [m for m in oversized_tables(spec, limit, parameter_servers=2) if "table 'video'" in m]
    assert "(2.4e-05 GB on each of 2 parameter servers)" in oversized_tables(spec, 20_000 / 1e9,
                                                                             parameter_servers=2)[-1]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"],
                                                            "ps": ["c:1", "d:1"]}, "task": {"type": "chief"}}))
    assert parameter_servers() == 2  # what the configuration checks divide by (`check_against_spec`)


@pytest.mark.parametrize("raw, message", [
    ("{not json", "TF_CONFIG: not valid JSON"),
    ('{"cluster": {"ps": "c:1"}}', 'TF_CONFIG: expected {"cluster": {"worker": ["host:port", ...]}'),
    ('[1, 2]', 'TF_CONFIG: expected {"cluster": {"worker": ["host:port", ...]}')])
def test_a_malformed_tf_config_is_a_config_error_naming_it(raw, message, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ConfigError) as info:
        parameter_servers()
    assert message in str(info.value)


# ---- one loopback cluster ----

def start(args: list[str], log: str, tf_config: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "TF_CONFIG": json.dumps(tf_config)})
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_for(condition, what: str, *procs: subprocess.Popen) -> None:
    """Poll `condition` until it holds; fail (naming `what`) on timeout or if one of `procs` exits first."""
    deadline = time.time() + TIMEOUT
    while not condition():
        for p in procs:
            assert p.poll() is None, f"exited ({p.returncode}) while waiting for {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def checkpoint_steps(model_dir: str) -> list[int]:
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(n[5:-6]) for n in os.listdir(directory) if n.startswith("ckpt-") and n.endswith(".index"))


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def table_values(checkpoint: str, table: str) -> dict[str, np.ndarray]:
    """The rows and FTRL slots of `table` in `checkpoint` (each saved as one variable, whatever its shards)."""
    reader = tf.train.load_checkpoint(checkpoint)
    prefix = f"model/encoder/tables/{table}/embeddings/"
    return {"rows": reader.get_tensor(prefix + ".ATTRIBUTES/VARIABLE_VALUE"),
            **{slot: reader.get_tensor(f"{prefix}.OPTIMIZER_SLOT/ftrl/{slot}/.ATTRIBUTES/VARIABLE_VALUE")
               for slot in ("accumulator", "linear")}}


@pytest.fixture(scope="module")
def ps_job(tmp_path_factory):
    """The cluster's job (see the module docstring): {spec, data, model_dir, logs, the chief's outputs, servers'
    exit codes, the checkpoint the chief was killed after}."""
    root = tmp_path_factory.mktemp("ps_job")
    spec = root / "spec.yaml"
    spec.write_text(spec_text("training_job"))
    generate(load_spec(str(spec)), 2000, str(root / "data"), n_shards=4, seed=1)
    data, model_dir = str(root / "data" / "part-*"), str(root / "model")
    ports = free_ports(5)
    cluster = {"chief": [f"localhost:{ports[0]}"], "worker": [f"localhost:{p}" for p in ports[1:3]],
               "ps": [f"localhost:{p}" for p in ports[3:]]}
    args = [str(spec), "--model-dir", model_dir, "--data", data, "--no-validation",
            "--set", f"training.batch_size={BATCH}", "--set", "training.checkpoint_every=5",
            "--set", "training.log_every=5", "--set", "training.progress=false",
            "--set", "training.min_shard_mb=0.004",  # user and video tables (9.6 and 16 kB): two shards each
            "--set", "training.cluster_grace_seconds=120",
            "--set", "model.student.user_tower=[16,8]", "--set", "model.student.item_tower=[16,8]",
            "--set", "model.teacher.experts=2", "--set", "model.teacher.expert_layers=[16]",
            "--set", "model.teacher.task_tower=[8]"]
    servers = {}

    def serve(kind: str, index: int) -> None:
        servers[kind, index] = start(args, str(root / f"{kind}{index}.log"),
                                     {"cluster": cluster, "task": {"type": kind, "index": index}})

    def chief(steps: int, name: str) -> subprocess.Popen:
        return start(args + ["--set", f"training.max_steps={steps}"], str(root / f"{name}.log"),
                     {"cluster": cluster, "task": {"type": "chief", "index": 0}})

    try:
        for kind in ("ps", "worker"):
            for index in (0, 1):
                serve(kind, index)
        def checkpointed_past(step: int) -> bool:
            return max(checkpoint_steps(model_dir), default=0) > step

        first = chief(LONG, "chief_first")
        wait_for(lambda: checkpointed_past(0), "the first checkpoint", first)
        servers["worker", 1].send_signal(signal.SIGKILL)  # a worker dies mid-job
        servers["worker", 1].wait()
        worker_killed_after = max(checkpoint_steps(model_dir))
        wait_for(lambda: checkpointed_past(worker_killed_after + 5), "checkpoints after the worker died", first)
        serve("worker", 1)  # restarted: it rejoins
        first.send_signal(signal.SIGKILL)  # the chief dies
        first.wait()
        killed_after = max(checkpoint_steps(model_dir))
        second = chief(LONG, "chief_second")  # resumes on the same servers
        wait_for(lambda: checkpointed_past(killed_after), "a checkpoint of the resumed chief", second)
        servers["ps", 1].send_signal(signal.SIGKILL)  # a parameter server dies: the job fails
        servers["ps", 1].wait()
        second.wait(timeout=TIMEOUT)
        ps_lost_after = max(checkpoint_steps(model_dir))
        serve("ps", 1)  # restarted
        # a new model directory warm-started from the job's last checkpoint, one step, on the same servers
        warm_dir = str(root / "warm")
        warm_args = [warm_dir if a == model_dir else a for a in args]
        warm = start(warm_args + ["--warm-start", model_dir, "--set", "training.max_steps=1"],
                     str(root / "chief_warm.log"), {"cluster": cluster, "task": {"type": "chief", "index": 0}})
        warm.wait(timeout=TIMEOUT)
        assert warm.returncode == 0, read(str(root / "chief_warm.log"))
        third = chief(ps_lost_after + 1, "chief_third")  # the same command on the chief: it resumes, one more step
        third.wait(timeout=TIMEOUT)
        assert third.returncode == 0, read(str(root / "chief_third.log"))
        exits = {}
        for key, proc in servers.items():  # every task exits on its own once the chief is done
            try:
                exits[key] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                exits[key] = None
        return {"spec": str(spec), "data": data, "model_dir": model_dir, "root": str(root),
                "first": read(str(root / "chief_first.log")), "second": read(str(root / "chief_second.log")),
                "second_code": second.returncode, "third": read(str(root / "chief_third.log")),
                "worker_killed_after": worker_killed_after, "killed_after": killed_after,
                "ps_lost_after": ps_lost_after, "exits": exits, "warm_dir": warm_dir,
                "warm": read(str(root / "chief_warm.log"))}
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_a_ps_job_shards_its_tables_survives_a_dead_worker_and_its_tasks_exit_when_the_chief_finishes(ps_job):
    assert "table user in 2 shards, table video in 2 shards" in ps_job["first"]
    assert "table hour in 1 shard" in ps_job["first"]
    # The first chief kept training and checkpointing (two checkpoints at least) after worker 1 was killed.
    assert ps_job["killed_after"] >= ps_job["worker_killed_after"] + 10
    assert ps_job["exits"] == {(k, i): 0 for k in ("ps", "worker") for i in (0, 1)}
    assert "stopped serving (the chief finished)" in read(os.path.join(ps_job["root"], "ps0.log"))


@pytest.mark.slow
def test_a_chief_killed_with_sigkill_resumes_from_its_last_checkpoint_on_the_same_servers(ps_job):
    killed_after = ps_job["killed_after"]
    checkpoints = os.path.join(ps_job["model_dir"], "checkpoints")
    assert f"resuming from {os.path.join(checkpoints, f'ckpt-{killed_after}')}" in ps_job["second"]


@pytest.mark.slow
def test_a_parameter_server_killed_fails_the_job_clearly_and_the_rerun_resumes_with_rows_and_ftrl_slots(ps_job):
    lost_after = ps_job["ps_lost_after"]
    assert lost_after > ps_job["killed_after"]
    assert ps_job["second_code"] == 2
    assert "cluster error: ps 1 (localhost:" in ps_job["second"]
    assert "stopped answering: the variables it held are lost; restart it, then rerun" in ps_job["second"]
    assert "Traceback" not in ps_job["second"]
    checkpoints = os.path.join(ps_job["model_dir"], "checkpoints")
    assert f"resuming from {os.path.join(checkpoints, f'ckpt-{lost_after}')}" in ps_job["third"]
    assert f"trained to step {lost_after + 1} (1 steps here, {BATCH} examples" in ps_job["third"]
    for table, (rows, dim) in TABLES.items():
        before = table_values(os.path.join(checkpoints, f"ckpt-{lost_after}"), table)
        after = table_values(os.path.join(checkpoints, f"ckpt-{lost_after + 1}"), table)
        assert before["rows"].shape == (rows, dim)
        changed = np.any(before["rows"] != after["rows"], axis=1)
        # Sparse: the one step after the restore changed only rows of its batch; the others, rows and slots,
        # are exactly the restored ones (a slot restored as zero, or a row re-initialised, would differ).
        assert 0 < changed.sum() <= BATCH
        for name in ("rows", "accumulator", "linear"):
            np.testing.assert_array_equal(before[name][~changed], after[name][~changed])
        # The step's rows were updated from their restored slots: FTRL's accumulator only grows (restarted
        # slots would start again at the initial accumulator, below what the earlier steps accumulated).
        assert np.all(after["accumulator"][changed] >= before["accumulator"][changed])
        assert np.any(before["accumulator"][changed] > before["accumulator"].min())
        # Usage counts are kept by the sharded tables too (each shard's reads at its row offset): the step counted
        # every row it changed, in whichever shard it lies, and no others went down.
        (counts_before, _), (counts_after, _) = (read_counts(os.path.join(checkpoints, f"ckpt-{s}"))
                                                 for s in (lost_after, lost_after + 1))
        (name,) = [n for n in counts_after if n.removeprefix("embedding_") == table]
        counted = counts_after[name] - counts_before[name]
        assert counted.min() >= 0 and counted.sum() >= changed.sum() and np.all(counted[changed] > 0)


@pytest.mark.slow
def test_a_ps_job_warm_starts_from_a_checkpoint_shard_by_shard(ps_job):
    lost_after = ps_job["ps_lost_after"]
    previous = os.path.join(ps_job["model_dir"], "checkpoints", f"ckpt-{lost_after}")
    assert f"warm start from {previous} (continuing at step {lost_after})" in ps_job["warm"]
    assert f"trained to step {lost_after + 1} (1 steps here" in ps_job["warm"]
    after = os.path.join(ps_job["warm_dir"], "checkpoints", f"ckpt-{lost_after + 1}")
    for table, (rows, dim) in TABLES.items():  # two shards each: every shard's rows carried from the checkpoint
        before, now = table_values(previous, table), table_values(after, table)
        changed = np.any(before["rows"] != now["rows"], axis=1)
        assert 0 < changed.sum() <= BATCH
        trained = before["accumulator"].max(axis=1) > before["accumulator"].min()  # rows the previous job updated
        for half in (slice(0, rows // 2), slice(rows // 2, rows)):
            assert (~changed[half] & trained[half]).sum() > rows // 10
        for name in ("rows", "accumulator", "linear"):
            np.testing.assert_array_equal(before[name][~changed], now[name][~changed])


@pytest.mark.slow
def test_a_ps_checkpoint_exports_on_one_machine_and_passes_verify_export(ps_job, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    base = str(tmp_path / "export")
    assert main(["export", ps_job["spec"], "--model-dir", ps_job["model_dir"], "--export-base", base,
                 "--data", ps_job["data"]]) == 0
    assert main(["verify-export", base, "--data", ps_job["data"], "--batches", "1"]) == 0
