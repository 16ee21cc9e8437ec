"""`prerank convert`: raw tables joined, derived and written as partitions, checked against the spec first.

On the shipped sample tables (data/sample, synthetic: impressions, users, items) against a join done here in
Python; histories against a brute-force replay of the log; every refusal on small tables written by the tests.
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import datetime
import glob
import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from trainer.cli import main
from trainer.data.convert.convert import convert
from trainer.data.convert.expressions import Derive
from trainer.data.convert.history import History
from trainer.data.convert.tables import SideTable, Table
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import ConfigError, DataError
from trainer.spec import load_spec, parse_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample")
SAMPLE_SPEC = os.path.join(REPO, "feature_specs", "sample.yaml")
SAMPLE_JOINS = [SideTable((os.path.join(SAMPLE, "users.parquet"),), "user_id"),
                SideTable((os.path.join(SAMPLE, "items.parquet"),), "video_id")]
SAMPLE_DERIVES = [Derive.parse(d) for d in ("date=date(time_ms)", "hour=hour(time_ms)",
                                            "long_view=play_time_ms >= 30000")]
SAMPLE_HISTORIES = [History.parse("watch_seq=video_id:20"), History.parse("click_seq=video_id:is_click:10")]


def convert_sample(out: str, fmt: str = "parquet", **kwargs):
    return convert(load_spec(SAMPLE_SPEC), Table((os.path.join(SAMPLE, "impressions.parquet"),)), out,
                   partition_by="date", joins=SAMPLE_JOINS, derives=SAMPLE_DERIVES, histories=SAMPLE_HISTORIES,
                   user="user_id", time_column="time_ms", fmt=fmt, **kwargs)


@pytest.fixture(scope="module")
def sample_parquet(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sample") / "parquet")
    return convert_sample(out)


def read_rows(out: str) -> list[dict]:
    """Every row of a Parquet conversion, partition by partition, file by file."""
    return [row for path in sorted(glob.glob(os.path.join(out, "*", "part-*.parquet")))
            for row in pq.read_table(path).to_pylist()]


def test_sample_tables_join_derive_and_partition(sample_parquet):
    result = sample_parquet
    impressions = pq.read_table(os.path.join(SAMPLE, "impressions.parquet")).to_pylist()
    users = {r["user_id"]: r for r in pq.read_table(os.path.join(SAMPLE, "users.parquet")).to_pylist()}
    items = {r["video_id"]: r for r in pq.read_table(os.path.join(SAMPLE, "items.parquet")).to_pylist()}

    def day(ms: int) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)

    expected = sorted(impressions, key=lambda r: day(r["time_ms"]).strftime("%Y%m%d"))  # stable: table order
    rows = read_rows(result.out_dir)
    assert result.rows == len(rows) == len(impressions) == 5000
    assert list(result.rows_per_partition) == [f"date=2022040{d}" for d in range(1, 8)]
    for got, raw in zip(rows, expected):
        user, item = users[raw["user_id"]], items[raw["video_id"]]
        assert got["user_id"] == raw["user_id"] and got["video_id"] == raw["video_id"]
        assert got["is_click"] == raw["is_click"] and got["play_time_ms"] == raw["play_time_ms"]
        assert (got["age_group"], got["region"], got["follow_count"]) == \
            (user["age_group"], user["region"], user["follow_count"])  # region: missing stays missing (None)
        assert (got["author_id"], got["category"], got["tags"], got["duration_ms"]) == \
            (item["author_id"], item["category"], item["tags"], item["duration_ms"])
        assert got["date"] == int(day(raw["time_ms"]).strftime("%Y%m%d"))
        assert got["hour"] == day(raw["time_ms"]).hour
        assert got["long_view"] == int(raw["play_time_ms"] >= 30000)
    assert any(r["region"] is None for r in rows)


def test_parquet_files_follow_the_contract(sample_parquet):
    spec = load_spec(SAMPLE_SPEC)
    paths = sorted(glob.glob(os.path.join(sample_parquet.out_dir, "*", "*")))
    assert [os.path.relpath(p, sample_parquet.out_dir) for p in paths] == \
        [f"date=2022040{d}/part-00000.parquet" for d in range(1, 8)]
    schema = pq.read_schema(paths[0])
    assert set(schema.names) == set(spec.columns)  # only the columns the spec reads
    types = {f.name: f.type for f in schema}
    assert types["user_id"] == types["region"] == types["hour"] == types["date"] == pa.int64()
    assert types["age_group"] == types["category"] == pa.string()
    assert types["follow_count"] == types["duration_ms"] == pa.float64()
    assert types["watch_seq"] == types["click_seq"] == pa.list_(pa.int64())
    assert types["tags"] == pa.list_(pa.string())
    assert types["long_view"] == types["is_click"] == pa.int64()  # booleans written as 0 / 1


def test_parquet_and_tfrecord_outputs_read_through_the_pipeline_to_the_same_batches(sample_parquet, tmp_path):
    spec = load_spec(SAMPLE_SPEC)
    tfrecord = convert_sample(str(tmp_path / "tfrecord"), fmt="tfrecord")
    assert all(f.endswith(".tfrecord.gz") for f in tfrecord.files)
    config = InputConfig(batch_size=5000, shuffle_buffer=0, deterministic=True, cycle_length=1)
    from_parquet = next(iter(make_pipeline(spec, os.path.join(sample_parquet.out_dir, "date=*", "*.parquet"),
                                           config)))  # the spec's data.format: parquet
    from_tfrecord = next(iter(make_pipeline(spec, os.path.join(tfrecord.out_dir, "date=*", "*.tfrecord.gz"), config,
                                            fmt="tfrecord", compression="GZIP")))
    rows = read_rows(sample_parquet.out_dir)
    for batch in (from_parquet, from_tfrecord):
        features = batch["features"]
        assert features["user_id"].numpy().tolist() == [r["user_id"] for r in rows]
        assert features["watch_seq"].to_list() == [r["watch_seq"] for r in rows]
        assert [[t.decode() for t in ts] for ts in features["tags"].to_list()] == [r["tags"] for r in rows]
        assert features["region"].numpy().tolist() == [-1 if r["region"] is None else r["region"] for r in rows]
        np.testing.assert_allclose(features["follow_count"].numpy(), [r["follow_count"] for r in rows], rtol=1e-6)
        assert batch["labels"]["long_view"].numpy().tolist() == [float(r["long_view"]) for r in rows]
        assert batch["group"].numpy().tolist() == [f"{r['user_id']}|{r['date']}".encode() for r in rows]


def test_conversions_are_reproducible_byte_for_byte(sample_parquet, tmp_path):
    def digests(result) -> dict[str, str]:
        return {os.path.relpath(f, result.out_dir): hashlib.sha256(open(f, "rb").read()).hexdigest()
                for f in result.files}

    assert digests(convert_sample(str(tmp_path / "again"))) == digests(sample_parquet)
    first = convert_sample(str(tmp_path / "tf1"), fmt="tfrecord", files_per_partition=2)
    assert digests(convert_sample(str(tmp_path / "tf2"), fmt="tfrecord", files_per_partition=2)) == digests(first)
    assert len(first.files) == 14


def test_histories_never_see_their_own_time_or_later(tmp_path):
    """Many impressions share a time (per user too); items are unique per impression, so a history shows exactly
    which impressions it saw. CSV input: row order comes from the file."""
    rng = np.random.default_rng(3)
    n = 3000
    log = {"row": np.arange(n), "user": rng.integers(0, 12, n), "t": rng.integers(0, 40, n) * 1000,
           "item": rng.permutation(n) + 100, "clicked": rng.integers(0, 2, n)}
    pa_csv.write_csv(pa.table(log), str(tmp_path / "log.csv"))
    convert(None, Table((str(tmp_path / "log.csv"),)), str(tmp_path / "out"), partition_by="part",
            derives=[Derive.parse("part=t // 10000")], user="user", time_column="t",
            histories=[History.parse("seen=item:5"), History.parse("seen_clicked=item:clicked:3")],
            keep=["row", "user", "t", "item", "clicked", "seen", "seen_clicked"])
    rows = sorted(read_rows(str(tmp_path / "out")), key=lambda r: r["row"])
    time_of = {r["item"]: r["t"] for r in rows}
    by_user: dict[int, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user"], []).append(r)
    ties = 0
    for r in rows:
        mine = by_user[r["user"]]
        before = sorted((s for s in mine if s["t"] < r["t"]), key=lambda s: (s["t"], s["row"]))  # table order
        assert r["seen"] == [s["item"] for s in before][-5:]
        assert r["seen_clicked"] == [s["item"] for s in before if s["clicked"]][-3:]
        assert all(time_of[i] < r["t"] for i in r["seen"] + r["seen_clicked"])
        ties += sum(s["t"] == r["t"] and s["row"] != r["row"] for s in mine)
    assert ties > 500  # many rows share their user's time: they see none of each other
    assert sum(len(r["seen"]) == 5 for r in rows) > n // 2


# ---- refusals, on small tables ----

SPEC = """
name: small
labels: [{name: click, column: click, type: binary}]
features:
  - {name: user_id, kind: categorical, side: user, dtype: int64, vocabulary: {source: data}, embedding: {dim: 4}}
  - {name: city, kind: categorical, side: user, dtype: string, vocabulary: {source: data}, embedding: {dim: 4}}
  - {name: recent, kind: sequence, side: user, dtype: int64, max_length: 5, vocabulary: {source: data},
     embedding: {table: video, dim: 4}}
  - {name: video_id, kind: categorical, side: item, dtype: int64, vocabulary: {source: data},
     embedding: {table: video, dim: 4}}
  - {name: score, kind: numeric, side: item}
