"""The training job end to end: resume after kill -9, refusing a changed spec or config, two workers.

The jobs run as subprocesses (`python -m trainer.task`), like in production; the small synthetic spec and
data keep each to a few seconds of training. `training.deterministic` fixes the data order, so a killed and
resumed run must end with exactly the weights of an uninterrupted one; the id dropout (on the `hour` ids) draws
from the seed and the step, so it changes nothing of that.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.local_servers import free_ports
from conftest import spec_text
from trainer.cli import main
from trainer.spec import load_spec
from trainer.data.datasets.synthetic import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = spec_text("training_job")
ROWS, SHARDS = 2000, 4
BATCH, EPOCHS, CHECKPOINT_EVERY = 64, 3, 5
FULL_STEPS = -(-ROWS * EPOCHS // BATCH)  # 94: the last batch holds 48 rows (6000 = 93 * 64 + 48)
SMALL_MODEL = ["--set", "model.student.user_tower=[16,8]", "--set", "model.student.item_tower=[16,8]",
               "--set", "model.teacher.experts=2", "--set", "model.teacher.expert_layers=[16]",
               "--set", "model.teacher.task_tower=[8]", "--set", "model.id_dropout=0.1"]  # seeded: runs stay equal
TIMEOUT = 240  # seconds any one job may take on a loaded machine


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The spec file and its data: (spec path, training glob, validation glob)."""
    root = tmp_path_factory.mktemp("job")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    generate(load_spec(str(spec)), ROWS, str(root / "data"), n_shards=SHARDS, seed=1)
    return str(spec), str(root / "data" / "part-*"), str(root / "data" / "part-00000*")


def train_args(job, model_dir: str, *extra: str, validate: bool = True) -> list[str]:
    spec, data, validation = job
    return [spec, "--model-dir", model_dir, "--data", data, *(["--validation", validation] if validate else []),
            "--set", f"training.batch_size={BATCH}", "--set", f"training.epochs={EPOCHS}",
            "--set", "training.shuffle_buffer=500", "--set", "training.deterministic=true",
            "--set", "training.log_every=2", "--set", f"training.checkpoint_every={CHECKPOINT_EVERY}",
            "--set", "training.progress=false", *SMALL_MODEL, *extra]


