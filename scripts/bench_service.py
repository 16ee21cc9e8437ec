"""The scoring service under load on loopback, side by side with the in-process floor and the SavedModel
signatures, in one run (logic in scripts/benchmarks/service_bench.py).

Needs the demo's export, ONNX export, item table and file store (scripts/demo.sh makes them); starts its own
redis-server (loopback) and fills it with the same export's vectors; starts `prerank serve` once per store
and cache setting, one at a time:

    .venv/bin/python scripts/bench_service.py --seconds 60
"""
import argparse
import os
import platform
import tempfile
import time

import trainer  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import tensorflow as tf

from benchmarks.local_servers import RedisServer, ServiceProcess
from benchmarks.service_bench import (drive, latency_row, load_table, make_requests, popularity, stage_table,
                                      time_calls, write_json)
from serving.item_store.embed import embed_items
from serving.item_store.id_index import IdIndex
from serving.item_store.reader import ItemVectorStore
from serving.savedmodel.layout import manifest_fingerprint, resolve_version_dir
from serving.savedmodel.requests import check_inputs
from serving.savedmodel.signatures import input_columns, serving_inputs
from serving.service.model import ServedModel, column_array, request_value
from serving.service.strategies import top_k
from trainer.data.catalog import item_table_catalog
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.splits import every_split
from trainer.spec import load_spec
from trainer.tables import text_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def distinct_users(spec, data: str, count: int) -> list[dict]:
    """The user columns of the first `count` distinct users of `data`, as request dicts."""
    columns = input_columns(spec, "user")
    users, seen = [], set()
    for batch in make_pipeline(spec, data, InputConfig(batch_size=1024, shuffle_buffer=0)):
        inputs = serving_inputs(batch["features"], columns)
        for row in range(len(inputs[columns[0].name])):
            user = {c.name: request_value(inputs[c.name][row], c) for c in columns}
            if user["user_id"] not in seen:
                seen.add(user["user_id"])
                users.append(user)
            if len(users) >= count:
                return users
    return users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default=os.path.join(REPO, "exports", "kuairand"))
    parser.add_argument("--onnx", default=os.path.join(REPO, "exports", "kuairand-onnx"), help="ONNX base")
    parser.add_argument("--store", default=os.path.join(REPO, "exports", "kuairand-items"), help="file store")
    parser.add_argument("--items", default=os.path.join(REPO, "out", "kuairand", "items-20220430.csv"),
                        help="the item table the store was filled from (raw features for the signatures)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per service setting")
    parser.add_argument("--floor-seconds", type=float, default=10.0, help="seconds per in-process measurement")
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--concurrency", default="1,4", help="clients for the warm-cache settings (others: 1)")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200, help="distinct prepared requests per size")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "bench_service.json"))
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    export_dir = resolve_version_dir(args.export)
    served = ServedModel.load(export_dir, args.store, 0, os.path.join(args.onnx, os.path.basename(export_dir)))
    spec = load_spec(served.manifest["spec"])
    store = ItemVectorStore.open(args.store, fingerprint=manifest_fingerprint(export_dir, served.manifest))
    catalog_ids = np.asarray(store.ids)
    impressions = np.concatenate([b["features"]["video_id"].numpy() for b in make_pipeline(
        spec, every_split(spec, "train", "validation", "eval"), InputConfig(batch_size=8192, shuffle_buffer=0))])
    chance = popularity(catalog_ids, impressions)
    users = distinct_users(spec, spec.data.eval, args.requests)
    requests = {n: make_requests(users, catalog_ids, chance, n, args.requests, args.k) for n in sizes}
    print(f"export {export_dir} (user vector: {served.user_path}); {len(catalog_ids):,} catalog items; "
          f"{len(users)} KuaiRand users; K = {args.k}; {os.cpu_count()} CPUs; load before: {os.getloadavg()}")

    # ---- in this process: the floor and the signatures ----
    vectors = np.array(store.vectors, dtype=np.float32)  # in memory
    index = IdIndex.of(catalog_ids, store.manifest["id_dtype"])  # the service's cache index, holding the catalog
    in_process = []
    for n in sizes:
        reqs = requests[n]

        def floor(user: dict, ids: list) -> np.ndarray:
            rows = index.find(index.as_keys(ids))
            return top_k(vectors.take(rows, axis=0) @ served.user_vector(user) + served.bias, args.k)
        calls = [lambda u=u, r=r: floor(u, r) for u, r in zip(reqs.users, (catalog_ids[r].tolist() for r in reqs.rows))]
        in_process.append(latency_row(f"floor ({served.user_path} user vector + id lookup, gather, matmul, top-K)",
                                      n, time_calls(calls, args.floor_seconds)))
    in_process.append(latency_row("user vector alone: " + served.user_path, 1, time_calls(
        [lambda u=u: served.user_vector(u) for u in users[:50]], args.floor_seconds / 2)))
    in_process.append(latency_row("user vector alone: SavedModel user_embedding", 1, time_calls(
        [lambda u=u: served.savedmodel_user_vector(u) for u in users[:50]], args.floor_seconds / 2)))
    items = item_table_catalog(spec, args.items)
    position = {int(i): k for k, i in enumerate(items.ids.tolist())}
    item_columns, user_columns = input_columns(spec, "item"), input_columns(spec, "user")
    signatures = served.signatures
    for name in ("prerank", "pairwise"):
        for n in sizes:
            calls = []
            for u, r in list(zip(requests[n].users, requests[n].rows))[:10]:
                rows = np.asarray([position[int(i)] for i in catalog_ids[r]])
                picked = {c.name: tf.gather(items.columns[c.name], rows) for c in item_columns}
                item_inputs = serving_inputs(picked, item_columns)
                user_inputs = {c.name: served_column(c, u, 1 if name == "prerank" else n) for c in user_columns}
                tensors = check_inputs(signatures[name], {**user_inputs, **item_inputs}, name)
                calls.append(lambda t=tensors, s=signatures[name]: s(**t))
            in_process.append(latency_row(f"`{name}` signature (raw item features)", n,
                                          time_calls(calls, args.floor_seconds)))
    del vectors

    # ---- the service, per store and cache setting ----
    results = []
    with tempfile.TemporaryDirectory() as work:
        redis = RedisServer(os.path.join(work, "redis")).start()
        start = time.time()
        embed_items(export_dir, redis.url, item_table=args.items, attributes=("ctr_prior",),
                    reference_time=store.reference_time, progress=False)
        print(f"redis-server on {redis.url}: {len(catalog_ids):,} vectors written in {time.time() - start:.1f} s")
        try:
            for label, where in (("files", args.store), ("redis", redis.url)):
                for cache in (100_000, 0):
                    service = ServiceProcess(args.export, where, os.path.join(work, f"{label}-{cache}.log"),
                                             extra=("--onnx", args.onnx, "--cache-items", str(cache),
                                                    "--access-log", os.path.join(work, "access.log"),
                                                    "--max-candidates", str(max(sizes)), "--k", str(args.k)))
                    service.start()
                    try:
                        setting = f"service, {label}, " + ("warm cache" if cache else "no cache")
                        for n in sizes:
                            for c in (concurrency if cache else [1]):
                                result = drive(f"{service.url}/score", setting, requests[n], c, args.seconds, 3.0)
                                results.append(result)
                                print(load_table([result]).splitlines()[-1], flush=True)
                    finally:
                        service.stop()
        finally:
            redis.stop()

    print("\nin one process (ms):")
    print(text_table(["path", "N", "p50", "p99", "calls"], in_process))
    print(f"\nthe service on loopback, {args.seconds:.0f} s per setting after 3 s of warm-up (ms):")
    print(load_table(results))
    print("\nwhere a request's time goes (medians of the Server-Timing stages, ms; rest: HTTP, framework, client):")
    print(stage_table(results))
    summary = targets(in_process, results, sizes)
    print("\n" + "\n".join(summary))
    print(f"load after: {os.getloadavg()}")
    write_json(args.out, {"machine": platform.platform(), "cpus": os.cpu_count(), "in_process": in_process,
                          "service": [{"setting": r.setting, "n": r.n, "clients": r.concurrency,
                                       "throughput": r.throughput, "p50_ms": r.latencies.p(50),
                                       "p99_ms": r.latencies.p(99), "requests": len(r.latencies.times),
                                       "errors": r.errors, "statuses": r.statuses, "stages_ms": r.stages}
                                      for r in results], "targets": summary})


def served_column(column, user: dict, repeat: int) -> np.ndarray:
    """One user's column as a signature input, repeated `repeat` times (pairwise: one row per candidate)."""
    return column_array(column, [user[column.name]] * repeat)


def targets(in_process: list, results: list, sizes: list[int]) -> list[str]:
    n = max(sizes)
    p50 = {(row[0], row[1]): float(row[2]) for row in in_process}
    floor = next(v for (name, size), v in p50.items() if name.startswith("floor") and size == f"{n:,}")
    prerank = p50[("`prerank` signature (raw item features)", f"{n:,}")]
    out = [f"targets at N = {n:,}, one client, warm cache:"]
    for r in results:
        if r.n == n and r.concurrency == 1 and "warm" in r.setting:
            out.append(f"  {r.setting}: p50 {r.latencies.p(50):.2f} ms = prerank signature / "
                       f"{prerank / r.latencies.p(50):.1f} (target >= 10x), floor x {r.latencies.p(50) / floor:.1f} "
                       f"(target <= 3x)")
    out.append(f"  errors in every setting: {sum(r.errors for r in results)} (target 0)")
    return out


if __name__ == "__main__":
    main()
