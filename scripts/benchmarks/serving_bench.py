"""Serving latency, measured side by side in one process (`scripts/bench_serving.py` prints it).

- prerank vs pairwise: one user and N candidates through the `prerank` signature
  (the user tower once) against the same N pairs through `pairwise` (the user's
  features repeated N times, the user tower N times).
- user vector: the SavedModel's `user_embedding` (raw features, preprocessing in
  the graph) against ONNX Runtime's user tower (integer ids computed beforehand).
- input checks: every signature with its in-graph input checks
  (`serving.savedmodel.input_checks`) against the same signature built without
  them, both saved and loaded as TF Serving would load them, calls alternating.
Inputs are real rows, checked once by `serving.savedmodel.requests.check_inputs`
(the timed calls take the checked tensors); latencies are per call, in milliseconds.
"""
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from serving.onnx.inputs import onnx_feeds
from serving.savedmodel.export import save_module
from serving.savedmodel.requests import check_inputs
from serving.savedmodel.signatures import ServingModule, input_columns, serving_inputs
from serving.savedmodel.warmup import signature_inputs
from trainer.models.joint import JointModel
from trainer.data.catalog import ItemCatalog
from trainer.spec.types import Spec
from trainer.tables import text_table


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


def measure_pair(a: Callable[[], object], b: Callable[[], object], reps: int,
                 warmup: int = 5) -> tuple[Latency, Latency]:
    """p50 / p99 of `a` and of `b`, their calls alternating (a, b, b, a, ...) so both see the same load."""
    for _ in range(warmup):
        a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(reps):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (a, b)[k]()
            times[k].append((time.perf_counter() - start) * 1000)
    return tuple(Latency(float(np.percentile(t, 50)), float(np.percentile(t, 99))) for t in times)


def candidate_inputs(spec: Spec, catalog: ItemCatalog, n: int, seed: int = 0) -> dict[str, tf.Tensor]:
    """Item columns of `n` catalog items (sampled with replacement when the catalog is smaller)."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(catalog.size)[:n] if n <= catalog.size else rng.integers(0, catalog.size, n)
    columns = input_columns(spec, "item")
    picked = {c.name: tf.gather(catalog.columns[c.name], rows) for c in columns}
    return {k: tf.constant(v) for k, v in serving_inputs(picked, columns).items()}


def _call(signature, inputs: dict[str, tf.Tensor]) -> Callable[[], object]:
    return lambda: signature(**inputs)


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
        one = check_inputs(prerank, {**user, **items}, f"benchmark prerank ({n} items)")
        pairs = check_inputs(pairwise, {**repeated, **items}, f"benchmark pairwise ({n} pairs)")
        a, b = prerank(**one)["logit"].numpy(), pairwise(**pairs)["logit"].numpy()
        rows.append(PrerankRow(n, measure(_call(prerank, one), reps), measure(_call(pairwise, pairs), reps),
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
    row = {k: v[:1] for k, v in features.items()}
    feeds = onnx_feeds(model, row, "user")
    signature = loaded.signatures["user_embedding"]
    user = check_inputs(signature, user_inputs(spec, features), "benchmark user_embedding")
    a = signature(**user)["user_vector"].numpy()
    b = session.run(None, feeds)[0]
    return UserVectorRow(measure(lambda: signature(**user), reps), measure(lambda: session.run(None, feeds), reps),
                         float(np.max(np.abs(a - b))))


@dataclass(frozen=True)
class CheckCostRow:
    signature: str
    rows: str  # e.g. "1 user + 1000 items"
    checked: Latency
    unchecked: Latency


def input_check_cost(model: JointModel, spec: Spec, features: dict, catalog: ItemCatalog, sizes: tuple[int, ...],
                     reps: int, workdir: str) -> list[CheckCostRow]:
    """Every signature with and without its input checks, on the same inputs; `model` is the export's
    (pruned) model. Both SavedModels are written under `workdir` and loaded back."""
    loaded = {}
    for checks in (True, False):
        path = os.path.join(workdir, "checked" if checks else "unchecked")
        save_module(ServingModule(model, input_checks=checks), path)
        loaded[checks] = tf.saved_model.load(path)
    user = user_inputs(spec, features)
    cases = [("user_embedding", "1 user", user)]
    batch = int(tf.shape(features[input_columns(spec, "all")[0].name])[0])
    cases.append(("fine_rank", f"{batch} rows", signature_inputs(spec, "fine_rank", features, batch)))
    for n in sizes:
        items = candidate_inputs(spec, catalog, n)
        cases.append(("item_embedding", f"{n} items", items))
        cases.append(("prerank", f"1 user + {n} items", {**user, **items}))
        cases.append(("pairwise", f"{n} pairs", {**{k: tf.repeat(v, n, axis=0) for k, v in user.items()}, **items}))
    rows = []
    for name, label, inputs in cases:
        on, off = loaded[True].signatures[name], loaded[False].signatures[name]
        tensors = check_inputs(on, inputs, f"benchmark {name} ({label})")
        checked, unchecked = measure_pair(_call(on, tensors), _call(off, tensors), reps)
        rows.append(CheckCostRow(name, label, checked, unchecked))
    return rows


def check_cost_table(rows: list[CheckCostRow]) -> str:
    """Each signature's p50 / p99 with and without its input checks, and what the checks add."""
    return text_table(["signature", "rows", "checked p50", "p99", "unchecked p50", "p99", "p50 cost", "p99 cost"],
                      [[r.signature, r.rows, f"{r.checked.p50:.3f}", f"{r.checked.p99:.3f}", f"{r.unchecked.p50:.3f}",
                        f"{r.unchecked.p99:.3f}", f"{r.checked.p50 - r.unchecked.p50:+.3f}",
                        f"{r.checked.p99 - r.unchecked.p99:+.3f}"] for r in rows])
