"""The scoring service's parts without a server: the hot cache (LRU), the strategies, the file-store vectors
behind the cache, the server default strategy, and the ONNX user tower's raw-to-id mapping (hashed,
bucketized and out-of-vocabulary ids included) against the model's own TensorFlow preprocessing."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import asyncio
import json
import os

import numpy as np
import pytest

from serving.item_store.id_index import IdIndex
from serving.item_store.reader import ItemVectorStore, remove_old_versions
from serving.item_store.writer import StoreWriter
from serving.service.app import parse_strategy
from serving.service.cache import HotCache
from serving.service.strategies import threshold, tiers, top_k
from serving.service.vectors import CachedVectors, FileVectors, vectors_ready
from trainer.errors import ConfigError, ExportError


def test_the_cache_evicts_the_least_recently_used_items():
    cache = HotCache(3, 2)
    cache.put([1, 2, 3], np.arange(6, dtype=np.float32).reshape(3, 2))
    records, found = cache.get([2, 9, 1])
    assert found.tolist() == [True, False, True] and records.tolist() == [[2, 3], [0, 0], [0, 1]]
    cache.put([4], np.array([[8, 9]], np.float32))  # 3 is the least recently used: evicted
    assert cache.get([3])[1].tolist() == [False] and cache.get([1, 2, 4])[1].all()
    cache.get([4]), cache.get([1])
    cache.put([5, 6], np.array([[1, 1], [2, 2]], np.float32))  # 2 then 4 are the oldest
    assert sorted(cache.ids().tolist()) == [1, 5, 6]
    assert cache.get([6])[0].tolist() == [[2, 2]]
    assert cache.hits == 8 and cache.misses == 2 and cache.hit_rate == 0.8
    off = HotCache(0, 2)
    off.put([1], np.ones((1, 2), np.float32))
    assert not off.get([1])[1].any() and off.misses == 1


def test_more_new_items_than_the_cache_holds_keep_the_last_ones():
    cache = HotCache(2, 1)
    cache.put([1, 2, 3, 4], np.arange(4, dtype=np.float32)[:, None])
    assert sorted(cache.ids().tolist()) == [3, 4] and cache.get([3, 4])[0].ravel().tolist() == [2, 3]


def test_the_id_index_finds_what_a_dict_finds_through_inserts_removals_and_growth():
    rng = np.random.default_rng(0)
    index, reference = IdIndex("int64"), {}
    for step in range(40):  # grows from 16 positions, removes (tombstones), reuses and rebuilds
        new = np.setdiff1d(rng.integers(-2**62, 2**62, 300), list(reference))
        index.insert(new, np.arange(step * 1000, step * 1000 + len(new)))
        reference.update(zip(new.tolist(), range(step * 1000, step * 1000 + len(new))))
        gone = rng.choice(list(reference), size=len(reference) // 3, replace=False)
        index.remove(np.concatenate([gone, [7]]))  # 7 was never in: ignored
        for g in gone.tolist():
            del reference[g]
        query = np.concatenate([rng.choice(list(reference), 500), gone[:50], rng.integers(0, 2**40, 50)])
        assert index.find(query).tolist() == [reference.get(q, -1) for q in query.tolist()]
        assert len(index) == len(reference) and 2 * (index.count + index.tombstones) <= index.size
    ids, values = index.items()
    assert dict(zip(ids.tolist(), values.tolist())) == reference
    words = np.array(["v-1", "é", "v-10", "a\u0101b", "", "v-01"])  # mixed widths, non-ASCII, the empty id
    strings = IdIndex.of(words, "string")
    strings.insert(["a-much-longer-id-than-the-others"], [6])
    assert strings.find(["v-10", "é", "a-much-longer-id-than-the-others", "v-1 ", "v", "", "a\u0101"]).tolist() == \
        [2, 1, 6, -1, -1, 4, -1]
    assert IdIndex("int64").find([1, 2]).tolist() == [-1, -1] and IdIndex.of(words, "string").find([]).size == 0


def test_the_cache_holds_what_was_put_and_stays_bounded():
    rng = np.random.default_rng(1)
    cache, put = HotCache(500, 3), {}
    for _ in range(60):
        ids = rng.choice(2000, size=rng.integers(1, 800), replace=False)
        records, found = cache.get(ids)
        assert found.sum() <= len(cache) <= 500
        for i, r, f in zip(ids.tolist(), records, found):
            if f:
                assert r.tolist() == put[i]
        fresh = ids[~found]
        values = rng.random((len(fresh), 3)).astype(np.float32)
        cache.put(fresh, values)
        put.update(zip(fresh.tolist(), values.tolist()))
        assert cache.get(fresh[-500:])[1].all()  # the newest ones stay (even when more than the cache holds)
    assert len(set(cache.ids().tolist())) == len(cache) == 500
    named = HotCache(2, 1, "string")
    named.put(["a", "bb", "a"], np.array([[1], [2], [3]], np.float32))  # an id given twice: its last record
    assert named.get(["a", "ccc", "bb"])[0].ravel().tolist() == [3, 0, 2]
    named.put(["a-longer-id"], np.array([[4]], np.float32))  # evicts "a" or "bb": both last used by one request
    assert sorted(named.ids().tolist()) in (["a", "a-longer-id"], ["a-longer-id", "bb"])
    assert named.get(["a-longer-id"])[0].tolist() == [[4]]


def test_top_k_and_threshold():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3])
    assert top_k(scores, 3).tolist() == [1, 3, 2]  # ties: the earlier candidate first
    assert top_k(scores, 10).tolist() == [1, 3, 2, 4, 0]
    assert threshold(scores, 10, 0.4).tolist() == [1, 3, 2]
    assert threshold(scores, 1, 0.4).tolist() == [1]


def test_tiers_order_each_band_by_the_attribute_and_fill_from_the_top():
    scores = np.array([0.95, 0.91, 0.7, 0.65, 0.6, 0.2, 0.1, 0.8])
    prior = np.array([0.1, 0.3, 0.2, np.nan, 0.9, 0.99, 0.5, 0.2])
    # bands: >= 0.9 {0, 1}; [0.6, 0.9) {2, 3, 4, 7}; the rest {5, 6}
    assert tiers(scores, 8, [0.9, 0.6], prior).tolist() == [1, 0, 4, 7, 2, 3, 5, 6]  # NaN last, ties by score
    assert tiers(scores, 4, [0.6, 0.9], prior).tolist() == [1, 0, 4, 7]  # bands given in any order
    assert tiers(scores, 3, [0.95], prior).tolist() == [0, 5, 4]  # a score equal to a bound is in the upper band


def test_a_server_default_strategy_is_a_name_or_json():
    assert parse_strategy("top_k").name == "top_k"
    assert parse_strategy('{"name": "threshold", "min_score": 0.2}').min_score == 0.2
    with pytest.raises(ConfigError, match="--strategy: 'threshold'"):
        parse_strategy("threshold")  # needs its min_score
    with pytest.raises(ConfigError, match="expected one of top_k, threshold, tiers"):
        parse_strategy("best")


def write_version(store, version, fingerprint, ids, vectors, prior):
    writer = StoreWriter(store, version, fingerprint=fingerprint, dim=vectors.shape[1], id_dtype="int64",
                         export_dir=f"/exports/{version}", attributes=("prior",), reference_time="2022-04-30")
    writer.write(ids, vectors, attributes=prior[:, None])
    return writer.finish()


def test_file_store_vectors_behind_the_cache(tmp_path):
    ids = np.array([5, 3, 11, 7])
    vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
    prior = np.array([0.5, 0.25, 0.125, 1.0], np.float32)
    write_version(tmp_path, 1, "aaaa", ids, vectors, prior)
    assert vectors_ready(str(tmp_path), "aaaa") is None
    assert "no complete vectors of export fingerprint bbbb" in vectors_ready(str(tmp_path), "bbbb")
    source = FileVectors(str(tmp_path), "aaaa")
    assert source.attribute_names == ["prior"] and source.reference_time == "2022-04-30"
    cached = CachedVectors(source, capacity=2)
    for _ in range(2):  # from the store, then (2 of them) from the cache
        got, attributes, found = asyncio.run(cached.lookup(cached.as_ids([7, 99, 3])))
        assert found.tolist() == [True, False, True]
        assert got[[0, 2]].tolist() == [[6, 7], [2, 3]] and attributes[[0, 2], 0].tolist() == [1.0, 0.25]
    assert cached.cache.hits == 2 and cached.cache.misses == 4


def test_a_version_under_another_fingerprint_is_refused(tmp_path):
    ids, vectors, prior = np.array([1, 2]), np.ones((2, 2), np.float32), np.ones(2, np.float32)
    write_version(tmp_path, 1, "aaaa", ids, vectors, prior)
    with pytest.raises(ExportError, match="no vectors of the export with fingerprint bbbb .*it holds 1-aaaa"):
        ItemVectorStore.open(tmp_path, fingerprint="bbbb")
    os.rename(tmp_path / "1-aaaa", tmp_path / "1-bbbb")  # another export's name on these vectors
    with pytest.raises(ExportError, match="vectors of one export are never served as another's"):
        ItemVectorStore.open(tmp_path, fingerprint="bbbb")
    with pytest.raises(ExportError, match="never served as another's"):
        FileVectors(str(tmp_path), "bbbb")


def test_the_retention_rule_keeps_the_newest_versions(tmp_path):
    ids, vectors, prior = np.array([1, 2]), np.ones((2, 2), np.float32), np.ones(2, np.float32)
    for version, fingerprint in ((1, "a1"), (2, "b2"), (3, "c3")):
        write_version(tmp_path, version, fingerprint, ids, vectors, prior)
    assert remove_old_versions(tmp_path, 2) == ["1-a1"]
    assert sorted(os.listdir(tmp_path)) == ["2-b2", "3-c3"]


@pytest.mark.slow
def test_raw_feeds_of_hashed_bucketized_and_oov_user_features_match_the_model(kuairand_slice, tmp_path):
    """inputs.json's rules, applied in numpy by the service (`RawFeeds`), give the feeds the model's own
    TensorFlow preprocessing gives (`onnx_feeds`) on real rows: a hashed string and a hashed int id, a
    bucketized number, vocabularies with several OOV rows (int and string) that many ids miss."""
    from serving.onnx.export import OPSET
    from serving.onnx.inputs import onnx_feeds
    from serving.onnx.manifest import describe
    from serving.onnx.raw_feeds import RawFeeds
    from serving.savedmodel.signatures import input_columns, serving_inputs
    from serving.service.model import request_value
    from trainer.config.loader import load_config
    from trainer.data.input_config import InputConfig
    from trainer.data.pipeline import make_pipeline
    from trainer.models.joint import JointModel
    from trainer.preprocessing.analyze import analyze
    from trainer.spec import load_spec

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(repo, "feature_specs", "kuairand.yaml")).read()
    for old, new in (
            ("    dtype: string\n    vocabulary: {source: data}\n    embedding: {dim: 16}\n  # KuaiRand stores",
             "    dtype: string\n    vocabulary: {source: hash, buckets: 1000}\n    embedding: {dim: 16}\n"
             "  # KuaiRand stores"),
            ("  - name: user_id\n    kind: categorical\n    side: user\n    dtype: int64\n"
             "    vocabulary: {source: data, min_count: 1}",
             "  - name: user_id\n    kind: categorical\n    side: user\n    dtype: int64\n"
             "    vocabulary: {source: hash, buckets: 5000}"),
            ("{name: onehot_feat3, kind: categorical, side: user, dtype: int64, vocabulary: {source: data}",
             "{name: onehot_feat3, kind: categorical, side: user, dtype: int64, vocabulary: {source: data, "
             "min_count: 5, oov_buckets: 3}"),
            ("{name: follow_user_num_range, kind: categorical, side: user, dtype: string, vocabulary: {source: data}",
             "{name: follow_user_num_range, kind: categorical, side: user, dtype: string, vocabulary: {source: data, "
             "min_count: 200, oov_buckets: 4}"),
            ("  - {name: register_days, kind: numeric, side: user, transform: [log1p, zscore]}",
             "  - {name: register_days, kind: numeric, side: user, transform: [log1p, zscore]}\n"
             "  - {name: register_days_bucket, source: register_days, kind: numeric, side: user, "
             "transform: [log1p, {bucketize: [2.0, 4.0, 6.0, 7.0]}], embedding: {dim: 16}}")):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = load_spec(str(path))
    data = os.path.join(kuairand_slice, "date=*", "*.tfrecord.gz")
    fitted = analyze(spec, data)
    model = JointModel(spec, fitted, load_config(spec, None))
    fitted.save(str(tmp_path / "onnx" / "preprocessing"))
    doc = describe(model, [], OPSET, {"model_dir": "", "checkpoint": "", "spec": str(path),
                                      "spec_fingerprint": spec.fingerprint})
    (tmp_path / "onnx" / "inputs.json").write_text(json.dumps(doc))
    feeds = RawFeeds(str(tmp_path / "onnx"), "user_vector")
    kinds = {m.name: (doc["inputs"][[i["name"] for i in doc["inputs"]].index(m.name)]["mapping"]["type"]) for m in
             feeds.mappers}
    assert {"hash", "bucketize", "vocabulary", "transform"} <= set(kinds.values())
    batch = next(iter(make_pipeline(spec, data, InputConfig(batch_size=256, shuffle_buffer=0))))["features"]
    want = onnx_feeds(model, batch, "user")
    columns = input_columns(spec, "user")
    inputs = serving_inputs(batch, columns)
    oov = 0
    for row in range(256):
        user = {c.name: request_value(inputs[c.name][row], c) for c in columns}
        got = feeds.feeds(user)
        for name, value in got.items():
            if kinds[name] == "transform":
                np.testing.assert_allclose(value[0], want[name][row], rtol=1e-6, atol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(value[0], want[name][row], err_msg=f"{name} row {row}")
        oov += int(got["onehot_feat3"][0] < 3) + int(got["follow_user_num_range"][0] < 4)
    assert oov > 0  # out-of-vocabulary ids were among the rows
