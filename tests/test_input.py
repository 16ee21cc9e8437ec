"""The tf.data input pipeline: output against the spec, formats, determinism, bad data."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import math
from collections import Counter

import pytest
import tensorflow as tf

from conftest import spec_text
from trainer.spec.columns import raw_columns
from trainer.errors import DataError
from trainer.data.writers import Column, serialize_rows, shard_ranges, write_csv, write_shards, write_tfrecord
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.data.records import PAD_ID, PAD_STRING
from trainer.spec import load_spec

SPEC = spec_text("input_test")
N_ROWS, N_SHARDS = 40, 3
INPUTS = {"user_id", "city", "hist", "age", "item_id", "tags", "price", "emb"}
ORDERED = dict(shuffle_buffer=0, deterministic=True)


def make_columns(n: int = N_ROWS) -> list[Column]:
    """Row i has user_id 1000 + i (unique); values exact in float32 so CSV and TFRecord agree bit for bit."""
    return [
        Column("user_id", "int", [1000 + i for i in range(n)]),
        Column("city", "str", [None if i % 5 == 0 else f"c{i % 3}" for i in range(n)]),
        Column("hist", "int_list", [list(range(10 * i, 10 * i + i % 6)) for i in range(n)]),
        Column("age", "float", [None if i % 4 == 0 else 20.0 + i / 8 for i in range(n)]),
        Column("item_id", "int", [i % 7 for i in range(n)]),
        Column("tags", "str_list", [[f"t{i}_{j}" for j in range(i % 4)] for i in range(n)]),
        Column("price", "float", [i / 4 for i in range(n)]),
        Column("emb", "float_list", [[i / 8, -i / 8, 0.5] for i in range(n)]),
        Column("is_click", "int", [i % 2 for i in range(n)]),
        Column("watch_time", "float", [i * 1.5 for i in range(n)]),
        Column("weight", "float", [1.0 + (i % 3) / 2 for i in range(n)]),
        Column("day", "int", [20220425 + i % 2 for i in range(n)]),
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    (root / "spec.yaml").write_text(SPEC)
    cols = make_columns()
    for sub, fmt, comp in (("tfr", "tfrecord", "none"), ("gz", "tfrecord", "GZIP"), ("csv", "csv", "none")):
        write_shards(str(root / sub), cols, range(N_ROWS), N_SHARDS, fmt=fmt, compression=comp)
    return {"root": root, "spec": load_spec(str(root / "spec.yaml")), "cols": {c.name: c.values for c in cols}}


def pipeline(data, sub: str = "tfr", fmt: str = "tfrecord", comp: str = "none", **config):
    config = {"batch_size": 8, **config}
    pattern = str(data["root"] / sub / "*") if "*" not in sub and "/" not in sub else sub
    return make_pipeline(data["spec"], pattern, InputConfig(**config), fmt=fmt, compression=comp)


def to_py(value):
    return value.to_list() if isinstance(value, tf.RaggedTensor) else value.numpy().tolist()


def flat(batches: list[dict]) -> dict[str, list]:
    """Every tensor of the batches, concatenated row-wise as Python values."""
    out: dict[str, list] = {}
    for batch in batches:
        items = {**{f"features/{k}": v for k, v in batch["features"].items()},
                 **{f"labels/{k}": v for k, v in batch["labels"].items()},
                 "sample_weight": batch["sample_weight"], "group": batch["group"]}
        for key, value in items.items():
            out.setdefault(key, []).extend(to_py(value))
    return out


def user_ids(p) -> list[int]:
    return [u for batch in p for u in batch["features"]["user_id"].numpy().tolist()]


def error_of(p, exc=DataError) -> str:
    with pytest.raises(exc) as info:
        for _ in p:
            pass
    return str(info.value)


# ----- output against the spec ------------------------------------------------------------------------


def test_batch_keys_dtypes_and_shapes_follow_the_spec(data):
    batch = next(iter(pipeline(data, **ORDERED)))
    features = batch["features"]
    assert set(features) == {n for n, c in raw_columns(data["spec"]).items() if c.is_input} == INPUTS
    dtypes = {n: v.dtype for n, v in features.items()}
    assert dtypes == {"user_id": tf.int64, "city": tf.string, "hist": tf.int64, "age": tf.float32,
                      "item_id": tf.int64, "tags": tf.string, "price": tf.float32, "emb": tf.float32}
    for name in ("user_id", "city", "age", "item_id", "price"):
        assert isinstance(features[name], tf.Tensor) and features[name].shape.as_list() == [8], name
    assert features["emb"].shape.as_list() == [8, 3]
    for name in ("hist", "tags"):
        assert isinstance(features[name], tf.RaggedTensor) and features[name].ragged_rank == 1, name
        assert int(features[name].nrows()) == 8
    assert set(batch["labels"]) == {"click", "watch"}
    assert all(v.dtype == tf.float32 and v.shape.as_list() == [8] for v in batch["labels"].values())
    assert batch["sample_weight"].dtype == tf.float32 and batch["sample_weight"].shape.as_list() == [8]
    assert batch["group"].dtype == tf.string and batch["group"].shape.as_list() == [8]


def test_values_defaults_truncation_labels_weights_and_groups(data):
    got = flat(list(pipeline(data, **ORDERED)))
    cols = data["cols"]
    assert sorted(got["features/user_id"]) == [1000 + i for i in range(N_ROWS)]
    for row, uid in enumerate(got["features/user_id"]):
        i = uid - 1000
        expect_city = "unk" if cols["city"][i] is None else cols["city"][i]
        assert got["features/city"][row] == expect_city.encode()
        assert got["features/age"][row] == (30.0 if cols["age"][i] is None else cols["age"][i])
        assert got["features/hist"][row] == cols["hist"][i][-3:]  # keep: last, max_length 3
        assert got["features/tags"][row] == [t.encode() for t in cols["tags"][i][:2]]  # keep: first
        assert got["features/item_id"][row] == cols["item_id"][i]
        assert got["features/price"][row] == cols["price"][i]
        assert got["features/emb"][row] == cols["emb"][i]
        assert got["labels/click"][row] == float(cols["is_click"][i])
        assert got["labels/watch"][row] == cols["watch_time"][i]  # raw target: transforms come later
        assert got["sample_weight"][row] == cols["weight"][i]
        assert got["group"][row] == f"{uid}|{cols['day'][i]}".encode()
    # the data exercise truncation, empty sequences and defaults
    assert any(len(h) > 3 for h in cols["hist"]) and any(not h for h in got["features/hist"])
    assert got["features/city"].count(b"unk") == 8 and got["features/age"].count(30.0) == 10


def test_pad_sequences_gives_dense_padded_tensors(data):
    got = flat(list(pipeline(data, pad_sequences=True, **ORDERED)))
    batch = next(iter(pipeline(data, pad_sequences=True, **ORDERED)))
    assert isinstance(batch["features"]["hist"], tf.Tensor)
    assert batch["features"]["hist"].shape.as_list() == [8, 3] and batch["features"]["tags"].shape.as_list() == [8, 2]
    cols = data["cols"]
    for row, uid in enumerate(got["features/user_id"]):
        hist, tags = cols["hist"][uid - 1000][-3:], cols["tags"][uid - 1000][:2]
        assert got["features/hist"][row] == hist + [PAD_ID] * (3 - len(hist))
        assert got["features/tags"][row] == [t.encode() for t in tags] + [PAD_STRING.encode()] * (2 - len(tags))


def test_tfrecord_gzip_and_csv_give_identical_batches(data):
    runs = {sub: list(pipeline(data, sub, fmt, comp, **ORDERED))
            for sub, fmt, comp in (("tfr", "tfrecord", "none"), ("gz", "tfrecord", "GZIP"), ("csv", "csv", "none"))}
    assert len(runs["tfr"]) == math.ceil(N_ROWS / 8)
    for other in ("gz", "csv"):
        assert len(runs[other]) == len(runs["tfr"])
        for a, b in zip(runs["tfr"], runs[other]):
            fa, fb = flat([a]), flat([b])
            assert fa.keys() == fb.keys()
            for key in fa:
                assert fa[key] == fb[key], (other, key)
            for key in ("user_id", "city", "age", "item_id", "price", "emb", "hist", "tags"):
                assert a["features"][key].dtype == b["features"][key].dtype, (other, key)


# ----- determinism, epochs, sharding ------------------------------------------------------------------


def test_seeded_deterministic_shuffle_is_repeatable(data):
    config = dict(shuffle_buffer=16, deterministic=True, seed=3)
    first, second = flat(list(pipeline(data, **config))), flat(list(pipeline(data, **config)))
    assert first == second
    assert sorted(first["features/user_id"]) == [1000 + i for i in range(N_ROWS)]
    unshuffled = user_ids(pipeline(data, **ORDERED))
    assert first["features/user_id"] != unshuffled
    assert user_ids(pipeline(data, shuffle_buffer=16, deterministic=True, seed=4)) != first["features/user_id"]


def test_two_epochs_yield_every_row_twice(data):
    ids = user_ids(pipeline(data, epochs=2, shuffle_buffer=8, seed=1))
    assert len(ids) == 2 * N_ROWS and set(Counter(ids).values()) == {2}


def test_workers_read_disjoint_whole_files_covering_all_rows(data):
    shards = [{1000 + i for i in r} for r in shard_ranges(N_ROWS, N_SHARDS)]
    seen = [set(user_ids(pipeline(data, num_workers=2, worker_index=w, shuffle_buffer=4))) for w in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {1000 + i for i in range(N_ROWS)}
    for ids in seen:  # each worker reads whole files
        assert ids == set().union(*[s for s in shards if s & ids])
    with pytest.raises(DataError, match="3 file.*4 workers"):
        pipeline(data, num_workers=4)


# ----- bad data ---------------------------------------------------------------------------------------


def write_both(root, name: str, cols: list[Column], n: int = 10) -> tuple[str, str]:
    """One TFRecord and one CSV file holding `cols`."""
    tfr, csv = str(root / name / "x.tfrecord"), str(root / name / "x.csv")
    write_tfrecord(tfr, cols, range(n), "none")
    write_csv(csv, cols, range(n))
    return tfr, csv


def changed(column: str, row: int | None, value, n: int = 10, drop: bool = False, retype=None) -> list[Column]:
    out = []
    for c in make_columns(n):
        if c.name == column:
            if drop:
                continue
            values = list(c.values)
            if row is not None:
                values[row] = value
            c = Column(c.name, retype[0], [retype[1](v) for v in values]) if retype else Column(c.name, c.type, values)
        out.append(c)
    return out


def bad_pipeline(data, path: str, **config):
    fmt = "csv" if path.endswith(".csv") else "tfrecord"
    config = InputConfig(batch_size=4, **ORDERED, **config)
    return make_pipeline(data["spec"], path, config, fmt=fmt, compression="none")


def test_file_missing_a_required_column_is_named(data, tmp_path):
    tfr, csv = write_both(tmp_path, "nocol", changed("is_click", None, None, drop=True))
    for path in (tfr, csv):
        with pytest.raises(DataError) as info:
            bad_pipeline(data, path)
        assert path in str(info.value) and "'is_click'" in str(info.value) and "label 'click'" in str(info.value)


def test_record_missing_a_required_value_names_file_record_and_column(data, tmp_path):
    tfr, csv = write_both(tmp_path, "novalue", changed("item_id", 5, None))
    message = error_of(bad_pipeline(data, tfr))
    assert f"{tfr}#5" in message and "'item_id'" in message and "missing" in message
    message = error_of(bad_pipeline(data, csv))
    assert f"{csv}:7" in message and "'item_id'" in message  # line 7: header + 5 rows before it


def test_wrong_vector_length_names_the_record(data, tmp_path):
    tfr, csv = write_both(tmp_path, "shortvec", changed("emb", 4, [1.0, 2.0]))
    message = error_of(bad_pipeline(data, tfr))
    assert f"{tfr}#4" in message and "'emb'" in message
    message = error_of(bad_pipeline(data, csv))
    assert f"{csv}:6" in message and "'emb'" in message and "3 values" in message


def test_type_mismatch_mid_file_names_record_and_column(data, tmp_path):
    good, bad = make_columns(6), changed("item_id", None, None, n=6, retype=("float", float))
    records = serialize_rows(good, range(3)) + serialize_rows(bad, range(3, 6))
    path = str(tmp_path / "mixed.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    message = error_of(bad_pipeline(data, path))
    assert f"{path}#3" in message and "'item_id'" in message


def test_id_stored_as_float_is_a_type_error_naming_column_and_file(data, tmp_path):
    tfr, csv = write_both(tmp_path, "floatid", changed("item_id", None, None, retype=("float", float)))
    with pytest.raises(DataError) as info:
        bad_pipeline(data, tfr)
    assert tfr in str(info.value) and "'item_id'" in str(info.value) and "float32" in str(info.value)
    message = error_of(bad_pipeline(data, csv))
    assert csv in message and "'item_id'" in message and "integer" in message


def record_spans(cols: list[Column], n: int) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each record in an uncompressed TFRecord file."""
    spans, offset = [], 0
    for record in serialize_rows(cols, range(n)):
        spans.append((offset, offset + 16 + len(record)))
        offset = spans[-1][1]
    return spans


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_tfrecord_fails_naming_the_file_or_is_skipped_and_counted(data, tmp_path, damage):
    cols = make_columns(20)
    bad, good = str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")
    write_tfrecord(bad, cols, range(20), "none")
    write_tfrecord(good, cols, range(20), "none")
    raw = bytearray(open(bad, "rb").read())
    spans = record_spans(cols, 20)
    assert spans[-1][1] == len(raw)
    if damage == "flip":
        cut = len(raw) // 2
        raw[cut:cut + 4] = bytes(255 - b for b in raw[cut:cut + 4])
    else:
        cut = (spans[11][0] + spans[11][1]) // 2  # inside record 11
        del raw[cut:]
    open(bad, "wb").write(bytes(raw))
    readable = next(k for k, (start, end) in enumerate(spans) if start <= cut < end)
    assert 0 < readable < 20

    message = error_of(bad_pipeline(data, str(tmp_path / "*.tfrecord")))
    assert bad in message and good not in message and "corrupt" in message

    p = bad_pipeline(data, str(tmp_path / "*.tfrecord"), skip_corrupt=True)
    assert p.skipped_records == 1 and [s.file for s in p.skipped] == [bad]
    assert p.skipped[0].readable == readable
    ids = user_ids(p)
    assert sorted(ids) == sorted(list(range(1000, 1000 + readable)) + list(range(1000, 1020)))


