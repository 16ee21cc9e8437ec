"""Synthetic data generator: columns, types, id distributions and a learnable hidden model."""
import csv
import os
from collections import Counter

import numpy as np
import pytest

import trainer  # noqa: F401  (selects legacy Keras before TensorFlow is imported)
import tensorflow as tf

from conftest import spec_text
from trainer.data.writers import Column, write_shards
from trainer.spec import load_spec, parse_spec
from trainer.data.datasets.synthetic import SyntheticResult, generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ROWS = 6000

SPEC = spec_text("synthetic_test")
DEFAULT_CARDINALITY = 300  # tag table and the cross-only `channel` column
EXPECTED_KIND = {  # column -> (tf.train.Feature list field, values per row or None for sequences)
    "user_id": ("int64_list", 1), "city": ("bytes_list", 1), "watch_seq": ("int64_list", None),
    "tag_seq": ("bytes_list", None), "user_age": ("float_list", 1), "hour": ("int64_list", 1),
    "video_id": ("int64_list", 1), "tag": ("bytes_list", 1), "duration": ("float_list", 1),
    "video_emb": ("float_list", 6), "channel": ("int64_list", 1), "stat_ctr": ("float_list", 1),
    "click": ("int64_list", 1), "like": ("int64_list", 1), "play_time_ms": ("int64_list", 1),
    "weight": ("float_list", 1), "date": ("int64_list", 1),
}


def _spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "synthetic_test.yaml"
    path.write_text(SPEC)
    return load_spec(str(path))