"""


@pytest.fixture
def small(tmp_path):
    """(spec, paths) of a small set of tables: impressions, users, items; tests overwrite one to break it."""
    spec = parse_spec(SPEC, str(tmp_path / "small.yaml"))
    tables = {
        "imp": {"user_id": [1, 2, 1, 3], "video_id": [10, 11, 12, 10], "click": [0, 1, 1, 0], "day": [1, 1, 2, 2],
                "t": [5, 6, 7, 8]},
        "users": {"user_id": [1, 2, 3], "city": ["a", "b", "c"]},
        "items": {"video_id": [10, 11, 12], "score": [0.5, 1.5, 2.5]},
    }
    paths = {}
    for name, columns in tables.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        pq.write_table(pa.table(columns), paths[name])
    return spec, paths


def run_small(spec, paths, tmp_path, joins=None, **kwargs):
    joins = joins or [SideTable((paths["users"],), "user_id"), SideTable((paths["items"],), "video_id")]
    kwargs.setdefault("histories", [History.parse("recent=video_id:5")])
    return convert(spec, Table((paths["imp"],)), str(tmp_path / "out"), partition_by="day", joins=joins,
                   user="user_id", time_column="t", **kwargs)


def test_small_tables_convert(small, tmp_path):
    result = run_small(*small, tmp_path)
    rows = read_rows(result.out_dir)
    assert [(r["user_id"], r["city"], r["score"], r["recent"]) for r in rows] == \
        [(1, "a", 0.5, []), (2, "b", 1.5, []), (1, "a", 2.5, [10]), (3, "c", 0.5, [])]
    assert sorted(os.listdir(tmp_path)) == ["imp.parquet", "items.parquet", "out", "users.parquet"]


def test_a_missing_column_names_the_tables_and_the_feature(small, tmp_path):
    spec, paths = small
    pq.write_table(pa.table({"user_id": [1, 2, 3]}), paths["users"])
    with pytest.raises(DataError, match=r"column 'city' \(needed by feature 'city'\) is in none of the tables: "
                                        r".*imp\.parquet, .*users\.parquet \(joined on user_id\), .*items\.parquet"):
        run_small(spec, paths, tmp_path)
    assert not os.path.exists(tmp_path / "out")


def test_an_unusable_type_names_the_table_the_column_and_the_feature(small, tmp_path):
    spec, paths = small
    pq.write_table(pa.table({"video_id": [10, 11, 12], "score": ["x", "y", "z"]}), paths["items"])
    with pytest.raises(DataError, match=r"items\.parquet \(joined on video_id\): column 'score' is VARCHAR, but "
                                        r"feature 'score' expects a number; derive numbers with --derive "
                                        r"score=float\(score\)"):
        run_small(spec, paths, tmp_path)
    pq.write_table(pa.table({"video_id": [10.0, 11.0, 12.0], "score": [1.0, 2.0, 3.0]}), paths["items"])
    with pytest.raises(DataError, match=r"items\.parquet.*: key 'video_id' is DOUBLE there but BIGINT in "
                                        r".*imp\.parquet"):
        run_small(spec, paths, tmp_path)
    pq.write_table(pa.table({"video_id": [10, 11, 12], "score": [0.5, 1.5, 2.5]}), paths["items"])
    pq.write_table(pa.table({"user_id": [1.0, 2.0, 1.0, 3.0], "video_id": [10, 11, 12, 10], "click": [0, 1, 1, 0],
                             "day": [1, 1, 2, 2], "t": [5, 6, 7, 8]}), paths["imp"])
    with pytest.raises(DataError, match=r"imp\.parquet: column 'user_id' is DOUBLE, but feature 'user_id' expects "
                                        r"int64 ids; if it holds integer codes, derive them with --derive "
                                        r"user_id=int\(user_id\)"):
        run_small(spec, paths, tmp_path, joins=[SideTable((paths["items"],), "video_id")])


def test_a_duplicated_side_table_key_is_refused(small, tmp_path):
    spec, paths = small
    pq.write_table(pa.table({"user_id": [1, 2, 3, 2], "city": ["a", "b", "c", "d"]}), paths["users"])
    with pytest.raises(DataError, match=r"users\.parquet \(joined on user_id\): key user_id=2 is in 2 rows; a side "
                                        r"table holds one row per key"):
        run_small(spec, paths, tmp_path)
    assert not os.path.exists(tmp_path / "out")


def test_a_column_in_two_tables_is_refused_unless_prefixed(small, tmp_path):
    spec, paths = small
    pq.write_table(pa.table({"video_id": [10, 11, 12], "score": [0.5, 1.5, 2.5], "city": ["x", "y", "z"]}),
                   paths["items"])
    with pytest.raises(DataError, match=r"column 'city' \(read by feature 'city'\) is in .*users\.parquet "
                                        r"\(joined on user_id\) and in .*items\.parquet \(joined on video_id\); give "
                                        r"the side table a prefix"):
        run_small(spec, paths, tmp_path)
    prefixed = [SideTable((paths["users"],), "user_id"), SideTable.parse(f"{paths['items']}:video_id:item_"),
                SideTable.parse(f"{paths['items']}:video_id::score")]
    rows = read_rows(run_small(spec, paths, tmp_path, joins=prefixed, keep=["item_city"]).out_dir)
    assert [(r["city"], r["item_city"], r["score"]) for r in rows] == \
        [("a", "x", 0.5), ("b", "y", 1.5), ("a", "z", 2.5), ("c", "x", 0.5)]


@pytest.mark.parametrize("derive, message", [
    ("score=(video_id", r"--derive score=\(video_id \(read by feature 'score'\): not an expression"),
    ("score=log(video_id)", r"--derive score=log\(video_id\) \(read by feature 'score'\): unknown function 'log'"),
    ("score=vid * 2", r"--derive score=vid \* 2 \(read by feature 'score'\): unknown column 'vid'; the tables and "
                      r"earlier derives have: city, click, day"),
    ("score=__import__('os')", r"unknown function '__import__'"),
    ("score=video_id.real", r"'video_id.real' is outside the derive grammar"),
    ("score=split(video_id, ',')", r"--derive score=split\(video_id, ','\) \(read by feature 'score'\): the engine "
                                   r"refuses it"),
    ("score=date(city)", r"date\(\) takes a TIMESTAMP, a DATE or an integer epoch time, got VARCHAR"),
])
def test_a_bad_derive_is_refused_naming_it_and_its_feature(small, tmp_path, derive, message):
    spec, paths = small
    with pytest.raises(ConfigError, match=message):
        run_small(spec, paths, tmp_path, derives=[Derive.parse(derive)])
    assert not os.path.exists(tmp_path / "out")


def test_a_failure_while_writing_publishes_nothing(small, tmp_path):
    """int() meets a fraction in the last partition, after the first partition's files were written."""
    spec, paths = small
    pq.write_table(pa.table({"user_id": [1, 2, 1, 3], "video_id": [10, 11, 12, 10], "click": [0, 1, 1, 0],
                             "day": [1, 1, 2, 2], "t": [5, 6, 7, 8], "raw": [1.0, 2.0, 3.0, 3.5]}), paths["imp"])
    with pytest.raises(DataError, match=r"--derive n=int\(raw\): int\(\): 3\.5 is not an integer"):
        run_small(spec, paths, tmp_path, derives=[Derive.parse("n=int(raw)")], keep=["n"])
    assert sorted(os.listdir(tmp_path)) == ["imp.parquet", "items.parquet", "users.parquet"]  # no out, no temp


