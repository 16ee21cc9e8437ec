"""Logic of `scripts/bench_scale.py`: parameter-server jobs on a loopback cluster with one id table of 100k to 10M rows.

Every run is the real job: `python -m trainer.task` in five processes (a chief, 2 workers, 2 parameter servers)
with their TF_CONFIG, on synthetic data of a spec whose `video_id` table has the given rows (Zipf-drawn ids).
Each task's resident memory is sampled while it runs (its peak: the largest VmHWM seen). The step time leaves
out the first log window (tracing, dataset start-up): from history.jsonl's `examples_per_sec` of the later
windows. The same data on one machine (no TF_CONFIG) is the single-machine figure, and on two workers under
MultiWorkerMirroredStrategy (a full copy of every table on each; `training.batch_size` is the global batch there
too) the mirrored figure.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from benchmarks.local_servers import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIM = 16


def spec_text(rows: int) -> str:
    """A small spec whose video table has `rows` rows (hashed ids), the others small."""
    return f"""name: scale_{rows}
data: {{format: tfrecord, compression: GZIP}}
group_key: [user_id]
features:
  - {{name: user_id, kind: categorical, side: user, dtype: int64, cardinality: 10000,
     vocabulary: {{source: hash, buckets: 10000}}, embedding: {{table: user, dim: {DIM}}}}}
  - {{name: user_age, kind: numeric, side: user, transform: [log1p, zscore], default: 0.0}}
  - {{name: hour, kind: categorical, side: context, dtype: int64, cardinality: 24,
     vocabulary: {{source: data}}, embedding: {{dim: 4}}}}
  - {{name: video_id, kind: categorical, side: item, dtype: int64, cardinality: {rows},
     vocabulary: {{source: hash, buckets: {rows}}}, embedding: {{table: video, dim: {DIM}}}}}
  - {{name: duration, kind: numeric, side: item, transform: [log1p, zscore]}}
labels:
  - {{name: click, type: binary}}
"""


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Run:
    """One job's figures."""

    label: str
    step_ms: float
    examples_per_sec: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # task -> MB
    shards: str = ""


def train_args(spec: str, data: str, model_dir: str, batch: int, steps: int, log_every: int,
               steps_per_call: int = 10) -> list[str]:
    return [spec, "--model-dir", model_dir, "--data", data, "--no-validation",
            "--set", f"training.steps_per_call={steps_per_call}",
            "--set", f"training.batch_size={batch}", "--set", f"training.max_steps={steps}",
            "--set", f"training.log_every={log_every}", "--set", f"training.checkpoint_every={steps}",
            "--set", "training.eval_every=0", "--set", "training.progress=false",
            "--set", "training.epochs=1000",  # one machine: the data repeat as on the cluster (max_steps ends it)
            "--set", "training.min_shard_mb=1", "--set", "training.shuffle_buffer=2000",
            "--set", "model.student.user_tower=[32,16]", "--set", "model.student.item_tower=[32,16]",
            "--set", "model.teacher.experts=2", "--set", "model.teacher.expert_layers=[32]",
            "--set", "model.teacher.task_tower=[16]"]


def _start(args: list[str], log: str, tf_config: dict | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "trainer.task", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _rate(model_dir: str, batch: int) -> float:
    """Examples/s over the log windows after the first (each window's rate is its examples over its seconds)."""
    with open(os.path.join(model_dir, "history.jsonl")) as fh:
        windows = [json.loads(line) for line in fh if "examples_per_sec" in line]
    later = windows[1:] or windows
    seconds = sum(1 / w["examples_per_sec"] for w in later)  # seconds per example, summed over equal windows
    return len(later) / seconds


SETUPS = {"ps": "PS cluster", "single": "one machine", "mirrored": "2 workers, MWMS"}  # setup -> its label


def job(label: str, args: list[str], work: str, batch: int, setup: str, timeout: float = 1800) -> Run:
    """Run the job in `setup` (SETUPS: a loopback PS cluster, one process, or two mirrored workers) and
    measure it."""
    os.makedirs(work, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    if setup == "mirrored":  # worker 0 is the chief: it writes the model directory and its log is chief.log
        ports = free_ports(2)
        spec = {"worker": [f"localhost:{p}" for p in ports]}
        procs["worker1"] = _start(args, os.path.join(work, "worker1.log"),
                                  {"cluster": spec, "task": {"type": "worker", "index": 1}})
        procs["chief"] = _start(args, os.path.join(work, "chief.log"),
                                {"cluster": spec, "task": {"type": "worker", "index": 0}})
    elif setup == "ps":
        ports = free_ports(5)
        spec = {"chief": [f"localhost:{ports[0]}"], "worker": [f"localhost:{p}" for p in ports[1:3]],
                "ps": [f"localhost:{p}" for p in ports[3:]]}
        for kind in ("ps", "worker"):
            for i in (0, 1):
                procs[f"{kind}{i}"] = _start(args, os.path.join(work, f"{kind}{i}.log"),
                                             {"cluster": spec, "task": {"type": kind, "index": i}})
        procs["chief"] = _start(args, os.path.join(work, "chief.log"),
                                {"cluster": spec, "task": {"type": "chief", "index": 0}})
    else:
        procs["chief"] = _start(args, os.path.join(work, "chief.log"), None)
    peaks = {name: 0.0 for name in procs}
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p in procs.values()):
            for name, p in procs.items():
                rss = peak_rss_mb(p.pid) if p.poll() is None else None
                if rss is not None:
                    peaks[name] = max(peaks[name], rss)
            if time.time() > deadline:
                raise TimeoutError(f"{label}: still running after {timeout} s (logs in {work})")
            if procs["chief"].poll() not in (None, 0):
                with open(os.path.join(work, "chief.log")) as fh:
                    tail = fh.read()[-3000:]
                raise RuntimeError(f"{label}: the chief failed:\n{tail}")
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    with open(os.path.join(work, "chief.log")) as fh:
        shards = next((line.strip() for line in fh if line.startswith("parameter servers:")), "")
    rate = _rate(os.path.join(work, "model"), batch)
    return Run(label, 1000 * batch / rate, rate, peaks, shards)
