"""Serving latency, measured side by side in one process (`scripts/bench_serving.py` prints it).

- prerank vs pairwise: one user and N candidates through the `prerank` signature
  (the user tower once) against the same N pairs through `pairwise` (the user's
  features repeated N times, the user tower N times).
- user vector: the SavedModel's `user_embedding` (raw features, preprocessing in
  the graph) against ONNX Runtime's user tower (integer ids computed beforehand).
Inputs are real rows; latencies are per call, in milliseconds.
"""
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from serving.onnx.inputs import onnx_feeds
from serving.savedmodel.signatures import input_columns, serving_inputs
from trainer.data.catalog import ItemCatalog
from trainer.spec.types import Spec


@dataclass(frozen=True)
class Latency:
    p50: float
    p99: float


def measure(call: Callable[[], object], reps: int, warmup: int = 5) -> Latency:
    """p50 / p99 of `reps` calls after `warmup` untimed ones (ms)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return Latency(float(np.percentile(times, 50)), float(np.percentile(times, 99)))


def candidate_inputs(spec: Spec, catalog: ItemCatalog, n: int, seed: int = 0) -> dict[str, tf.Tensor]:
    """Item columns of `n` catalog items (sampled with replacement when the catalog is smaller)."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(catalog.size)[:n] if n <= catalog.size else rng.integers(0, catalog.size, n)
    columns = input_columns(spec, "item")
    picked = {c.name: tf.gather(catalog.columns[c.name], rows) for c in columns}
    return {k: tf.constant(v) for k, v in serving_inputs(picked, columns).items()}


def user_inputs(spec: Spec, features: dict, row: int = 0) -> dict[str, tf.Tensor]:
    """One user's columns ([1, ...]) from a batch's row."""
    return {k: tf.constant(v) for k, v in
            serving_inputs(features, input_columns(spec, "user"), slice(row, row + 1)).items()}


@dataclass(frozen=True)
class PrerankRow:
    n: int
    prerank: Latency
    pairwise: Latency
    max_diff: float  # |prerank - pairwise| logits: the two paths score the same pairs


def prerank_vs_pairwise(loaded, spec: Spec, features: dict, catalog: ItemCatalog, sizes: tuple[int, ...],
                        reps: int) -> list[PrerankRow]:
    user = user_inputs(spec, features)
    prerank, pairwise = loaded.signatures["prerank"], loaded.signatures["pairwise"]
    rows = []
    for n in sizes:
        items = candidate_inputs(spec, catalog, n)
        repeated = {k: tf.repeat(v, n, axis=0) for k, v in user.items()}
        a = prerank(**user, **items)["logit"].numpy()
        b = pairwise(**repeated, **items)["logit"].numpy()
        rows.append(PrerankRow(n, measure(lambda: prerank(**user, **items), reps),
                               measure(lambda: pairwise(**repeated, **items), reps),
                               float(np.max(np.abs(a - b)))))
    return rows


def prerank_table(rows: list[PrerankRow]) -> str:
    lines = [f"{'N':>6}{'prerank p50':>13}{'p99':>9}{'pairwise p50':>14}{'p99':>9}{'p50 ratio':>11}{'p99 ratio':>11}"]
    for r in rows:
        lines.append(f"{r.n:>6}{r.prerank.p50:>13.2f}{r.prerank.p99:>9.2f}{r.pairwise.p50:>14.2f}"
                     f"{r.pairwise.p99:>9.2f}{r.pairwise.p50 / r.prerank.p50:>10.1f}x"
                     f"{r.pairwise.p99 / r.prerank.p99:>10.1f}x")
    return "\n".join(lines)


@dataclass(frozen=True)
class UserVectorRow:
    saved_model: Latency  # user_embedding signature, raw features in
    onnx: Latency  # onnxruntime user tower, integer ids in (the preprocessing runs elsewhere)
    max_diff: float


def user_vector_saved_model_vs_onnx(loaded, model, session, spec: Spec, features: dict, reps: int) -> UserVectorRow:
    """One user's vector: the SavedModel signature against ONNX Runtime (ids precomputed)."""
    user = user_inputs(spec, features)
    row = {k: v[:1] for k, v in features.items()}
    feeds = onnx_feeds(model, row, "user")
    signature = loaded.signatures["user_embedding"]
    a = signature(**user)["user_vector"].numpy()
    b = session.run(None, feeds)[0]
    return UserVectorRow(measure(lambda: signature(**user), reps), measure(lambda: session.run(None, feeds), reps),
                         float(np.max(np.abs(a - b))))
