"""The scoring service (`prerank serve`) over HTTP on loopback: one running service and one real redis-server
for the session (tests/conftest.py: `service_small`, `redis_server`), the small model's export and its
item vectors from the KuaiRand item table (with the ctr_prior attribute) in Redis, the ONNX user tower.

Scores are checked against the export's own `prerank` signature on the same user and candidates' raw
features; the swap test runs last in this file (it leaves version 2 served)."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import asyncio
import os
import threading
import time

import httpx
import numpy as np
import pytest
import tensorflow as tf

from serving.item_store.redis_store import AsyncRedisVectors, RedisStoreWriter
from serving.onnx.raw_feeds import RawFeeds
from serving.savedmodel.requests import call_signature
from serving.savedmodel.signatures import input_columns, serving_inputs
from serving.service.metrics import STAGES
from serving.service.model import column_array, request_value, user_tower_session
from trainer.data.catalog import item_table_catalog
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import ExportError

pytestmark = pytest.mark.slow  # a running service, a Redis server, an export


@pytest.fixture(scope="module")
def rows(exported_small, spec):
    """A batch of real impressions (their users are the requests' users)."""
    _, data = exported_small
    return next(iter(make_pipeline(spec, data, InputConfig(batch_size=64, shuffle_buffer=0))))["features"]


@pytest.fixture(scope="module")
def catalog(item_table, spec):
    return item_table_catalog(spec, item_table, attributes=("ctr_prior",))


@pytest.fixture(scope="module")
def loaded(exported_small):
    return tf.saved_model.load(exported_small[0].path)


def user(spec, rows, row: int) -> dict:
    columns = input_columns(spec, "user")
    inputs = serving_inputs(rows, columns, slice(row, row + 1))
    return {c.name: request_value(inputs[c.name][0], c) for c in columns}


def expected_scores(loaded, spec, rows, row: int, catalog, positions: np.ndarray) -> np.ndarray:
    """The export's `prerank` signature on the user of `row` and the catalog items at `positions`."""
    columns = input_columns(spec, "item")
    picked = {c.name: tf.gather(catalog.columns[c.name], positions) for c in columns}
    inputs = {**serving_inputs(rows, input_columns(spec, "user"), slice(row, row + 1)),
              **serving_inputs(picked, columns)}
    return loaded.signatures["prerank"](**{k: tf.constant(v) for k, v in inputs.items()})["score"].numpy()


def post(service, payload, **kwargs) -> httpx.Response:
    return httpx.post(f"{service.url}/score", json=payload, timeout=30, **kwargs)


def metric(service, name: str) -> float:
    text = httpx.get(f"{service.url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_top_k_scores_as_the_export_does_and_names_the_version(service_small, spec, rows, catalog, loaded):
    service, _ = service_small
    rng = np.random.default_rng(1)
    positions = rng.choice(np.arange(4000, catalog.size), 1000, replace=False)  # other tests ask for items below 4000
    ids = [int(catalog.ids[p]) for p in positions]
    answer = post(service, {"user": user(spec, rows, 3), "candidates": ids, "k": 50})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    want = expected_scores(loaded, spec, rows, 3, catalog, positions)
    order = np.argsort(-want, kind="stable")[:50]
    assert body["ids"] == [ids[i] for i in order]
    np.testing.assert_allclose(body["scores"], want[order], atol=1e-5)
    assert body["model_version"] == 1 and body["fingerprint"] == exported_small_fingerprint(service)
    assert body["scored"] == 1000 and body["unscored"] == [] and body["strategy"] == "top_k"
    assert [part.split(";")[0] for part in answer.headers["server-timing"].split(", ")] == list(STAGES)


def exported_small_fingerprint(service) -> str:
    return httpx.get(f"{service.url}/ready").json()["fingerprint"]


def test_threshold_keeps_every_score_above_it_and_no_more_than_k(service_small, spec, rows, catalog):
    service, _ = service_small
    ids = [int(i) for i in catalog.ids[:600]]
    everything = post(service, {"user": user(spec, rows, 5), "candidates": ids, "k": 600}).json()
    cut = float(np.median(everything["scores"]))
    kept = post(service, {"user": user(spec, rows, 5), "candidates": ids, "k": 600,
                          "strategy": {"name": "threshold", "min_score": cut}}).json()
    above = [i for i, s in zip(everything["ids"], everything["scores"]) if s >= cut]
    assert kept["ids"] == above and kept["strategy"] == "threshold" and 0 < len(above) < 600
    few = post(service, {"user": user(spec, rows, 5), "candidates": ids, "k": 7,
                         "strategy": {"name": "threshold", "min_score": cut}}).json()
    assert few["ids"] == above[:7]


def test_tiers_take_bands_from_the_top_each_ordered_by_the_attribute(service_small, spec, rows, catalog):
    service, _ = service_small
    ids = [int(i) for i in catalog.ids[1000:1800]]
    prior = dict(zip(ids, np.asarray(catalog.columns["ctr_prior"][1000:1800]).tolist()))
    everything = post(service, {"user": user(spec, rows, 7), "candidates": ids, "k": 800}).json()
    scores = dict(zip(everything["ids"], everything["scores"]))
    high, low = np.quantile(everything["scores"], [0.9, 0.5])
    tiers = post(service, {"user": user(spec, rows, 7), "candidates": ids, "k": 120,
                           "strategy": {"name": "tiers", "bands": [float(high), float(low)],
                                        "attribute": "ctr_prior"}}).json()
    band = lambda i: 0 if scores[i] >= high else 1 if scores[i] >= low else 2  # noqa: E731
    kept = tiers["ids"]
    assert len(kept) == 120 and tiers["strategy"] == "tiers"
    assert [band(i) for i in kept] == sorted(band(i) for i in kept)  # bands from the top
    assert {i for i in ids if band(i) == 0} <= set(kept)  # the top band (80 items) whole, then band 1 cut
    for b in (0, 1):
        priors = [prior[i] for i in kept if band(i) == b]
        assert priors == sorted(priors, reverse=True)
    second = [i for i in ids if band(i) == 1]
    cut = sorted(second, key=lambda i: (-prior[i], -scores[i]))[:120 - sum(band(i) == 0 for i in kept)]
    assert [i for i in kept if band(i) == 1] == cut


def test_the_hot_cache_answers_repeated_candidates(service_small, spec, rows, catalog):
    service, _ = service_small
    ids = [int(i) for i in catalog.ids[2000:2500]]  # never asked for before in this session
    hits, misses = metric(service, "prerank_cache_hits_total"), metric(service, "prerank_cache_misses_total")
    first = post(service, {"user": user(spec, rows, 1), "candidates": ids, "k": 10}).json()
    assert metric(service, "prerank_cache_misses_total") - misses == 500
    assert metric(service, "prerank_cache_hits_total") - hits == 0
    again = post(service, {"user": user(spec, rows, 1), "candidates": ids, "k": 10}).json()
    assert metric(service, "prerank_cache_hits_total") - hits == 500
    assert again["ids"] == first["ids"] and again["scores"] == first["scores"]
    assert 0 < metric(service, "prerank_cache_hit_rate") < 1
    ready = httpx.get(f"{service.url}/ready").json()
    assert ready["cache"]["capacity_items"] == 4000 and 0 < ready["cache"]["items"] <= 4000


def test_missing_candidates_are_reported_or_embedded_from_their_features(service_small, spec, rows, catalog,
                                                                         loaded):
    service, _ = service_small
    known = [int(i) for i in catalog.ids[:20]]
    unknown = 90_000_001
    answer = post(service, {"user": user(spec, rows, 2), "candidates": known + [unknown], "k": 30}).json()
    assert unknown not in answer["ids"] and answer["scored"] == 20
    assert answer["unscored"] == [{"id": unknown, "reason": "not in the item store of model version 1 and no "
                                                             "item_features sent"}]
    # a new item (a real video's features under an id the store lacks) sent with its features is scored
    columns = input_columns(spec, "item")
    features = {c.name: request_value(serving_inputs({c.name: catalog.columns[c.name][5:6]}, [c])[c.name][0], c)
                for c in columns}
    features["video_id"] = unknown
    scored = post(service, {"user": user(spec, rows, 2), "candidates": known + [unknown], "k": 30,
                            "item_features": [features]}).json()
    assert scored["unscored"] == [] and unknown in scored["ids"]
    item = {c.name: tf.constant(serving_inputs({c.name: catalog.columns[c.name][5:6]}, [c])[c.name]) for c in columns}
    item["video_id"] = tf.constant([unknown], tf.int64)
    want = loaded.signatures["prerank"](**{**{k: tf.constant(v) for k, v in serving_inputs(
        rows, input_columns(spec, "user"), slice(2, 3)).items()}, **item})["score"].numpy()[0]
    assert scored["scores"][scored["ids"].index(unknown)] == pytest.approx(want, abs=1e-5)
    cached = post(service, {"user": user(spec, rows, 2), "candidates": [unknown], "k": 1}).json()
    assert cached["ids"] == [unknown] and cached["unscored"] == []  # embedded once, then cached


@pytest.mark.parametrize("change, status, names", [
    ("malformed", 400, "malformed JSON"),
    ("no user_id", 422, "user.user_id"),
    ("user_id as text", 422, "user.user_id"),
    ("empty candidates", 422, "candidates"),
    ("too many candidates", 422, "candidates"),
    ("unknown strategy", 422, "strategy"),
    ("k 0", 422, "k"),
    ("negative id", 400, "column user_id holds id -5"),
    ("unknown attribute", 422, "strategy.attribute: 'popularity'"),
    ("repeated candidate", 422, "candidates: id"),
    ("id beyond int64", 422, "candidates.1: id 9223372036854775808 does not fit in int64"),
    ("user id beyond int64", 422, "user.user_id: Input should be less than or equal to 9223372036854775807"),
    ("extra field", 422, "model_path"),
])
def test_bad_requests_get_a_4xx_naming_the_field_and_the_service_keeps_serving(service_small, spec, rows, catalog,
                                                                                change, status, names):
    service, _ = service_small
    good = {"user": user(spec, rows, 0), "candidates": [int(i) for i in catalog.ids[:5]], "k": 3}
    bad = {**good, "user": dict(good["user"])}
    if change == "malformed":
        answer = httpx.post(f"{service.url}/score", content=b'{"user": {', headers={"content-type": "application/json"})
    else:
        if change == "no user_id":
            del bad["user"]["user_id"]
        elif change == "user_id as text":
            bad["user"]["user_id"] = str(bad["user"]["user_id"])
        elif change == "empty candidates":
            bad["candidates"] = []
        elif change == "too many candidates":
            bad["candidates"] = list(range(6001))
        elif change == "unknown strategy":
            bad["strategy"] = {"name": "best_guess"}
        elif change == "k 0":
            bad["k"] = 0
        elif change == "negative id":
            bad["user"]["user_id"] = -5
        elif change == "unknown attribute":
            bad["strategy"] = {"name": "tiers", "bands": [0.5], "attribute": "popularity"}
        elif change == "repeated candidate":
            bad["candidates"] = bad["candidates"] + bad["candidates"][:1]
        elif change == "user id beyond int64":
            bad["user"]["user_id"] = 2**63
        elif change == "id beyond int64":
            bad["candidates"] = bad["candidates"][:1] + [2**63] + bad["candidates"][2:]
        elif change == "extra field":
            bad["model_path"] = "/etc/passwd"
        answer = post(service, bad)
    assert answer.status_code == status, answer.text
    assert names in answer.text
    assert post(service, good).status_code == 200


def test_a_body_over_the_cap_is_refused_with_413(service_small):
    service, _ = service_small
    answer = httpx.post(f"{service.url}/score", content=b" " * 400_001, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "cap" in answer.json()["error"]
    assert metric(service, "prerank_errors_total") >= 1


def test_health_readiness_metrics_and_the_openapi_schema(service_small):
    service, _ = service_small
    assert httpx.get(f"{service.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/ready").json()
    assert ready["ready"] and ready["user_vector"] == "onnx" and ready["attributes"] == ["ctr_prior"]
    assert ready["reference_time"] == "2022-04-30" and ready["items"] == 7490
    text = httpx.get(f"{service.url}/metrics").text
    for name in ("prerank_request_seconds_bucket", "prerank_stage_seconds_bucket{", "prerank_candidates_scored_total",
                 "prerank_cache_hit_rate", "prerank_errors_total", "prerank_model_version 1.0"):
        assert name in text, name
    schema = httpx.get(f"{service.url}/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "user_id" in components["UserFeatures"]["properties"] and "ScoreRequest" in components
    assert "video_id" in components["ItemFeatures"]["properties"]


def test_redis_going_away_gives_503_and_the_service_recovers_when_it_is_back(service_small, redis_server, spec,
                                                                              rows, catalog):
    service, _ = service_small
    fresh = [int(i) for i in catalog.ids[3000:3100]]  # not cached: the store must be asked
    redis_server.stop()
    try:
        down = post(service, {"user": user(spec, rows, 4), "candidates": fresh, "k": 5})
        assert down.status_code == 503, down.text
        assert f"item store {redis_server.url} unreachable" in down.json()["error"]
        ready = httpx.get(f"{service.url}/ready", timeout=30)
        assert ready.status_code == 503 and "unreachable" in ready.json()["reason"]
    finally:
        redis_server.start()
    back = post(service, {"user": user(spec, rows, 4), "candidates": fresh, "k": 5})
    assert back.status_code == 200 and back.json()["scored"] == 100
    assert httpx.get(f"{service.url}/ready").status_code == 200


def test_vectors_of_another_export_are_refused(service_small, redis_server):
    """The service reads its export's vectors by fingerprint: Redis refuses another's (the file store's
    refusals: tests/test_service_parts.py), and every answer names the fingerprint that scored it."""
    with pytest.raises(ExportError, match="no complete vectors of the export with fingerprint 0123456789abcdef0123"):
        AsyncRedisVectors.open(redis_server.url, "0123456789abcdef0123")
    service, _ = service_small
    ready = httpx.get(f"{service.url}/ready").json()
    assert ready["item_vectors"].endswith(f"(1-{ready['fingerprint']})")


def test_the_onnx_user_tower_equals_the_savedmodels_on_real_rows(loaded, onnx_small, kuairand_heldout, spec):
    """The service's user vector through ONNX (raw values mapped by inputs.json's rules, the session the
    service runs) is the export's user_embedding on 64 real users of the held-out day (one batched call)."""
    feeds = RawFeeds(onnx_small.path, "user_vector")
    session = user_tower_session(onnx_small.path, feeds)
    batch = next(iter(make_pipeline(spec, kuairand_heldout, InputConfig(batch_size=64, shuffle_buffer=0))))
    users = [user(spec, batch["features"], row) for row in range(64)]
    columns = input_columns(spec, "user")
    want = call_signature(loaded.signatures["user_embedding"],
                          {c.name: column_array(c, [u[c.name] for u in users]) for c in columns}, "user")
    got = np.stack([session.run(None, feeds.feeds(u))[0][0] for u in users])
    np.testing.assert_allclose(got, want["user_vector"], atol=1e-5)
    assert float(want["logit_bias"][0]) == pytest.approx(feeds.bias, abs=1e-6)


def test_a_new_version_is_swapped_in_under_traffic_once_its_vectors_are_in_the_store(
        service_small, exported_student_small, spec, rows, catalog, redis_server):
    """Version 2 (a student-only export of the same model) appears under the base: it waits for its vectors
    (readiness says why), then is loaded and swapped in while a client keeps sending requests: none fails,
    each names the version that scored it, and once 2 answers, 1 never does again. Version 2's vectors are
    version 1's (the same checkpoint's item tower), written under its own fingerprint by the store's writer
    (`embed-items` into Redis is the service fixture's)."""
    service, base = service_small
    second = exported_student_small
    os.symlink(second.path, os.path.join(base, "2"))
    deadline = time.time() + 60
    while "pending" not in httpx.get(f"{service.url}/ready").json():
        assert time.time() < deadline
        time.sleep(0.2)
    pending = httpx.get(f"{service.url}/ready").json()["pending"]
    assert pending["version"] == 2 and f"no complete vectors of export fingerprint {second.fingerprint}" in \
        pending["reason"]
    payload = {"user": user(spec, rows, 6), "candidates": [int(i) for i in catalog.ids[:300]], "k": 20}
    answers, stop = [], threading.Event()

    def traffic():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{service.url}/score", json=payload)
                answers.append((r.status_code, r.json().get("model_version"), r.json().get("ids")))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(1.0)
        assert {v for _, v, _ in answers} == {1}
        copy_vectors(redis_server.url, exported_small_fingerprint(service), second, np.asarray(catalog.ids))
        deadline = time.time() + 120
        while not answers or answers[-1][1] != 2:
            assert time.time() < deadline, "version 2 was not swapped in"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    versions = [v for _, v, _ in answers]
    assert all(status == 200 for status, _, _ in answers)
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    assert {tuple(ids) for _, _, ids in answers} == {tuple(answers[0][2])}  # the same weights: the same ranking
    ready = httpx.get(f"{service.url}/ready").json()
    assert ready["model_version"] == 2 and ready["fingerprint"] == second.fingerprint and "pending" not in ready


def copy_vectors(url: str, fingerprint: str, export, ids: np.ndarray) -> None:
    """The vectors of `ids` of the export with `fingerprint` written again for `export` (the same checkpoint)."""
    first = AsyncRedisVectors.open(url, fingerprint)

    async def read():
        try:
            return await first.fetch(ids)
        finally:
            await first.close()
    vectors, attributes, found = asyncio.run(read())
    assert found.all()
    writer = RedisStoreWriter(url, 2, fingerprint=export.fingerprint, dim=first.dim, id_dtype=first.id_dtype,
                              export_dir=export.path, id_column=first.meta["id_column"],
                              attributes=first.attribute_names, reference_time=first.reference_time)
    writer.write(ids, vectors, attributes=attributes)
    writer.finish()
