"""The KuaiRand converter on a slice of the real data in data/kuairand, and the kuairand.yaml pipeline over it."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import os
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

from trainer.spec.columns import raw_columns
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.datasets.kuairand import ITEM_SKIPPED, ITEM_STATIC, SEQUENCES, convert_kuairand
from trainer.spec import load_spec

pytestmark = pytest.mark.slow  # converts the real KuaiRand tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "data", "kuairand")
SPEC = os.path.join(ROOT, "feature_specs", "kuairand.yaml")
MAX_ROWS = 15_000  # the first rows of interactions.parquet: 14,911 of 2022-04-25 and 89 of 2022-04-26


@pytest.fixture(scope="module")
def kr(tmp_path_factory):
    out = tmp_path_factory.mktemp("kuairand")
    result = convert_kuairand(src_dir=SRC, out_dir=str(out), max_rows=MAX_ROWS, shards_per_date=1)
    inter = pq.read_table(os.path.join(SRC, "interactions.parquet")).slice(0, MAX_ROWS).to_pylist()
    tables = {name: {row[key]: row for row in pq.read_table(os.path.join(SRC, f"{name}.parquet")).to_pylist()}
              for name, key in (("user_features", "user_id"), ("item_features", "video_id"),
                                ("user_sequences", "user_id"))}
    examples = {}  # source row index -> parsed tf.Example
    for date in (int(p.removeprefix("date=")) for p in result.rows_per_partition):
        rows = [i for i, r in enumerate(inter) if r["date"] == date]
        files = sorted(f for f in result.files if f"date={date}" in f)
        records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        assert len(records) == len(rows)
        for i, record in zip(rows, records):  # rows of a date keep their source order
            examples[i] = example_pb2.Example.FromString(record).features.feature
    return {"out": str(out), "result": result, "inter": inter, "examples": examples, **tables}


def value(fmap, name):
    """The Python value(s) of a tf.Example feature: None if absent, a list for lists."""
    if name not in fmap:
        return None
    kind = fmap[name].WhichOneof("kind")
    if kind is None:
        return []
    values = list(getattr(fmap[name], kind).value)
    return [v.decode() for v in values] if kind == "bytes_list" else values


def one(fmap, name):
    got = value(fmap, name)
    assert got is not None and len(got) == 1, (name, got)
    return got[0]


def test_rows_per_date_add_up(kr):
    result = kr["result"]
    expected = Counter(r["date"] for r in kr["inter"])
    assert result.rows_per_partition == {f"date={d}": n for d, n in expected.items()} and len(expected) == 2
    assert result.rows == MAX_ROWS == len(kr["examples"])
    assert sorted(os.path.relpath(f, kr["out"]) for f in result.files) == \
        [f"date={d}/part-00000.tfrecord.gz" for d in sorted(expected)]


def test_columns_are_joined_and_statistics_prefixed(kr):
    cols = set(kr["result"].columns)
    assert {"user_id", "video_id", "is_click", "user_active_degree", "onehot_feat17", "video_type", "music_id",
            "stat_show_cnt", "stat_follow_user_num", "follow_user_num", "history_len", *SEQUENCES} <= cols
    assert not {"show_cnt", "counts", "last_time_ms", "upload_dt_parsed"} & cols
    item_stats = set(next(iter(kr["item_features"].values()))) - set(ITEM_STATIC) - set(ITEM_SKIPPED)
    assert {f"stat_{c}" for c in item_stats} <= cols


def check_row(kr, i: int) -> None:
    fmap, src = kr["examples"][i], kr["inter"][i]
    user, item = kr["user_features"][src["user_id"]], kr["item_features"][src["video_id"]]
    seqs = kr["user_sequences"].get(src["user_id"])
    for name in ("user_id", "video_id", "date", "hourmin", "tab", "is_click", "long_view", "is_like",
                 "play_time_ms", "duration_ms", "freshness_days", "author_id"):
        assert one(fmap, name) == src[name], name
    assert one(fmap, "watch_ratio") == pytest.approx(src["watch_ratio"], rel=1e-6)
    assert value(fmap, "tag") == src["tag"].split(",")
    # user profile
    for name in ("user_active_degree", "follow_user_num_range", "register_days_range"):
        assert value(fmap, name) == (None if user[name] is None else [user[name]]), name
    for name in ("is_live_streamer", "follow_user_num", "fans_user_num", "onehot_feat0", "onehot_feat11"):
        assert one(fmap, name) == user[name], name
    for name in ("onehot_feat4", "onehot_feat12", "onehot_feat17"):  # float-stored integer codes
        assert value(fmap, name) == (None if user[name] is None else [int(user[name])]), name
    # item static features and statistics (averages over the whole period: prefixed stat_)
    for name in ("video_type", "upload_type"):
        assert value(fmap, name) == (None if item[name] is None else [item[name]]), name
    assert one(fmap, "music_id") == item["music_id"]
    for name in ("music_type", "server_width", "visible_status"):
        assert value(fmap, name) == (None if item[name] is None else [int(item[name])]), name
    assert one(fmap, "stat_counts") == item["counts"]
    for name in ("show_cnt", "play_progress", "follow_user_num", "collect_cnt"):
        want = item[name]
        assert value(fmap, f"stat_{name}") == (None if want is None or np.isnan(want) else [np.float32(want)]), name
    # sequences: the user's history, empty (present, no values) for a user without one
    for name in SEQUENCES:
        assert value(fmap, name) == (list(seqs[name]) if seqs else []), name
    assert one(fmap, "history_len") == (seqs["history_len"] if seqs else 0)


def test_sampled_rows_match_the_parquet_sources(kr):
    rng = np.random.default_rng(7)
    sample = sorted(set(rng.choice(MAX_ROWS, 12, replace=False).tolist()))
    sample += [i for i, r in enumerate(kr["inter"]) if r["date"] == 20220426][:2]
    for i in sample:
        check_row(kr, i)


def test_user_without_history_gets_empty_sequences(kr):
    no_history = [i for i, r in enumerate(kr["inter"]) if r["user_id"] not in kr["user_sequences"]]
    assert no_history, "the slice should hold a user without history"
    for i in no_history[:3]:
        check_row(kr, i)
        fmap = kr["examples"][i]
        assert all(name in fmap and value(fmap, name) == [] for name in SEQUENCES)


def test_missing_values_stay_missing_and_tags_split_on_commas(kr):
    null4 = [i for i, r in enumerate(kr["inter"]) if kr["user_features"][r["user_id"]]["onehot_feat4"] is None]
    assert null4
    for i in null4[:3]:
        check_row(kr, i)
        assert "onehot_feat4" not in kr["examples"][i]
    multi = [i for i, r in enumerate(kr["inter"]) if "," in r["tag"]]
    assert multi
    i = multi[0]
    check_row(kr, i)
    assert len(value(kr["examples"][i], "tag")) == kr["inter"][i]["tag"].count(",") + 1 > 1


def test_kuairand_spec_pipeline_reads_the_converted_slice(kr):
    spec = load_spec(SPEC)  # validates the spec
    pattern = os.path.join(kr["out"], "date=*", "*.tfrecord.gz")  # the spec's globs point at ../out
    p = make_pipeline(spec, pattern, InputConfig(batch_size=256, shuffle_buffer=0, deterministic=True))
    batch = next(iter(p))
    columns = raw_columns(spec)
    assert set(batch["features"]) == {n for n, c in columns.items() if c.is_input}
    assert set(batch["labels"]) == {"click", "long_view", "like", "watch_time"}
    assert batch["features"]["user_id"].shape.as_list() == [256]
    assert isinstance(batch["features"]["watch_seq"], tf.RaggedTensor)
    assert int(tf.reduce_max(batch["features"]["watch_seq"].row_lengths())) <= 50
    assert int(tf.reduce_max(batch["features"]["tag"].row_lengths())) <= 8
    # the first file's rows in order: the first 256 rows of 2022-04-25
    first = [r for r in kr["inter"] if r["date"] == 20220425][:256]
    assert batch["features"]["user_id"].numpy().tolist() == [r["user_id"] for r in first]
    assert batch["labels"]["click"].numpy().tolist() == [float(r["is_click"]) for r in first]
    assert batch["group"].numpy().tolist() == [f"{r['user_id']}|{r['date']}".encode() for r in first]
    feat4 = batch["features"]["onehot_feat4"].numpy().tolist()
    want4 = [kr["user_features"][r["user_id"]]["onehot_feat4"] for r in first]
    assert feat4 == [-1 if w is None else int(w) for w in want4]  # the spec's default for missing values
    assert -1 in feat4