def _read(files) -> list[dict[str, tuple[str, list]]]:
    """Every record as {column: (list field, values)}, in file order."""
    rows = []
    for record in tf.data.TFRecordDataset(list(files), compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        rows.append({name: (feat.WhichOneof("kind"), list(getattr(feat, feat.WhichOneof("kind")).value))
                     for name, feat in example.features.feature.items()})
    return rows


def _scalars(rows, column) -> list:
    return [r[column][1][0] if column in r else None for r in rows]


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    pos = label == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return _spec(tmp_path_factory)


@pytest.fixture(scope="module")
def data(spec, tmp_path_factory) -> tuple[SyntheticResult, list[dict]]:
    out = tmp_path_factory.mktemp("synth")
    result = generate(spec, N_ROWS, str(out), seed=7, default_cardinality=DEFAULT_CARDINALITY)
    return result, _read(result.files)


def test_writes_every_spec_column_with_its_type(spec, data):
    result, rows = data
    assert result.n_rows == len(rows) == N_ROWS
    assert result.columns == spec.columns == tuple(EXPECTED_KIND)
    assert [os.path.basename(f) for f in result.files] == [f"part-0000{k}.tfrecord.gz" for k in range(4)]
    for column, (kind, width) in EXPECTED_KIND.items():
        present = [r[column] for r in rows if column in r]
        assert present, column
        assert {k for k, _ in present} == {kind}, column
        if width is not None:
            assert {len(v) for _, v in present} == {width}, column
    assert {d for d in _scalars(rows, "date")} <= set(range(20220401, 20220408))
    weights = np.array(_scalars(rows, "weight"))
    assert weights.min() > 0 and 0.8 < weights.mean() < 1.2
    numbers = [v for c in ("user_age", "duration", "stat_ctr") for v in _scalars(rows, c) if v is not None]
    assert min(numbers) > 0


def test_parses_with_tf_io_parse_example(spec, data):
    result, _ = data
    features = {"user_id": tf.io.FixedLenFeature([], tf.int64), "video_emb": tf.io.FixedLenFeature([6], tf.float32),
                "watch_seq": tf.io.RaggedFeature(tf.int64), "tag_seq": tf.io.RaggedFeature(tf.string),
                "city": tf.io.FixedLenFeature([], tf.string, default_value="unknown"),
                "user_age": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
                "click": tf.io.FixedLenFeature([], tf.int64), "play_time_ms": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(list(result.files), compression_type="GZIP").batch(1000)
    batches = list(ds.map(lambda b: tf.io.parse_example(b, features)))
    assert sum(int(b["user_id"].shape[0]) for b in batches) == N_ROWS
    assert all(int(tf.reduce_max(b["watch_seq"].row_lengths())) <= 20 for b in batches)
    assert batches[0]["video_emb"].shape == (1000, 6)


def test_missing_values_only_where_the_spec_has_a_default(data):
    _, rows = data
    for column in ("city", "user_age"):
        share = sum(column not in r for r in rows) / N_ROWS
        assert 0.005 < share < 0.05, (column, share)
    for column in ("user_id", "video_id", "watch_seq", "duration", "video_emb", "stat_ctr", "click", "channel"):
        assert all(column in r for r in rows), column


def test_ids_are_skewed_and_scrambled(data):
    _, rows = data
    counts = Counter(_scalars(rows, "user_id"))
    assert max(counts) < 5000 and min(counts) >= 0
    top = [i for i, _ in counts.most_common()]
    assert sum(counts[i] for i in top[:50]) > 0.25 * N_ROWS  # top 1% of the 5000 ids
    assert set(top[:10]) != set(range(10))
    assert len(Counter(_scalars(rows, "hour"))) <= 24
    assert len(Counter(_scalars(rows, "channel"))) <= DEFAULT_CARDINALITY


def test_shared_tables_draw_from_one_id_space(data):
    _, rows = data
    for scalar, sequence, card in (("video_id", "watch_seq", 2000), ("tag", "tag_seq", DEFAULT_CARDINALITY)):
        items = Counter(_scalars(rows, scalar))
        history = Counter(i for r in rows for i in r[sequence][1])
        top_items = {i for i, _ in items.most_common(20)}
        top_history = {i for i, _ in history.most_common(20)}
        assert len(top_items & top_history) >= 14, scalar
        assert items.most_common(1)[0][0] == history.most_common(1)[0][0]
        assert len(set(items) | set(history)) <= card
    assert all(t.startswith(b"tag_") for t in _scalars(rows, "tag"))


def test_sequences_respect_max_length_and_include_empty_ones(data):
    _, rows = data
    for column, max_length in (("watch_seq", 20), ("tag_seq", 5)):
        lengths = np.array([len(r[column][1]) for r in rows])
        assert lengths.max() == max_length
        assert 0.05 < (lengths == 0).mean() < 0.2


def test_label_rates_are_sane(data):
    result, rows = data
    for label in ("click", "like"):
        y = np.array(_scalars(rows, label))
        assert set(np.unique(y)) == {0, 1}
        assert 0.2 < y.mean() < 0.4, label
    play = np.array(_scalars(rows, "play_time_ms"))
    assert play.min() >= 1 and 5_000 < np.median(play) < 80_000
    assert set(result.scores) == {"click", "like", "watch_time"}
    assert all(s.shape == (N_ROWS,) for s in result.scores.values())


def test_labels_depend_on_features(data):
    result, rows = data
    click, like = (np.array(_scalars(rows, c)) for c in ("click", "like"))
    assert _auc(result.scores["click"], click) > 0.7
    assert _auc(result.scores["like"], like) > 0.7
    assert 0.5 < np.corrcoef(result.scores["click"], result.scores["like"])[0, 1] < 0.999  # related tasks
    assert 0.05 < np.corrcoef(click, like)[0, 1] < 0.9
    log_play = np.log(np.array(_scalars(rows, "play_time_ms")))
    assert np.corrcoef(result.scores["watch_time"], log_play)[0, 1] > 0.5
    # From the written data alone: click rates differ between frequent ids far more than chance
    # (the dispersion statistic is ~1 when clicks ignore the column).
    dispersion = [_dispersion(_scalars(rows, c), click) for c in ("user_id", "video_id", "hour", "tag")]
    assert np.mean(dispersion) > 2, dispersion


def _dispersion(keys: list, y: np.ndarray, min_count: int = 40) -> float:
    """Mean over frequent keys of (rate - p)^2 / binomial variance: ~1 if y ignores the keys."""
    _, inverse, n = np.unique(np.array(keys), return_inverse=True, return_counts=True)
    rates, p, frequent = np.bincount(inverse, y) / n, y.mean(), n >= min_count
    assert frequent.sum() >= 10
    return float(np.mean((rates[frequent] - p) ** 2 / (p * (1 - p) / n[frequent])))


def test_deterministic_for_a_seed_and_independent_of_sharding(spec, tmp_path):
    a = generate(spec, 300, str(tmp_path / "a"), seed=3, n_shards=3)
    b = generate(spec, 300, str(tmp_path / "b"), seed=3, n_shards=1)
    c = generate(spec, 300, str(tmp_path / "c"), seed=4, n_shards=1)
    rows_a, rows_b, rows_c = _read(a.files), _read(b.files), _read(c.files)
    assert len(a.files) == 3 and rows_a == rows_b
    assert rows_c != rows_a
    assert all(np.array_equal(a.scores[k], b.scores[k]) for k in a.scores)


def test_csv_output(spec, tmp_path):
    result = generate(spec, 500, str(tmp_path), fmt="csv", n_shards=2)
    assert [os.path.basename(f) for f in result.files] == ["part-00000.csv", "part-00001.csv"]
    rows = []
    for path in result.files:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            assert tuple(next(reader)) == spec.columns
            rows += list(reader)
    assert len(rows) == 500
    col = {c: i for i, c in enumerate(spec.columns)}
    assert any("|" in r[col["watch_seq"]] for r in rows)
    assert all(len(r[col["video_emb"]].split("|")) == 6 for r in rows)
    assert any(r[col["city"]] == "" for r in rows) and all(r[col["video_id"]] for r in rows)


@pytest.mark.parametrize("fmt, compression", [("tfrecord", "GZIP"), ("tfrecord", "none"), ("csv", "none"),
                                              ("parquet", "none")])
def test_file_names_match_write_shards(spec, tmp_path, fmt, compression):
    theirs = write_shards(str(tmp_path / "ref"), [Column("x", "int", list(range(5)))], range(5), 3,
                          fmt=fmt, compression=compression)
    ours = generate(spec, 5, str(tmp_path / "ours"), fmt=fmt, compression=compression, n_shards=3).files
    assert [os.path.basename(p) for p in ours] == [os.path.basename(p) for p in theirs]


@pytest.mark.parametrize("kwargs, message", [
    ({"n_rows": 0}, "n_rows"), ({"fmt": "orc"}, "fmt"), ({"n_shards": 0}, "n_shards"),
    ({"compression": "ZLIB"}, "compression"), ({"seed": -1}, "seed"), ({"zipf_exponent": 0.0}, "zipf_exponent"),
    ({"default_cardinality": 0}, "default_cardinality"), ({"row_group_rows": 0}, "row_group_rows"),
])
def test_bad_arguments_are_named(spec, tmp_path, kwargs, message):
    args = {"n_rows": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(spec, args.pop("n_rows"), str(tmp_path), **args)


def test_refuses_to_mix_with_existing_shards(spec, tmp_path):
    generate(spec, 10, str(tmp_path), n_shards=1)
    with pytest.raises(ValueError, match="out_dir"):
        generate(spec, 10, str(tmp_path), n_shards=1)


def test_synthetic_large_spec(tmp_path):
    spec = load_spec(os.path.join(ROOT, "feature_specs", "synthetic_large.yaml"))
    result = generate(spec, 2000, str(tmp_path), n_shards=1)
    rows = _read(result.files)
    assert len(rows) == 2000
    assert all(set(r) | {"user_active_days", "duration_ms"} == set(spec.columns) for r in rows)
    assert max(i for r in rows for i in r["watch_seq"][1]) < 1_000_000
    assert max(_scalars(rows, "author_id")) < 200_000
    assert 0.2 < np.mean(_scalars(rows, "click")) < 0.4


def test_a_spec_without_an_explicit_cardinality_uses_the_default(tmp_path):
    spec = parse_spec(spec_text("synthetic_no_cardinality"), str(tmp_path / "tiny.yaml"))
    rows = _read(generate(spec, 2000, str(tmp_path / "out"), default_cardinality=7).files)
    assert set(_scalars(rows, "u")) == set(range(7))
    assert len(set(_scalars(rows, "i"))) == 7


# ---- raw, unjoined tables (generate_tables / prerank synth --tables) ----

SAMPLE_SPEC = os.path.join(ROOT, "feature_specs", "sample.yaml")
SAMPLE_DERIVED = ["watch_seq", "click_seq", "hour", "date", "long_view"]


def test_raw_tables_place_each_column_and_stream_impressions_in_time_order(tmp_path):
    import pyarrow.parquet as pq
    from trainer.data.datasets.synthetic import generate_tables
    spec = load_spec(SAMPLE_SPEC)
    tables = generate_tables(spec, 3000, str(tmp_path), derived=tuple(SAMPLE_DERIVED), chunk_rows=700)
    impressions = pq.read_table(tables.impressions).to_pydict()
    users = pq.read_table(tables.users).to_pydict()
    items = pq.read_table(tables.items).to_pydict()
    assert list(impressions) == ["user_id", "video_id", "time_ms", "is_click", "play_time_ms"]
    assert list(users) == ["user_id", "age_group", "region", "follow_count"]
    assert list(items) == ["video_id", "author_id", "category", "tags", "duration_ms"]
    assert len(impressions["user_id"]) == 3000
    assert len(users["user_id"]) == len(set(users["user_id"])) == 400  # one row per id of the user table
    assert len(items["video_id"]) == len(set(items["video_id"])) == 600
    assert set(impressions["user_id"]) <= set(users["user_id"])
    assert set(impressions["video_id"]) <= set(items["video_id"])
    times = np.array(impressions["time_ms"])
    assert (np.diff(times) >= 0).all()  # in time order across chunks
    assert 1648771200000 <= times.min() and times.max() < 1648771200000 + 7 * 86_400_000  # 2022-04-01..07 UTC
    assert 0.15 < np.mean(impressions["is_click"]) < 0.45
    assert None in users["region"]  # a feature with a default has missing values
    popular = Counter(impressions["user_id"]).most_common(1)[0][1]
    assert popular > 3000 / 400 * 5  # Zipf: the most active user far above the mean
    with pytest.raises(ValueError, match="exists"):
        generate_tables(spec, 10, str(tmp_path))


def test_the_shipped_sample_is_what_the_generator_writes(tmp_path):
    """data/sample/ comes from `prerank synth feature_specs/sample.yaml --tables --rows 5000 --derived ...`."""
    import hashlib
    from trainer.cli import main
    assert main(["synth", SAMPLE_SPEC, "--tables", "--rows", "5000", "--out", str(tmp_path),
                 "--derived", *SAMPLE_DERIVED]) == 0
    for name in ("impressions", "users", "items"):
        made = hashlib.sha256((tmp_path / f"{name}.parquet").read_bytes()).hexdigest()
        shipped = hashlib.sha256(open(os.path.join(ROOT, "data", "sample", f"{name}.parquet"), "rb").read())
        assert made == shipped.hexdigest(), name
