"""convert-kuairand on top of the generic converter gives what the KuaiRand converter before it gave.

`tests/data/kuairand_before_generic_converter.json` holds, per column, a digest of every value the earlier
converter (joins and casts in Python, commit e19e486) wrote on the head slice (first 3,000 impressions), the last
slice (last 3,000) and the whole log (`digests` below, run on its output), and its files' row counts; the
conversions here must match it column by column. The conversion is also reproducible byte for byte (the earlier one was not: protobuf's map order).
"""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import glob
import hashlib
import json
import os

import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

from conftest import KUAIRAND_SPEC, REPO
from trainer.data.datasets.kuairand import convert_kuairand
from trainer.errors import DataError
from trainer.spec import load_spec, parse_spec

SRC = os.path.join(REPO, "data", "kuairand")
BEFORE = os.path.join(REPO, "tests", "data", "kuairand_before_generic_converter.json")


_DTYPES = {"int64_list": tf.int64, "float_list": tf.float32, "bytes_list": tf.string}


def digests(out_dir: str) -> dict:
    """Rows per file, and per column a digest of its values as the pipeline parses them: the list kind, each
    row's number of values (0 where the column is absent or its list empty), and the values, in file order."""
    files = sorted(glob.glob(os.path.join(out_dir, "date=*", "part-*.tfrecord.gz")))
    per_file = {os.path.relpath(f, out_dir): sum(1 for _ in tf.data.TFRecordDataset(f, "GZIP")) for f in files}
    records = tf.concat([batch for batch in tf.data.TFRecordDataset(files, "GZIP").batch(100_000)], axis=0)
    kinds: dict[str, str] = {}  # column -> list kind, from the first record that types it
    names: set[str] = set()
    for record in records.numpy():
        for name, feature in example_pb2.Example.FromString(record).features.feature.items():
            names.add(name)
            if name not in kinds and feature.WhichOneof("kind"):
                kinds[name] = feature.WhichOneof("kind")
        if len(kinds) == len(names) and len(names) > 100:
            break
    parsed = tf.io.parse_example(records, {name: tf.io.RaggedFeature(_DTYPES[kind]) for name, kind in kinds.items()})
    columns = {}
    for name, kind in sorted(kinds.items()):
        ragged = parsed[name]
        h = hashlib.sha256(kind.encode())
        h.update(ragged.row_lengths().numpy().astype("<i8").tobytes())
        values = ragged.flat_values.numpy()
        h.update(b"\0".join(values.tolist()) if kind == "bytes_list" else values.astype(values.dtype.newbyteorder("<")).tobytes())
        columns[name] = h.hexdigest()[:16]
    return {"files": per_file, "columns": columns}


def assert_same(out_dir: str, slice_name: str) -> None:
    with open(BEFORE, encoding="utf-8") as fh:
        before = json.load(fh)[slice_name]
    now = digests(out_dir)
    assert now["files"] == before["files"]
    assert len(now["columns"]) == len(before["columns"]) == 123
    differ = sorted(c for c in set(now["columns"]) | set(before["columns"])
                    if now["columns"].get(c) != before["columns"].get(c))
    assert not differ, f"columns whose values changed: {differ}"


def test_the_head_and_last_slices_hold_the_same_values_as_before(kuairand_slice, kuairand_heldout):
    assert_same(kuairand_slice, "head")
    assert_same(os.path.dirname(os.path.dirname(kuairand_heldout)), "last")


def test_a_conversion_is_reproducible_byte_for_byte(kuairand_slice, tmp_path):
    again = convert_kuairand(SRC, str(tmp_path / "again"), shards_per_date=1, max_rows=3000)

    def hashes(out: str) -> dict[str, str]:
        return {os.path.relpath(f, out): hashlib.sha256(open(f, "rb").read()).hexdigest()
                for f in sorted(glob.glob(os.path.join(out, "date=*", "*")))}

    assert hashes(again.out_dir) == hashes(kuairand_slice) and len(again.files) == 1  # one date


def test_the_columns_are_checked_against_a_spec(tmp_path):
    result = convert_kuairand(SRC, str(tmp_path / "checked"), max_rows=500, spec=load_spec(KUAIRAND_SPEC),
                              fmt="parquet")
    assert result.rows == 500 and all(f.endswith(".parquet") for f in result.files)
    text = open(KUAIRAND_SPEC, encoding="utf-8").read().replace("column: is_like", "column: is_liked")
    with pytest.raises(DataError, match=r"column 'is_liked' \(needed by label 'like'\) is in none of the tables: "
                                        r".*interactions\.parquet, .*user_features\.parquet \(joined on user_id\)"):
        convert_kuairand(SRC, str(tmp_path / "refused"), max_rows=500, spec=parse_spec(text, KUAIRAND_SPEC))
    assert not os.path.exists(tmp_path / "refused")


@pytest.mark.slow  # converts the whole log (95k impressions)
def test_the_whole_log_holds_the_same_values_as_before(tmp_path):
    convert_kuairand(SRC, str(tmp_path / "all"))
    assert_same(str(tmp_path / "all"), "full")