def start(args: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m trainer.task ARGS` with stdout and stderr going to `log`."""
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    base.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})})
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=base, stdout=out,
                                stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: str, *others: subprocess.Popen) -> tuple[int, str]:
    """Wait for `proc` (killing it and `others` on timeout): its exit code and output."""
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for p in (proc, *others):
            p.kill()
            p.wait()
    with open(log) as fh:
        return proc.returncode, fh.read()


def finish(proc: subprocess.Popen, log: str, *others: subprocess.Popen) -> str:
    """The output of `proc`, which must exit 0 (see `wait`)."""
    code, output = wait(proc, log, *others)
    assert code == 0, f"{proc.args} exited {code}:\n{output[-4000:]}"
    return output


def checkpoint_state(model_dir: str, check: str = "all") -> tuple[int | None, list[int]]:
    """(latest step, kept steps) from MODEL_DIR/checkpoints/checkpoint.

    `check` "all": assert that the files of every checkpoint it names exist (a finished job); "latest": only
    the latest's (a killed job: TensorFlow records the new state, deletes the oldest files, then records
    again, so a kill in between leaves the oldest listed); "none": a running job.
    """
    directory = os.path.join(model_dir, "checkpoints")
    try:
        with open(os.path.join(directory, "checkpoint")) as fh:
            text = fh.read()
    except FileNotFoundError:
        return None, []
    latest = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"$', text, re.M)
    kept = [int(n) for n in re.findall(r'^all_model_checkpoint_paths: "ckpt-(\d+)"$', text, re.M)]
    assert latest and int(latest.group(1)) in kept, text
    for n in {"all": kept, "latest": [int(latest.group(1))], "none": []}[check]:
        assert os.path.isfile(os.path.join(directory, f"ckpt-{n}.index")), (n, os.listdir(directory))
        assert os.path.isfile(os.path.join(directory, f"ckpt-{n}.data-00000-of-00001")), (n, os.listdir(directory))
    return int(latest.group(1)), kept


def history_steps(model_dir: str, complete: bool = True) -> list[int]:
    """Steps of MODEL_DIR/history.jsonl's training lines (those with losses); `complete`: every line must parse
    (else a last partial one may not)."""
    try:
        with open(os.path.join(model_dir, "history.jsonl")) as fh:
            lines = fh.read().split("\n")
    except FileNotFoundError:
        return []
    if lines[-1] == "":
        lines.pop()
    elif not complete:
        lines.pop()  # being written
    return [row["step"] for row in map(json.loads, lines) if "loss/total" in row]


def metrics(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "metrics.json")) as fh:
        return json.load(fh)


def assert_nothing_half_written(model_dir: str) -> None:
    checkpoint_state(model_dir)
    history_steps(model_dir)
    metrics(model_dir)
    leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(model_dir) for n in dirs + files
                 if ".tmp" in n or "_temp" in n]
    assert not leftovers


def final_variables(model_dir: str) -> dict[str, np.ndarray]:
    """Every model and optimizer value of the latest checkpoint (not the input position or save counter)."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.split("/")[0] in ("model", "ftrl", "adagrad", "step", "usage")}


def usage_counts(model_dir: str) -> dict[str, np.ndarray]:
    """The latest checkpoint's usage counts, table layer name -> reads per row."""
    from trainer.training.usage import read_counts
    counts, counted_from = read_counts(os.path.join(model_dir, "checkpoints", f"ckpt-{checkpoint_state(model_dir)[0]}"))
    assert counted_from == 0
    return counts


def kill_past_checkpoint(proc: subprocess.Popen, model_dir: str, log: str, at_least: int) -> int:
    """Wait for a checkpoint at step `at_least` or later and for the job to have trained beyond it, then kill -9
    the job; the step of that checkpoint."""
    deadline, seen = time.time() + TIMEOUT, None
    while time.time() < deadline and proc.poll() is None:
        latest, _ = checkpoint_state(model_dir, "none")
        if latest is not None and latest >= at_least and max([0, *history_steps(model_dir, False)]) > latest:
            seen = latest
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(log) as fh:
        assert seen is not None and proc.returncode == -signal.SIGKILL, \
            f"killed too late (exit {proc.returncode}); output:\n{fh.read()[-3000:]}"
    return seen


@pytest.mark.slow
def test_a_job_killed_with_sigkill_resumes_from_its_last_checkpoint_and_ends_like_an_uninterrupted_one(
        job, tmp_path, capsys, monkeypatch):
    reference, victim = str(tmp_path / "reference"), str(tmp_path / "victim")
    ref = start(train_args(job, reference), str(tmp_path / "reference.log"))
    proc = start(train_args(job, victim), str(tmp_path / "victim.log"))
    seen = kill_past_checkpoint(proc, victim, str(tmp_path / "victim.log"), 3 * CHECKPOINT_EVERY)
    killed_at, _ = checkpoint_state(victim, "latest")  # what the killed job left: a complete latest checkpoint
    assert killed_at >= seen
    trained_before_kill = max(history_steps(victim, False))
    assert trained_before_kill > seen
    assert not os.path.exists(os.path.join(victim, "metrics.json"))

    # Resumed with one step a graph call (the reference runs two, up to each log): the same steps, whatever the call
    out = finish(start(train_args(job, victim, "--set", "training.steps_per_call=1"), str(tmp_path / "resumed.log")),
                 str(tmp_path / "resumed.log"), ref)
    assert f"resuming from {os.path.join(victim, 'checkpoints', f'ckpt-{killed_at}')}" in out
    finish(ref, str(tmp_path / "reference.log"))
    # The killed job had logged steps past its checkpoint; resumed, it logged them again, once.
    assert history_steps(victim) == history_steps(reference) == list(range(2, FULL_STEPS + 1, 2))

    whole, resumed = metrics(reference), metrics(victim)
    assert whole["step"] == resumed["step"] == FULL_STEPS  # the data's end, both times
    assert whole["training"]["resumed_from"] is None and whole["training"]["examples"] == ROWS * EPOCHS
    # Resumed at the last complete checkpoint: at most checkpoint_every steps were lost.
    assert resumed["training"]["resumed_from"] == killed_at >= seen
    assert trained_before_kill - killed_at <= CHECKPOINT_EVERY
    assert resumed["training"]["steps_run"] == FULL_STEPS - killed_at
    # The input iterator resumed where the checkpoint was taken (all batches but the last are full):
    # the killed job's checkpointed batches plus the resumed job's examples are exactly the data, once.
    assert killed_at * BATCH + resumed["training"]["examples"] == whole["training"]["examples"]
    # With a fixed data order the same batches were trained in the same order: identical results, the usage
    # counts (reads per row, in the checkpoint) included.
    expected, got = final_variables(reference), final_variables(victim)
    assert sorted(expected) == sorted(got) and len(expected) > 20
    assert any(name.startswith("usage/counts/") for name in expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    counts = usage_counts(victim)  # user_id reads the user table once an example (no id dropout on it)
    assert int(counts["embedding_user"].sum()) == ROWS * EPOCHS and int(counts["embedding_hour"].sum()) == ROWS * EPOCHS
    assert {k: v for k, v in resumed["validation"].items() if k != "seconds"} == \
           {k: v for k, v in whole["validation"].items() if k != "seconds"}
    assert whole["validation"]["student"]["auc"] > 0.5
    for model_dir in (reference, victim):
        assert_nothing_half_written(model_dir)
        latest, kept = checkpoint_state(model_dir)
        assert latest == FULL_STEPS and len(kept) == 3  # keep_checkpoints

    # The data have ended: the same command trains no further; one more epoch (a resumable knob) reads it.
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", *train_args(job, reference, validate=False)]) == 0
    assert f"trained to step {FULL_STEPS} (0 steps here, 0 examples" in capsys.readouterr().out
    assert main(["train", *train_args(job, reference, "--set", f"training.epochs={EPOCHS + 1}", validate=False)]) == 0
    more = -(-ROWS // BATCH)
    assert f"trained to step {FULL_STEPS + more} ({more} steps here, {ROWS} examples" in capsys.readouterr().out


@pytest.mark.slow
def test_resuming_refuses_a_changed_spec_or_model_knob_but_accepts_a_longer_run(job, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    model_dir = str(tmp_path / "model")
    assert main(["train", *train_args(job, model_dir, "--set", "training.max_steps=3", validate=False)]) == 0
    assert "trained to step 3 (3 steps here" in capsys.readouterr().out
    with open(os.path.join(model_dir, "run.json")) as fh:
        recorded = fh.read()

    assert main(["train", *train_args(job, model_dir, "--set", "training.max_steps=3",
                                      "--set", "model.student.similarity=cosine",
                                      "--set", "training.seed=7")]) == 2
    err = capsys.readouterr().err
    assert f"config error: {model_dir}/run.json: this model directory was trained with another spec or config" in err
    assert 'config: model.student.similarity: "dot" -> "cosine"' in err
    assert "config: training.seed: 0 -> 7" in err and "max_steps" not in err

    changed = tmp_path / "changed.yaml"  # the same spec elsewhere, with one embedding dimension changed
    changed.write_text(SPEC.replace("embedding: {table: user, dim: 8}", "embedding: {table: user, dim: 16}"))
    other_job = (str(changed), *job[1:])
    assert main(["train", *train_args(other_job, model_dir, "--set", "training.max_steps=3")]) == 2
    err = capsys.readouterr().err
    assert "spec: features.user_id.embedding.dim: 8 -> 16" in err and "config:" not in err
    with open(os.path.join(model_dir, "run.json")) as fh:
        assert fh.read() == recorded  # refused runs change nothing
    assert checkpoint_state(model_dir)[0] == 3

    # Resumable knobs (how long, how often to log / checkpoint) may change: training continues.
    assert main(["train", *train_args(job, model_dir, "--set", "training.max_steps=5", "--set", "training.log_every=1",
                                      "--set", "training.checkpoint_every=1", validate=False)]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "trained to step 5 (2 steps here" in out
    assert metrics(model_dir)["training"]["resumed_from"] == 3
    assert checkpoint_state(model_dir) == (5, [3, 4, 5])
    assert history_steps(model_dir) == [2, 3, 4, 5]  # log_every 2 and the first run's end (3), then 1


def start_workers(job, model_dirs: list[str], logs: str, *extra: str, validate: bool = True):
    """One job per worker of a loopback cluster (worker i uses model_dirs[i]): (processes, log paths)."""
    ports = free_ports(len(model_dirs))
    procs, log_paths = [], []
    for index, model_dir in enumerate(model_dirs):
        tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        log_paths.append(f"{logs}{index}.log")
        procs.append(start(train_args(job, model_dir, *extra, validate=validate), log_paths[-1],
                           env={"TF_CONFIG": json.dumps(tf_config)}))
    return procs, log_paths


@pytest.mark.slow
def test_two_workers_train_in_sync_and_only_the_chief_writes_the_model_dir(job, tmp_path, capsys, monkeypatch):
    model_dir, steps = str(tmp_path / "model"), 6
    procs, logs = start_workers(job, [model_dir, model_dir], str(tmp_path / "worker"),
                                "--set", f"training.max_steps={steps}", "--set", "training.checkpoint_every=4",
                                "--set", "training.eval_every=4")
    outputs = [finish(procs[0], logs[0], procs[1]), finish(procs[1], logs[1], procs[0])]
    for out in outputs:  # each step, each worker reads half the global batch
        assert f"trained to step {steps} ({steps} steps here, {steps * BATCH} examples" in out
    assert "validation" in outputs[0] and "validation" not in outputs[1]  # evaluation: the chief's alone
    assert checkpoint_state(model_dir) == (steps, [4, steps])
    summary = metrics(model_dir)
    assert summary["step"] == steps and summary["training"]["steps_run"] == steps
    assert 0.0 < summary["validation"]["student"]["auc"] < 1.0
    steps_logged = history_steps(model_dir)
    assert steps_logged[:2] == [2, 4] and steps_logged[-1] == steps
    with open(os.path.join(model_dir, "history.jsonl")) as fh:
        evaluated = [row["step"] for row in map(json.loads, fh) if "eval/student/auc" in row]
    assert evaluated == [4, steps]  # eval_every 4, then the final validation
    assert not os.path.exists(os.path.join(model_dir, "workers"))  # the other worker's scratch checkpoints
    assert_nothing_half_written(model_dir)
    # Usage counts are summed over the workers: each read half of every global batch; the chief logs the rows
    # read at least once (TensorBoard's usage/ scalars)
    counts = usage_counts(model_dir)["embedding_user"]
    assert int(counts.sum()) == steps * BATCH
    with open(os.path.join(model_dir, "history.jsonl")) as fh:
        seen = [row for row in map(json.loads, fh) if "usage/rows_seen/user" in row]
    assert seen[-1]["step"] == steps and seen[-1]["usage/rows_seen/user"] == np.count_nonzero(counts)
    assert seen[-1]["usage/rows_seen_share/user"] == pytest.approx(np.count_nonzero(counts) / len(counts))

    # The multi-worker checkpoint (no input position in it) resumes on a single worker.
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", *train_args(job, model_dir, "--set", f"training.max_steps={steps + 2}",
                                      validate=False)]) == 0
    out = capsys.readouterr().out
    assert "holds no input position" in out and f"trained to step {steps + 2} (2 steps here" in out
    assert checkpoint_state(model_dir)[0] == steps + 2
    assert int(usage_counts(model_dir)["embedding_user"].sum()) == (steps + 2) * BATCH  # restored whole, then counted

    # Workers that would resume from different checkpoints (here: not one shared MODEL_DIR) both refuse,
    # instead of waiting for each other forever.
    procs, logs = start_workers(job, [model_dir, str(tmp_path / "elsewhere")], str(tmp_path / "mismatch"),
                                "--set", f"training.max_steps={steps + 4}", validate=False)
    for proc, log, other, resuming in ((procs[0], logs[0], procs[1], f"{model_dir}/checkpoints/ckpt-{steps + 2}"),
                                       (procs[1], logs[1], procs[0], "none")):
        code, output = wait(proc, log, other)
        assert code == 2, output[-4000:]
        assert f"model directory error: the workers would resume from different checkpoints (this one: {resuming}); " \
               "give every worker the same --model-dir, on a filesystem they share" in output
    assert checkpoint_state(model_dir)[0] == steps + 2


@pytest.mark.slow
def test_a_bad_record_met_during_training_is_a_data_error_naming_it(job, tmp_path, capsys, monkeypatch):
    """A NaN far past the first batches (the fit, reused here, never read it) stops the job with a data error
    naming the file, record and column, not a TensorFlow traceback."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    from trainer.data.writers import Column, write_tfrecord
    rng = np.random.default_rng(0)
    n = 400
    duration = rng.uniform(1, 100, n).tolist()
    columns = lambda d: [Column("user_id", "int", rng.integers(0, 300, n).tolist()),  # noqa: E731
                         Column("user_age", "float", rng.uniform(10, 60, n).tolist()),
                         Column("hour", "int", (np.arange(n) % 24).tolist()),
                         Column("video_id", "int", rng.integers(0, 500, n).tolist()),
                         Column("duration", "float", d), Column("click", "int", (np.arange(n) % 2).tolist())]
    clean, bad = str(tmp_path / "clean.tfrecord.gz"), str(tmp_path / "bad.tfrecord.gz")
    write_tfrecord(clean, columns(duration), range(n))
    write_tfrecord(bad, columns(duration[:300] + [float("nan")] + duration[301:]), range(n))
    assert main(["analyze", job[0], "--data", clean, "--out", str(tmp_path / "fit")]) == 0
    capsys.readouterr()
    args = train_args((job[0], bad, None), str(tmp_path / "model"), "--preprocessing", str(tmp_path / "fit"),
                      validate=False)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert f"data error: {bad}#300: NaN or inf in column 'duration' (read by feature 'duration')" in err, err[-2000:]
