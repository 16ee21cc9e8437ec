"""Where a training step's time goes: a `tf.profiler` trace of a few steps, its kernels summed by part of the model
and by op type (`scripts/bench_training.py --parts profile`).

The trace's host plane holds one line per executor thread; every kernel is an event named `scope/name:OpType`.
Kernels are attributed to a part of the model by their name scope (target attention, teacher, student towers,
embedding gathers, FTRL and AdaGrad updates, id lookups, losses) and forward or backward by the gradient tape's
scope. Kernel time is summed over the threads (2 cores: up to twice the step's wall time); the wrappers
(`ExecutorState::Process`, `ParallelFor`) are left out, and what no kernel covers in the step's wall time is the
executor's and Python's own time.
"""
import collections
import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

WRAPPERS = ("ExecutorState::Process", "ParallelFor", "ThreadpoolListener")
PARTS = (  # (part, substrings of the kernel name), first match wins
    ("FTRL updates (tables)", ("ftrl/",)),
    ("AdaGrad updates (dense)", ("adagrad/",)),
    ("target attention", ("attention_",)),
    ("embedding gathers + their gradients", ("embedding_", "augment_")),
    ("id lookups, id dropout", ("lookup_", "encoder/")),
    ("teacher MMoE", ("teacher/",)),
    ("student towers + similarity", ("user_tower/", "item_tower/", "similarity/")),
)


@dataclass
class StepProfile:
    """Kernel milliseconds per step by part and by op type, the kernels per step and the step's wall ms."""

    parts: dict[str, float]
    op_types: dict[str, float]
    kernels: float
    wall_ms: float


def part_of(name: str) -> str:
    """The model part a kernel (`scope/name:OpType`) belongs to."""
    for part, keys in PARTS:
        if any(k in name for k in keys):
            return part
    return "losses, distillation, other"


def profile_step(step: Callable[[dict], dict], batches: list[dict], logdir: str) -> StepProfile:
    """Trace `step` over `batches` (already warm) and sum its kernels per step."""
    start = time.perf_counter()
    tf.profiler.experimental.start(logdir)
    try:
        for batch in batches:
            float(step(batch)["loss/total"])
    finally:
        tf.profiler.experimental.stop()
    wall = (time.perf_counter() - start) / len(batches) * 1e3
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[-1], "rb") as fh:
        space.ParseFromString(fh.read())
    parts, op_types, kernels = collections.Counter(), collections.Counter(), 0
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name.startswith(WRAPPERS) or ":" not in name:
                    continue
                ms = event.duration_ps / 1e9 / len(batches)
                direction = "backward" if name.startswith("gradient_tape/") else "forward"
                part = part_of(name)
                parts[part if "updates" in part else f"{part}, {direction}"] += ms
                op_types[name.rsplit(":", 1)[1]] += ms
                kernels += 1
    return StepProfile(dict(parts), dict(op_types), kernels / len(batches), wall)


def report(profile: StepProfile, top: int = 15) -> str:
    """The profile as text: parts, then the costliest op types."""
    total = sum(profile.parts.values())
    lines = [f"  step wall time {profile.wall_ms:.1f} ms (traced); kernels {profile.kernels:.0f} a step, "
             f"{total:.1f} kernel-ms a step over the threads"]
    for part, ms in sorted(profile.parts.items(), key=lambda x: -x[1]):
        lines.append(f"    {part:<50} {ms:7.2f} ms  {ms / total:6.1%}")
    lines.append("  op types:")
    for op, ms in sorted(profile.op_types.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"    {op:<50} {ms:7.2f} ms  {ms / total:6.1%}")
    return "\n".join(lines)
