"""The vectorised tf.Example encoder: records parse back (protobuf, and TensorFlow's parser) to the batch's
values, with missing values absent and empty lists present."""
import trainer  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2

from trainer.data.example_encoding import encode_batch, varint_lengths
from trainer.errors import DataError


def values(record: bytes) -> dict:
    out = {}
    for name, feature in example_pb2.Example.FromString(record).features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = (kind, list(getattr(feature, kind).value))
    return out


def test_every_type_parses_back_with_nulls_absent_and_empty_lists_present():
    batch = pa.record_batch({
        "i": pa.array([1, -1, None, 2**62, -(2**63)], pa.int64()),
        "b": pa.array([True, False, None, True, False]),
        "f": pa.array([1.5, None, -0.0, 3.25, 1e-3], pa.float64()),
        "s": pa.array(["a", "", None, "héllo", "x" * 300]),
        "li": pa.array([[1, 2, 300], [], None, [-5], list(range(200))], pa.list_(pa.int64())),
        "ls": pa.array([["a", "bb"], [], None, ["é", ""], ["z"] * 3]),
        "lf": pa.array([[1.0, 2.0], [], None, [0.5], [1e10]], pa.list_(pa.float32())),
        "键": pa.array([7, 8, 9, 10, 11]),  # a non-ASCII column name
    })
    rows = encode_batch(batch).rows()
    assert len(rows) == 5
    assert values(rows[0]) == {"i": ("int64_list", [1]), "b": ("int64_list", [1]), "f": ("float_list", [1.5]),
                               "s": ("bytes_list", [b"a"]), "li": ("int64_list", [1, 2, 300]),
                               "ls": ("bytes_list", [b"a", b"bb"]), "lf": ("float_list", [1.0, 2.0]),
                               "键": ("int64_list", [7])}
    assert values(rows[1]) == {"i": ("int64_list", [-1]), "b": ("int64_list", [0]), "s": ("bytes_list", [b""]),
                               "li": ("int64_list", []), "ls": ("bytes_list", []), "lf": ("float_list", []),
                               "键": ("int64_list", [8])}
    assert values(rows[2]) == {"f": ("float_list", [-0.0]), "键": ("int64_list", [9])}
    assert values(rows[3])["ls"] == ("bytes_list", ["é".encode(), b""])
    assert values(rows[4])["i"] == ("int64_list", [-(2**63)]) and values(rows[4])["li"][1] == list(range(200))
    assert values(rows[4])["s"] == ("bytes_list", [b"x" * 300])  # a length past one varint byte


def test_random_batches_parse_back_through_tensorflow():
    rng = np.random.default_rng(0)
    n = 2000
    lengths = rng.integers(0, 40, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ids = rng.integers(-(2**40), 2**40, offsets[-1])
    valid = rng.random(n) > 0.1
    batch = pa.record_batch({
        "seq": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
        "id": pa.array(rng.integers(0, 2**33, n), mask=~valid),
        "x": pa.array(rng.standard_normal(n).astype(np.float32)),
        "word": pa.array([f"w{k}" * int(k % 7) for k in range(n)]),
    })
    records = encode_batch(batch).rows()
    parsed = tf.io.parse_example(records, {"seq": tf.io.RaggedFeature(tf.int64), "id": tf.io.RaggedFeature(tf.int64),
                                           "x": tf.io.FixedLenFeature([], tf.float32),
                                           "word": tf.io.FixedLenFeature([], tf.string)})
    assert parsed["seq"].to_list() == [ids[a:b].tolist() for a, b in zip(offsets, offsets[1:])]
    assert parsed["id"].to_list() == [[v] if ok else [] for v, ok in zip(batch.column("id").to_pylist(), valid)]
    np.testing.assert_array_equal(parsed["x"].numpy(), batch.column("x").to_numpy())
    assert [w.decode() for w in parsed["word"].numpy()] == batch.column("word").to_pylist()
    assert encode_batch(batch).rows() == records  # the same batch, the same bytes


def test_varint_lengths_and_refusals():
    values = np.array([0, 127, 128, 16383, 16384, 2**63 - 1, -1], np.int64)
    assert varint_lengths(values).tolist() == [1, 1, 2, 2, 3, 9, 10]
    with pytest.raises(DataError, match="column 'nested': a list holds a missing value"):
        encode_batch(pa.record_batch({"nested": pa.array([[1, None]])}))
    with pytest.raises(DataError, match="column 'when': type timestamp"):
        encode_batch(pa.record_batch({"when": pa.array([0], pa.timestamp("s"))}))
