"""The scoring service under load, beside the in-process floor and the SavedModel signatures, in one run
(`scripts/bench_service.py` prints it).

Requests are realistic: KuaiRand users (their rows of the evaluation day, in the export's spec) and N
candidates drawn without replacement from the item store's catalog with its popularity skew (an item's
chance is proportional to its impressions in the data plus one). Request bodies are built before timing.

- floor: one Python process, no HTTP: the user vector computed as the service computes it (the ONNX user
  tower fed by inputs.json's rules, or the SavedModel's user_embedding), the candidates' rows found by the
  service's id index (`IdIndex`, holding the catalog as the warm cache does), their vectors gathered from an
  in-memory array, one matrix product, top-K.
- signatures: the export's `prerank` (one user, N candidates' raw item features: the item tower runs N
  times) and `pairwise` (the user's features repeated N times), called in this process.
- service: `prerank serve` in its own process on loopback, driven by an aiohttp client with a fixed
  concurrency for a fixed time per setting; throughput, p50, p99, errors; the time of each stage from the
  responses' Server-Timing headers (median per stage) and what is left for HTTP, the framework and the
  client.
"""
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from trainer.tables import text_table


@dataclass
class Requests:
    """Prepared requests: bodies, and per request the user (a request dict) and the candidate rows."""

    n: int
    bodies: list[bytes]
    users: list[dict]
    rows: list[np.ndarray]  # catalog rows of each request's candidates


def popularity(catalog_ids: np.ndarray, impressions: np.ndarray) -> np.ndarray:
    """Each catalog item's chance: (its impressions + 1) / total."""
    ids, counts = np.unique(impressions, return_counts=True)
    weight = np.ones(len(catalog_ids))
    position = {int(i): k for k, i in enumerate(catalog_ids.tolist())}
    for i, c in zip(ids.tolist(), counts.tolist()):
        if int(i) in position:
            weight[position[int(i)]] += c
    return weight / weight.sum()


def make_requests(users: list[dict], catalog_ids: np.ndarray, chance: np.ndarray, n: int, count: int, k: int,
                  seed: int = 0) -> Requests:
    rng = np.random.default_rng(seed)
    bodies, picked_users, rows = [], [], []
    for i in range(count):
        row = rng.choice(len(catalog_ids), size=n, replace=False, p=chance)
        user = users[i % len(users)]
        bodies.append(json.dumps({"user": user, "candidates": catalog_ids[row].tolist(), "k": k}).encode())
        picked_users.append(user)
        rows.append(row)
    return Requests(n, bodies, picked_users, rows)


@dataclass
class Latencies:
    times: list[float] = field(default_factory=list)  # seconds

    def p(self, q: float) -> float:
        return float(np.percentile(self.times, q) * 1000) if self.times else float("nan")


def time_calls(calls: list[Callable[[], object]], seconds: float, min_calls: int = 20) -> Latencies:
    """Each call in turn, round robin, for `seconds` (at least `min_calls`), after one untimed pass."""
    for call in calls[:5]:
        call()
    out, start, i = Latencies(), time.perf_counter(), 0
    while time.perf_counter() - start < seconds or i < min_calls:
        begin = time.perf_counter()
        calls[i % len(calls)]()
        out.times.append(time.perf_counter() - begin)
        i += 1
    return out


@dataclass
class LoadResult:
    setting: str
    n: int
    concurrency: int
    seconds: float
    latencies: Latencies
    errors: int
    statuses: dict
    stages: dict  # stage -> median ms

    @property
    def throughput(self) -> float:
        return len(self.latencies.times) / self.seconds


def _stages(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(", "):
        name, _, value = part.partition(";dur=")
        out[name] = float(value)
    return out


async def _drive(url: str, bodies: list[bytes], concurrency: int, seconds: float,
                 warmup_seconds: float) -> tuple[Latencies, int, dict, list[dict], float]:
    latencies, statuses, stages = Latencies(), {}, []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(offset: int, until: float, record: bool) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < until:
                body = bodies[i % len(bodies)]
                i += concurrency
                begin = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                        timing = response.headers.get("server-timing")
                except aiohttp.ClientError:
                    status, timing = -1, None
                if not record:
                    continue
                latencies.times.append(time.perf_counter() - begin)
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    errors += 1
                elif timing:
                    stages.append(_stages(timing))

        until = time.perf_counter() + warmup_seconds
        await asyncio.gather(*(worker(c, until, False) for c in range(concurrency)))
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(worker(c, until, True) for c in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, errors, statuses, stages, elapsed


def drive(url: str, setting: str, requests: Requests, concurrency: int, seconds: float,
          warmup_seconds: float) -> LoadResult:
    """Send the prepared requests at a fixed concurrency for `seconds` (after `warmup_seconds` unrecorded)."""
    latencies, errors, statuses, stages, elapsed = asyncio.run(
        _drive(url, requests.bodies, concurrency, seconds, warmup_seconds))
    medians = {s: float(np.median([t[s] for t in stages])) for s in (stages[0] if stages else {})}
    return LoadResult(setting, requests.n, concurrency, elapsed, latencies, errors, statuses, medians)


def load_table(results: list[LoadResult]) -> str:
    return text_table(["setting", "N", "clients", "requests/s", "p50 ms", "p99 ms", "requests", "errors"],
                      [[r.setting, f"{r.n:,}", r.concurrency, f"{r.throughput:.0f}", f"{r.latencies.p(50):.2f}",
                        f"{r.latencies.p(99):.2f}", f"{len(r.latencies.times):,}", r.errors] for r in results])


def stage_table(results: list[LoadResult]) -> str:
    """Where one request's time goes: the median of each stage (Server-Timing), and the rest of the client's
    p50 (HTTP, the framework, the event loop, the client itself)."""
    stages = ["read", "parse", "user", "fetch", "embed", "score", "strategy", "serialize"]
    rows = []
    for r in results:
        inside = sum(r.stages.get(s, 0.0) for s in stages)
        rows.append([r.setting, f"{r.n:,}", r.concurrency] + [f"{r.stages.get(s, float('nan')):.3f}" for s in stages]
                    + [f"{inside:.3f}", f"{r.latencies.p(50) - inside:.3f}"])
    return text_table(["setting", "N", "clients"] + stages + ["sum", "rest of p50"], rows)


def latency_row(name: str, n: int, lat: Latencies) -> list:
    return [name, f"{n:,}", f"{lat.p(50):.3f}", f"{lat.p(99):.3f}", f"{len(lat.times):,}"]


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