def test_partition_values_and_arguments_are_checked(small, tmp_path):
    spec, paths = small
    pq.write_table(pa.table({"user_id": [1, 2], "video_id": [10, 11], "click": [0, 1], "day": [1, None],
                             "t": [5, 6]}), paths["imp"])
    with pytest.raises(DataError, match=r"imp\.parquet: 1 impression\(s\) have no value in the partition column "
                                        r"'day'"):
        run_small(spec, paths, tmp_path)
    with pytest.raises(ConfigError, match="histories need the user column and the time column"):
        convert(spec, Table((paths["imp"],)), str(tmp_path / "o"), partition_by="day",
                histories=[History.parse("recent=video_id:5")])
    for bad in ("recent=video_id", "recent=video_id:0", "=video_id:5"):
        with pytest.raises(ConfigError, match="--history"):
            History.parse(bad)
    with pytest.raises(ConfigError, match="expected GLOB:KEY"):
        SideTable.parse("users.parquet")
    os.makedirs(tmp_path / "full")
    open(tmp_path / "full" / "x", "w").close()
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        convert(spec, Table((paths["imp"],)), str(tmp_path / "full"), partition_by="day")


def test_the_command_line_converts_and_reports_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["convert", SAMPLE_SPEC, "--table", os.path.join(SAMPLE, "impressions.parquet"),
            "--join", f"{SAMPLE}/users.parquet:user_id", f"{SAMPLE}/items.parquet:video_id",
            "--derive", "date=date(time_ms)", "hour=hour(time_ms)", "long_view=play_time_ms >= 30000",
            "--history", "watch_seq=video_id:20", "click_seq=video_id:is_click:10", "--user", "user_id",
            "--time", "time_ms", "--partition-by", "date", "--out", out, "--max-rows", "1000"]
    assert main(args) == 0
    assert "1000 rows, 16 columns, 2 files" in capsys.readouterr().out
    assert main(args[:-4] + ["--out", str(tmp_path / "bad"), "--derive", "date=date(time_ms"]) == 2
    assert "config error: --derive date=date(time_ms" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess killed while it writes