def test_truncated_gzip_tfrecord_is_named_and_skippable(data, tmp_path):
    cols = make_columns(20)
    bad = str(tmp_path / "a.tfrecord.gz")
    write_tfrecord(bad, cols, range(20), "GZIP")
    raw = open(bad, "rb").read()
    open(bad, "wb").write(raw[:len(raw) * 2 // 3])
    spec = data["spec"]
    config = InputConfig(batch_size=4, **ORDERED)
    message = error_of(make_pipeline(spec, bad, config, compression="GZIP"))
    assert bad in message
    p = make_pipeline(spec, bad, InputConfig(batch_size=4, skip_corrupt=True, **ORDERED), compression="GZIP")
    ids = user_ids(p)
    assert p.skipped_records == 1 and 0 < len(ids) < 20 and ids == list(range(1000, 1000 + len(ids)))


def test_csv_wrong_field_count_fails_naming_line_or_is_skipped(data, tmp_path):
    path = str(tmp_path / "fields.csv")
    write_csv(path, make_columns(12), range(12))
    lines = open(path).read().splitlines(keepends=True)
    lines[4] = lines[4].rstrip("\n") + ",extra\n"  # line 5: one field too many (only unused fields shift)
    lines[8] = lines[8].rsplit(",", 1)[0] + "\n"  # line 9: the last field (day) missing
    open(path, "w").writelines(lines)
    message = error_of(bad_pipeline(data, path))
    assert path in message and "line 5" in message and "fields" in message
    p = bad_pipeline(data, path, skip_corrupt=True)
    assert p.skipped_records == 2 and p.skipped[0].lines == (5, 9)
    assert sorted(user_ids(p)) == [1000 + i for i in range(12) if i not in (3, 7)]


def test_csv_non_numeric_value_names_line_and_column_or_is_skipped(data, tmp_path):
    path = str(tmp_path / "num.csv")
    write_csv(path, make_columns(12), range(12))
    lines = open(path).read().splitlines(keepends=True)
    fields = lines[6].split(",")
    fields[3] = "abc"  # age
    lines[6] = ",".join(fields)
    open(path, "w").writelines(lines)
    message = error_of(bad_pipeline(data, path))
    assert path in message and "line 7" in message and "'age'" in message and "'abc'" in message
    p = bad_pipeline(data, path, skip_corrupt=True)
    assert p.skipped_records == 1 and sorted(user_ids(p)) == [1000 + i for i in range(12) if i != 5]


@pytest.mark.parametrize("column,row,value,users", [
    ("age", 6, float("nan"), "feature 'age'"),
    ("price", 2, float("inf"), "feature 'price'"),
    ("watch_time", 7, float("nan"), "label 'watch'"),
    ("emb", 3, [0.0, float("-inf"), 1.0], "feature 'emb'"),
])
def test_nan_and_inf_are_reported_with_column_and_record(data, tmp_path, column, row, value, users):
    tfr, csv = write_both(tmp_path, column, changed(column, row, value))
    for path, origin in ((tfr, f"{tfr}#{row}"), (csv, f"{csv}:{row + 2}")):
        message = error_of(bad_pipeline(data, path))
        assert origin in message and f"'{column}'" in message and users in message and "NaN or inf" in message
    p = bad_pipeline(data, tfr, check_values=False)  # the check can be turned off
    assert len(user_ids(p)) == 10


def test_binary_label_outside_0_1_is_reported(data, tmp_path):
    tfr, csv = write_both(tmp_path, "label2", changed("is_click", 3, 2))
    for path, origin in ((tfr, f"{tfr}#3"), (csv, f"{csv}:5")):
        message = error_of(bad_pipeline(data, path))
        assert origin in message and "label 'click'" in message and "'is_click'" in message
        assert "0 or 1" in message and "value: 2" in message


def test_glob_matching_nothing(data, tmp_path):
    with pytest.raises(DataError, match="no files match .*nothing"):
        make_pipeline(data["spec"], str(tmp_path / "nothing" / "*.tfrecord"))


def test_errors_are_plain_data_errors_without_tensorflow_noise(data, tmp_path):
    tfr, _ = write_both(tmp_path, "noise", changed("is_click", 5, None))
    message = error_of(bad_pipeline(data, tfr))
    assert "function_node" not in message and "Iterator::" not in message and "[[" not in message
    assert message.startswith(f"{tfr}#5: column 'is_click'")


NUMBERS_SPEC = spec_text("input_numbers")


def test_numbers_stored_as_int64_take_their_defaults(tmp_path):
    """Integer-stored numbers with a default, absent from the first records: typed from later records,
    parsed, and defaulted (also with a non-integral default) the same way in TFRecord and CSV."""
    (tmp_path / "spec.yaml").write_text(NUMBERS_SPEC)
    spec = load_spec(str(tmp_path / "spec.yaml"))
    n = 12
    views = [None if i < 3 or i % 4 == 0 else 10 * i for i in range(n)]
    ratio = [None if i < 5 or i % 3 == 0 else i for i in range(n)]
    cols = [Column("user_id", "int", list(range(n))), Column("item_id", "int", [7] * n),
            Column("views", "int", views), Column("ratio", "int", ratio), Column("click", "int", [0, 1] * (n // 2))]
    write_tfrecord(str(tmp_path / "x.tfrecord"), cols, range(n), "none")
    write_csv(str(tmp_path / "x.csv"), cols, range(n))
    for path, fmt in ((tmp_path / "x.tfrecord", "tfrecord"), (tmp_path / "x.csv", "csv")):
        p = make_pipeline(spec, str(path), InputConfig(batch_size=n, **ORDERED), fmt=fmt, compression="none")
        if fmt == "tfrecord":
            assert p.plan.stored["views"] == "int64" and p.plan.stored["ratio"] == "int64"
        batch = next(iter(p))["features"]
        assert batch["views"].dtype == tf.float32 and batch["ratio"].dtype == tf.float32
        assert batch["views"].numpy().tolist() == [0.0 if v is None else float(v) for v in views], fmt
        assert batch["ratio"].numpy().tolist() == [0.5 if v is None else float(v) for v in ratio], fmt


def test_record_that_is_not_a_tf_example_is_located(data, tmp_path):
    good = serialize_rows(make_columns(6), range(6))
    path = str(tmp_path / "garbage.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:  # valid framing and checksums, an unparsable payload
        for record in good[:3] + [b"\x0a\x05garbage-not-a-proto"] + good[3:]:
            writer.write(record)
    message = error_of(bad_pipeline(data, path))
    assert f"{path}#3" in message and "not a tf.Example" in message
