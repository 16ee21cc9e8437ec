"""Parquet input: the same batches as TFRecord, the types a writer may use, bad data named by file and row,
row groups sharded over workers, corrupt files and row groups, and iterators that restore exactly."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

import test_training_job as job
from conftest import spec_text
from test_input import INPUTS, N_ROWS, N_SHARDS, SPEC, changed, error_of, flat, make_columns, user_ids
from trainer.cli import main
from trainer.data.datasets.synthetic import generate
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data import parquet
from trainer.data.writers import Column, write_parquet, write_shards, write_tfrecord
from trainer.errors import DataError, SpecError
from trainer.spec import load_spec
from trainer.spec.columns import raw_columns

ORDERED = dict(shuffle_buffer=0, deterministic=True)
GROUP_ROWS = 5  # rows per row group: 40 rows in 3 files make 9 row groups


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    (root / "spec.yaml").write_text(SPEC)
    # row 3 without tags: an absent tf.Example feature, a null Parquet list
    cols = [c if c.name != "tags" else Column("tags", c.type, [None if i == 3 else v for i, v in enumerate(c.values)])
            for c in make_columns()]
    write_shards(str(root / "tfr"), cols, range(N_ROWS), N_SHARDS, fmt="tfrecord", compression="none")
    write_shards(str(root / "pq"), cols, range(N_ROWS), N_SHARDS, fmt="parquet", row_group_rows=GROUP_ROWS)
    return {"root": root, "spec": load_spec(str(root / "spec.yaml")), "cols": {c.name: c.values for c in cols}}


def parquet_pipeline(data, pattern: str | None = None, **config):
    config = {"batch_size": 8, **config}
    return make_pipeline(data["spec"], pattern or str(data["root"] / "pq" / "*"), InputConfig(**config), fmt="parquet")


def assert_same_batches(expected: list[dict], got: list[dict]) -> None:
    """Batch for batch, every column equal in value and dtype (sequences as ragged, strings, defaults)."""
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        fa, fb = flat([a]), flat([b])
        assert fa.keys() == fb.keys()
        for key in fa:
            assert fa[key] == fb[key], key
        for key in INPUTS:
            assert type(a["features"][key]) is type(b["features"][key]), key
            assert a["features"][key].dtype == b["features"][key].dtype, key


def test_parquet_and_tfrecord_give_identical_batches(data):
    tfrecord = make_pipeline(data["spec"], str(data["root"] / "tfr" / "*"), InputConfig(batch_size=8, **ORDERED),
                             fmt="tfrecord", compression="none")
    parquet = parquet_pipeline(data, **ORDERED)
    assert [len(g) for g in parquet.plan.row_groups] == [3, 3, 3]  # 13, 13 and 14 rows in row groups of 5
    expected, got = list(tfrecord), list(parquet)
    assert_same_batches(expected, got)
    values = flat(got)
    # the rows exercise what must match: nulls taking defaults, empty and truncated sequences, strings
    assert values["features/city"].count(b"unk") == 8 and values["features/age"].count(30.0) == 10
    assert [] in values["features/hist"] and values["features/tags"][3] == []


def test_the_types_a_writer_may_choose_read_like_the_canonical_ones(data, tmp_path):
    """Any integer width for ids and labels, float32 numbers, bool labels, large_list sequences, fixed_size_list
    vectors, dictionary-encoded strings, and a column with a default absent from a file."""
    n = 12
    cols = {c.name: c.values for c in make_columns(n)}
    first = pa.table({
        "user_id": pa.array(cols["user_id"][:6], pa.int32()),  # no 'city' column: its default applies
        "hist": pa.array(cols["hist"][:6], pa.large_list(pa.int16())),
        "age": pa.array(cols["age"][:6], pa.float32()),
        "item_id": pa.array(cols["item_id"][:6], pa.uint8()),
        "tags": pa.array(cols["tags"][:6], pa.large_list(pa.large_string())),
        "price": pa.array(cols["price"][:6], pa.float32()),
        "emb": pa.array(cols["emb"][:6], pa.list_(pa.float64(), 3)),
        "is_click": pa.array([bool(v) for v in cols["is_click"][:6]]),
        "watch_time": pa.array(cols["watch_time"][:6], pa.float64()),
        "weight": pa.array(cols["weight"][:6], pa.float64()),
        "day": pa.array(cols["day"][:6], pa.int32()),
    })
    cols["is_click"] = [bool(v) for v in cols["is_click"]]
    second = pa.table({name: pa.array(values[6:], first.schema.field(name).type) if name != "city"
                       else pa.array(values[6:]).dictionary_encode() for name, values in cols.items()})
    os.makedirs(tmp_path / "pq")
    pq.write_table(first, str(tmp_path / "pq" / "part-00000.parquet"))
    pq.write_table(second, str(tmp_path / "pq" / "part-00001.parquet"))
    expected_cols = [c if c.name != "city" else Column("city", "str", [None] * 6 + list(cols["city"][6:]))
                     for c in make_columns(n)]
    write_tfrecord(str(tmp_path / "x.tfrecord"), expected_cols, range(n), "none")
    expected = list(make_pipeline(data["spec"], str(tmp_path / "x.tfrecord"), InputConfig(batch_size=4, **ORDERED),
                                  compression="none"))
    got = list(parquet_pipeline(data, str(tmp_path / "pq" / "*"), batch_size=4, **ORDERED))
    assert_same_batches(expected, got)
    assert flat(got)["features/city"][:6] == [b"unk"] * 6


def test_synth_writes_parquet_that_inspect_reads(data, tmp_path, capsys):
    spec = str(data["root"] / "spec.yaml")
    assert main(["synth", spec, "--rows", "30", "--out", str(tmp_path / "synth"), "--format", "parquet",
                 "--shards", "2"]) == 0
    assert sorted(os.listdir(tmp_path / "synth")) == ["part-00000.parquet", "part-00001.parquet"]
    capsys.readouterr()
    assert main(["inspect", spec, "--data", str(tmp_path / "synth" / "*"), "--format", "parquet",
                 "--batch-size", "4"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in INPUTS) and "ragged" in table


# ----- bad data -----------------------------------------------------------------------------------------


def write_bad(tmp_path, column: str, row: int | None, value, **changes) -> str:
    path = str(tmp_path / f"{column}.parquet")
    cols = changed(column, row, value, **changes)
    write_parquet(path, cols, range(10), row_group_rows=4)
    return path


def test_a_missing_column_or_an_unusable_type_is_named_with_file_column_and_feature(data, tmp_path):
    path = write_bad(tmp_path, "is_click", None, None, drop=True)
    with pytest.raises(DataError) as info:
        parquet_pipeline(data, path)
    assert str(info.value).startswith(f"{path}: column 'is_click' (needed by label 'click') is missing")
    path = write_bad(tmp_path, "item_id", None, None, retype=("float", float))
    with pytest.raises(DataError) as info:
        parquet_pipeline(data, path)
    assert str(info.value) == (f"{path}: column 'item_id' is stored as double, but feature 'item_id', feature "
                               "'user_item' expects integers")
    path = write_bad(tmp_path, "hist", None, None, retype=("str_list", lambda v: [str(x) for x in v]))
    with pytest.raises(DataError, match=f"{path}: column 'hist' is stored as list<element: string>, but feature "
                                        "'hist' expects a list of integers"):
        parquet_pipeline(data, path)
    path = write_bad(tmp_path, "price", None, None, retype=("str", str))
    with pytest.raises(DataError, match="'price' is stored as string, but feature 'price' expects numbers"):
        parquet_pipeline(data, path)
    # every file must store a column with one type (integer widths may differ)
    ints = write_bad(tmp_path, "price", None, None, retype=("int", int))
    good = str(data["root"] / "pq" / "part-00000.parquet")
    with pytest.raises(DataError) as info:
        make_pipeline(data["spec"], [good, ints], InputConfig(), fmt="parquet")
    assert str(info.value) == (f"{ints}: column 'price' is stored as int64, but as double in {good}; every file "
                               "must store a column with one type")


def test_each_row_carries_its_first_flaw(data, tmp_path):
    """Nulls without a default, nulls inside lists and vectors of another length, found per row when the row
    group is read (the batch's checks then name the first flawed row); nulls with a default are not flaws."""
    cols = {c.name: list(c.values) for c in make_columns(10)}
    cols["item_id"][1] = None
    cols["hist"][2] = [1, None]
    cols["emb"][3] = [1.0, 2.0]
    cols["emb"][4] = None
    cols["is_click"][5] = None
    cols["tags"][7] = None  # a null list: empty
    cols["item_id"][8], cols["hist"][8] = None, [None]  # hist comes first among the columns
    path = str(tmp_path / "flaws.parquet")
    write_parquet(path, [Column(c.name, c.type, cols[c.name]) for c in make_columns(10)], range(10))
    layout = parquet.RowLayout(raw_columns(data["spec"]), parquet_pipeline(data, path).plan.stored)
    flaw = parquet.read_row_group(path, 0, layout)[0][:, -1].tolist()  # the last column of `ints`
    found = {row: (layout.flaws[code].column, layout.flaws[code].kind) for row, code in enumerate(flaw) if code >= 0}
    assert found == {1: ("item_id", parquet.NULL), 2: ("hist", parquet.NULL_ITEM), 3: ("emb", parquet.LENGTH),
                     4: ("emb", parquet.NULL), 5: ("is_click", parquet.NULL), 8: ("hist", parquet.NULL_ITEM)}
    messages = {(f.column, f.kind): f.message for f in layout.flaws}
    assert messages[("emb", parquet.LENGTH)] == "column 'emb' (read by feature 'emb') must hold 3 values"
    assert messages[("is_click", parquet.NULL)].startswith("column 'is_click' (needed by label 'click') is null")


@pytest.mark.parametrize("column,row,value,expected", [
    ("item_id", 5, None, "column 'item_id' (needed by feature 'item_id', feature 'user_item') is null in the record; "
                         "every record must carry it, or the spec must declare a default"),
    ("item_id", 7, -3, "negative id in column 'item_id'"),  # the value checks every format shares
])
def test_bad_values_are_named_with_file_and_row(data, tmp_path, column, row, value, expected):
    path = write_bad(tmp_path, column, row, value)
    message = error_of(parquet_pipeline(data, path, batch_size=4, **ORDERED))
    assert message.startswith(f"{path}#row {row}: {expected}"), message


def test_spec_refuses_a_compression_for_parquet(tmp_path):
    text = spec_text("input_test").replace("data: {format: tfrecord, compression: none}",
                                           "data: {format: parquet, compression: GZIP}")
    (tmp_path / "spec.yaml").write_text(text)
    with pytest.raises(SpecError, match=r"spec.yaml:2: data.compression: Parquet files compress inside"):
        load_spec(str(tmp_path / "spec.yaml"))
    (tmp_path / "spec.yaml").write_text(text.replace(", compression: GZIP", ""))
    assert load_spec(str(tmp_path / "spec.yaml")).data.format == "parquet"


# ----- sharding, epochs, shuffling ----------------------------------------------------------------------


def test_two_workers_share_the_row_groups_and_read_every_row_once(data):
    seen = [user_ids(parquet_pipeline(data, num_workers=2, worker_index=w, shuffle_buffer=4)) for w in (0, 1)]
    assert len(seen[0]) + len(seen[1]) == N_ROWS
    assert sorted(seen[0] + seen[1]) == [1000 + i for i in range(N_ROWS)]
    files = [range(0, 13), range(13, 26), range(26, 40)]
    groups = [set(range(f.start + g, min(f.start + g + GROUP_ROWS, f.stop))) for f in files
              for g in range(0, len(f), GROUP_ROWS)]
    for ids in seen:  # whole row groups, from every file: the unit of work is a (file, row group) pair
        rows = {u - 1000 for u in ids}
        assert rows == set().union(*[g for g in groups if g & rows])
        assert all(rows & set(f) for f in files)
    with pytest.raises(DataError, match=r"9 row group\(s\) in 3 Parquet file\(s\) cannot be sharded over 10"):
        parquet_pipeline(data, num_workers=10)


# ----- corruption ---------------------------------------------------------------------------------------


def test_a_damaged_row_group_is_named_or_skipped_and_counted(data, tmp_path):
    bad, good = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    write_parquet(bad, make_columns(20), range(20), row_group_rows=8)
    write_parquet(good, make_columns(20), range(20), row_group_rows=8)
    chunk = pq.ParquetFile(bad).metadata.row_group(1).column(0)  # user_id of rows 8-15
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    raw = bytearray(open(bad, "rb").read())
    raw[end - 4:end] = bytes(255 - b for b in raw[end - 4:end])  # inside the page data, under its checksum
    open(bad, "wb").write(bytes(raw))

    message = error_of(parquet_pipeline(data, str(tmp_path / "*.parquet"), batch_size=4, **ORDERED))
    assert message.startswith(f"{bad}: row group 1 (rows 8-15) cannot be read") and "--skip-corrupt" in message

    p = parquet_pipeline(data, str(tmp_path / "*.parquet"), batch_size=4, skip_corrupt=True, **ORDERED)
    assert [s.as_dict() for s in p.skipped] == [{"file": bad, "records": 8, "readable": 12,
                                                 "detail": p.skipped[0].detail}]
    assert p.skipped[0].row_groups == (1,)
    assert sorted(user_ids(p)) == sorted([1000 + i for i in range(20) if not 8 <= i < 16] + list(range(1000, 1020)))


def test_a_truncated_parquet_file_is_named_or_skipped(data, tmp_path):
    bad = str(tmp_path / "a.parquet")
    write_parquet(bad, make_columns(20), range(20), row_group_rows=8)
    write_parquet(str(tmp_path / "b.parquet"), make_columns(20), range(20))
    raw = open(bad, "rb").read()
    open(bad, "wb").write(raw[:len(raw) // 2])
    with pytest.raises(DataError) as info:
        parquet_pipeline(data, str(tmp_path / "*.parquet"))
    assert str(info.value).startswith(f"{bad}: not a readable Parquet file") and "--skip-corrupt" in str(info.value)
    p = parquet_pipeline(data, str(tmp_path / "*.parquet"), skip_corrupt=True)
    assert p.skipped_records == 1 and [s.file for s in p.skipped] == [bad]
    assert sorted(user_ids(p)) == list(range(1000, 1020))


# ----- exact resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_checkpointed_iterator_restores_to_exactly_the_remaining_rows(data, tmp_path, deterministic):
    """What the training loop does with its input position (`trainer.training.loop`): save the iterator in a
    tf.train.Checkpoint mid-epoch, restore it into the iterator of a pipeline built anew (shuffled, two epochs,
    row groups read two at a time)."""
    config = dict(batch_size=4, shuffle_buffer=8, epochs=2, seed=5, deterministic=deterministic, cycle_length=2)
    iterator = iter(parquet_pipeline(data, **config).dataset)
    before = [u for _ in range(7) for u in next(iterator)["features"]["user_id"].numpy().tolist()]
    saved = tf.train.Checkpoint(data=iterator).save(str(tmp_path / "ckpt"))
    remaining = [u for batch in iterator for u in batch["features"]["user_id"].numpy().tolist()]

    restored = iter(parquet_pipeline(data, **config).dataset)
    tf.train.Checkpoint(data=restored).restore(saved).assert_consumed()
    again = [u for batch in restored for u in batch["features"]["user_id"].numpy().tolist()]
    assert Counter(before + again) == Counter({1000 + i: 2 for i in range(N_ROWS)})  # every row once an epoch
    assert before != sorted(before)  # shuffled (unshuffled, the rows come in file order)
    if deterministic:  # the same seed, the same order
        assert again == remaining


# ----- kill -9 and resume: the training loop's own checkpoints ----------------------------------------------

JOB_ROWS = 1000  # 4 files of 250 rows, in row groups of 100 (3 a file)


@pytest.fixture(scope="module")
def parquet_job(tmp_path_factory):
    """The training-job spec reading Parquet, and its data: (spec path, training glob, validation glob)."""
    root = tmp_path_factory.mktemp("parquet_job")
    spec = root / "spec.yaml"
    spec.write_text(spec_text("training_job").replace("data: {format: tfrecord, compression: GZIP}",
                                                      "data: {format: parquet}"))
    generate(load_spec(str(spec)), JOB_ROWS, str(root / "data"), fmt="parquet", n_shards=4, seed=1, row_group_rows=100)
    return str(spec), str(root / "data" / "part-*"), str(root / "data" / "part-00000*")


@pytest.mark.slow
def test_a_parquet_job_killed_with_sigkill_resumes_reading_exactly_the_remaining_rows(parquet_job, tmp_path):
    """The training loop's input position over Parquet, across processes: the resumed job reads exactly as many
    rows as the killed one had not trained on. Which rows, and in which order, the iterator test above shows on
    the same iterator restored into a pipeline built anew (its py_function registered anew, as in a new
    process). The weights of a resumed job against an uninterrupted one's are compared for TFRecord
    (`test_training_job`); a reference run beside this one would double its processes."""
    full_steps = -(-JOB_ROWS * job.EPOCHS // job.BATCH)
    victim, log = str(tmp_path / "victim"), str(tmp_path / "victim.log")
    proc = job.start(job.train_args(parquet_job, victim, validate=False), log)
    seen = job.kill_past_checkpoint(proc, victim, log, 2 * job.CHECKPOINT_EVERY)
    killed_at, _ = job.checkpoint_state(victim, "latest")
    assert seen <= killed_at < full_steps - job.CHECKPOINT_EVERY  # mid-run: epochs and row groups were still to read

    out = job.finish(job.start(job.train_args(parquet_job, victim, validate=False), str(tmp_path / "resumed.log")),
                     str(tmp_path / "resumed.log"))
    assert f"resuming from {os.path.join(victim, 'checkpoints', f'ckpt-{killed_at}')}" in out
    resumed = job.metrics(victim)
    assert resumed["step"] == full_steps and resumed["training"]["steps_run"] == full_steps - killed_at
    # The input iterator resumed at the checkpoint's position: the batches trained before it plus the resumed
    # job's are the data, once an epoch (all batches but the last are full).
    assert killed_at * job.BATCH + resumed["training"]["examples"] == JOB_ROWS * job.EPOCHS
    job.assert_nothing_half_written(victim)
