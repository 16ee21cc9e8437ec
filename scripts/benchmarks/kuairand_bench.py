"""Training throughput on KuaiRand, this checkout against a baseline commit and a plain Keras MMoE
(`scripts/bench_training.py` prints it).

Every measured run is a fresh process (`train_run.py`) with one version of prerank first on PYTHONPATH: this
checkout ("after"), or the `trainer` and `serving` packages and `feature_specs/` of the baseline commit
(`git archive`, "before"). Each repeat runs every variant once, the versions alternating (before first in even
repeats, after first in odd ones), so that load from other processes falls on both alike. The variants: prerank's
teacher alone without target attention, the teacher alone with the rest of the shipped config (target attention
on: what the joint model adds the student to), and the joint model with the shipped config of the version's own
KuaiRand spec, each at the spec's batch size and at 512, one epoch from the GZIP TFRecords (the training job
itself: `trainer.train`); and the plain tf.keras MMoE of `keras_mmoe` with `model.fit` and Adam over the same rows
as numpy arrays, batch 512. A preprocessing fitted once on the files is handed to every job.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "train_run.py")
TEACHER = ["model.mode=teacher", "model.teacher.target_attention=false"]


@dataclass(frozen=True)
class Variant:
    """One measured configuration: prerank's job with these --set overrides, or the Keras baseline."""

    key: str
    label: str
    kind: str  # "prerank" or "keras"
    overrides: tuple[str, ...] = ()
    batch_size: int | None = None  # None: the spec's


def variants(batch_sizes: tuple[int | None, ...]) -> list[Variant]:
    """The Keras baseline (batch 512) and prerank's teacher (without and with target attention) and joint jobs at
    each batch size (None: the spec's)."""
    out = [Variant("keras", "plain tf.keras MMoE, model.fit + Adam, numpy in memory", "keras", batch_size=512)]
    for batch in batch_sizes:
        size = [f"training.batch_size={batch}"] if batch else []
        name = f"batch {batch}" if batch else "shipped batch"
        out.append(Variant(f"teacher@{batch or 'spec'}", f"teacher, no target attention, {name}", "prerank",
                           tuple(TEACHER + size), batch))
        out.append(Variant(f"teacher-ta@{batch or 'spec'}", f"teacher, shipped config (attention), {name}",
                           "prerank", tuple(["model.mode=teacher"] + size), batch))
        out.append(Variant(f"joint@{batch or 'spec'}", f"joint, shipped config, {name}", "prerank", tuple(size), batch))
    return out


@dataclass
class Runs:
    """The measured runs of one (version, variant)."""

    records: list[dict] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.records)


def baseline_code(repo: str, revision: str, into: str) -> str:
    """`trainer`, `serving` and `feature_specs` of `revision`, extracted under `into` (returned)."""
    archive = subprocess.run(["git", "-C", repo, "archive", revision, "trainer", "serving", "feature_specs"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def measure(code: str, scripts: str, variant: Variant, spec: str, data: str, preprocessing: str,
            skip: int) -> dict:
    """One run of `variant` with the prerank in `code`, in a fresh process; its JSON line."""
    job = {"kind": variant.kind, "spec": spec, "data": data, "preprocessing": preprocessing,
           "overrides": list(variant.overrides), "batch_size": variant.batch_size, "skip": skip}
    done = subprocess.run([sys.executable, RUN, json.dumps(job)], capture_output=True, text=True, cwd=code,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([code, scripts]),
                               "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise RuntimeError(f"{variant.key} with {code} failed:\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    if os.path.realpath(os.path.dirname(record["code"])) != os.path.realpath(code):
        raise RuntimeError(f"{variant.key}: imported prerank from {record['code']}, not from {code}")
    return record


def scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="prerank-bench-training-")