def test_a_killed_conversion_leaves_no_output_and_the_next_one_cleans_up(tmp_path):
    n = 120_000
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"user_id": rng.integers(0, 1000, n), "video_id": rng.integers(0, 5000, n),
                             "click": rng.integers(0, 2, n), "day": rng.integers(0, 8, n)}),
                   str(tmp_path / "imp.parquet"))
    (tmp_path / "spec.yaml").write_text("""
name: killed
labels: [{name: click, column: click, type: binary}]
features:
  - {name: user_id, kind: categorical, side: user, dtype: int64, vocabulary: {source: data}, embedding: {dim: 4}}
  - {name: video_id, kind: categorical, side: item, dtype: int64, vocabulary: {source: data}, embedding: {dim: 4}}
""")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "trainer.cli", "convert", str(tmp_path / "spec.yaml"), "--table",
            str(tmp_path / "imp.parquet"), "--partition-by", "day", "--format", "tfrecord", "--rows-per-file",
            "2000", "--out", str(out)]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(tmp_path / ".tmp-out-*" / "day=*" / "part-00003.*")):
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not out.exists()
    assert glob.glob(str(tmp_path / ".tmp-out-*")), "the conversion was killed before it wrote"
    assert main(args[3:]) == 0  # the next conversion (in this process) removes the dead one's temporary
    assert not glob.glob(str(tmp_path / ".tmp-out-*"))
    assert sum(1 for _ in tf.data.TFRecordDataset(glob.glob(str(out / "day=*" / "*")), "GZIP")) == n
