"""Arrow record batches -> serialized tf.Example records, vectorised (no Python object per value).

The protobuf wire format of a tf.Example is written with numpy, column by
column, straight into one buffer for the whole batch:

    Example  = 0x0A len Features
    Features = one map entry per present column, in column order:
               0x0A len (0x0A len KEY) (0x12 len Feature)
    Feature  = 0x0A len BytesList | 0x12 len FloatList | 0x1A len Int64List
    lists    = Int64List: 0x0A len packed varints; FloatList: 0x0A len packed little-endian float32;
               BytesList: 0x0A len VALUE per value (an empty list is an empty message)

Every length is known before a byte is written (a first pass computes them
from the values), so each byte is written once. A missing value (null) leaves
the column out of the record; an empty list is present with no values.
Integers are int64 (negative ones as 10-byte varints), floats float32. Entries
follow the column order, so the same batch always gives the same bytes
(protobuf's own map order is not fixed). `tests/test_example_encoding.py`
parses the records back with protobuf.
"""
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.errors import DataError

_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 0x0A, 0x12, 0x1A
_MAX_VARINT = 10


@dataclass
class Records:
    """Serialized records stored flat: record i is data[offsets[i]:offsets[i + 1]]."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, n + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self) -> list[bytes]:
        buffer = self.data.tobytes()
        bounds = self.offsets.tolist()
        return [buffer[a:b] for a, b in zip(bounds, bounds[1:])]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of each value's varint (int64 values as protobuf writes them: two's complement, uint64)."""
    v = values.astype(np.int64, copy=False).view(np.uint64)
    lengths = np.ones(len(v), np.int64)
    top = int(v.max()) if len(v) else 0
    for k in range(1, _MAX_VARINT):
        if top < 1 << (7 * k):
            break
        lengths += v >= np.uint64(1 << (7 * k))
    return lengths


def varint_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n x 10 bytes, lengths): each value's varint, left-aligned in its row."""
    v = values.astype(np.int64, copy=False).view(np.uint64)
    lengths = varint_lengths(v)
    width = int(lengths.max()) if len(v) else 1
    matrix = np.empty((len(v), width), np.uint8)
    for k in range(width):
        matrix[:, k] = ((v >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        matrix[:, k] |= np.where(lengths > k + 1, 0x80, 0).astype(np.uint8)
    return matrix, lengths


def flat_varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets): the varints of `values` one after the other."""
    matrix, lengths = varint_matrix(values)
    mask = np.arange(matrix.shape[1])[None, :] < lengths[:, None]
    return matrix[mask], _offsets(lengths)


def _put(streams: list[tuple[np.ndarray, np.ndarray]], n: int) -> "Records":
    """Row-wise concatenation of byte streams: record i is row i of each stream in turn. A stream is (bytes,
    row offsets) with its rows contiguous and in row order."""
    lengths = [np.diff(offsets) for _, offsets in streams]
    records = _offsets(np.sum(lengths, axis=0) if lengths else np.zeros(n, np.int64))
    data = np.empty(int(records[-1]), np.uint8)
    cursor = records[:-1].copy()
    for (flat, offsets), length in zip(streams, lengths):
        if len(flat):
            shift = np.repeat(cursor - offsets[:-1], length)
            data[np.arange(len(flat), dtype=np.int64) + shift] = flat
        cursor += length
    return Records(data, records)


def _compact(pieces: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, row offsets) of each row's pieces one after the other; a piece is (matrix, lengths): row i takes
    the first lengths[i] bytes of its matrix row (a 1-row matrix is shared by every row)."""
    matrices, valid = [], []
    for matrix, lengths in pieces:
        width = matrix.shape[1]
        matrices.append(np.broadcast_to(matrix, (n, width)))
        valid.append(np.arange(width)[None, :] < lengths[:, None])
    matrix, mask = np.concatenate(matrices, axis=1), np.concatenate(valid, axis=1)
    return matrix[mask], _offsets(mask.sum(axis=1))


def _constant(value: bytes, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.frombuffer(value, np.uint8)[None, :], present * len(value)


def _varints(values: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    matrix, lengths = varint_matrix(values)
    return matrix, np.where(present, lengths, 0)


@dataclass
class _Column:
    """One column's entries: what each row's entry holds and how long each part is."""

    key_field: bytes  # 0x0A len KEY 0x12
    tag: int  # the Feature's list field
    present: np.ndarray  # rows with the column
    packed: bool  # int64 / float lists: the values sit in one packed field
    payload: np.ndarray  # the values' bytes (packed varints, float32, or 0x0A len VALUE per string)
    payload_offsets: np.ndarray  # row i's payload (empty where the column is absent)

    def streams(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(the entries' headers, the payloads) as two byte streams."""
        present, n = self.present, len(self.present)
        payload = np.diff(self.payload_offsets)
        nonempty = present & (payload > 0)
        inner = np.where(nonempty, 1 + varint_lengths(payload) + payload, 0) if self.packed else payload
        feature = 1 + varint_lengths(inner) + inner
        body = len(self.key_field) + varint_lengths(feature) + feature
        pieces = [_constant(b"\x0a", present), _varints(body, present), _constant(self.key_field, present),
                  _varints(feature, present), _constant(bytes([self.tag]), present), _varints(inner, present)]
        if self.packed:
            pieces += [_constant(b"\x0a", nonempty), _varints(payload, nonempty)]
        return [_compact(pieces, n), (self.payload, self.payload_offsets)]


def _strings(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a (non-null) string / binary array."""
    array = array.cast(pa.large_binary())
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], np.int64, len(array) + 1, array.offset * 8)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return data[offsets[0]:offsets[-1]], offsets - offsets[0]


def _is_text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_string_view(kind))


def _column(name: str, array: pa.Array) -> _Column:
    kind = array.type
    present = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), bool)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        element = kind.value_type
        array = array.cast(pa.large_list(element))
        if not present.all():
            array = pc.if_else(pa.array(present), array, pa.scalar([], array.type))
        row_offsets = np.asarray(array.offsets.to_numpy(), np.int64)
        values = array.values.slice(int(row_offsets[0]), int(row_offsets[-1] - row_offsets[0]))
        row_offsets = row_offsets - row_offsets[0]
        if values.null_count:
            raise DataError(f"column '{name}': a list holds a missing value (null); lists hold ids or numbers")
    else:
        element, values, row_offsets = kind, array, np.arange(len(array) + 1, dtype=np.int64)
    key = name.encode("utf-8")
    key_matrix, key_length = varint_matrix(np.array([len(key)]))
    key_field = b"\x0a" + key_matrix[0, :key_length[0]].tobytes() + key + b"\x12"
    if pa.types.is_integer(element) or pa.types.is_boolean(element):
        ints = np.asarray(pc.fill_null(values.cast(pa.int64()), 0).to_numpy(), np.int64)
        payload, value_offsets = flat_varints(ints)
        if len(values) == len(array) and kind == element:  # scalars: absent rows carry no bytes
            payload, value_offsets = _drop_absent(payload, value_offsets, present)
        return _Column(key_field, _INT64_LIST, present, True, payload, value_offsets[row_offsets])
    if pa.types.is_floating(element):
        floats = np.asarray(pc.fill_null(values.cast(pa.float32()), 0).to_numpy(), "<f4")
        lengths = np.diff(row_offsets) * 4
        if kind == element:
            lengths = np.where(present, lengths, 0)
            floats = floats[present]
        return _Column(key_field, _FLOAT_LIST, present, True, floats.view(np.uint8), _offsets(lengths))
    if _is_text(element):
        if kind == element:
            values = values.filter(pa.array(present))
            counts = present.astype(np.int64)
        else:
            counts = np.diff(row_offsets)
        data, string_offsets = _strings(values)
        string_lengths = np.diff(string_offsets)
        header, header_lengths = varint_matrix(string_lengths)
        everything = np.ones(len(string_lengths), bool)
        head = _compact([_constant(b"\x0a", everything), (header, header_lengths)], len(string_lengths))
        each = _put([head, (data, string_offsets)], len(string_lengths))  # 0x0A len VALUE per value
        return _Column(key_field, _BYTES_LIST, present, False, each.data, each.offsets[_offsets(counts)])
    raise DataError(f"column '{name}': type {kind} cannot be written to a tf.Example (integers, floats, strings, "
                    "or lists of them)")


def _drop_absent(payload: np.ndarray, offsets: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if present.all():
        return payload, offsets
    lengths = np.diff(offsets)
    keep = np.repeat(present, lengths)
    return payload[keep], _offsets(np.where(present, lengths, 0))


def encode_batch(batch: pa.RecordBatch) -> Records:
    """Each row of `batch` as a serialized tf.Example (features named as its columns)."""
    n = batch.num_rows
    streams = [stream for name, array in zip(batch.schema.names, batch.columns)
               for stream in _column(name, array).streams()]
    features = np.sum([np.diff(offsets) for _, offsets in streams], axis=0) if streams else np.zeros(n, np.int64)
    everything = np.ones(n, bool)
    head = _compact([_constant(b"\x0a", everything), _varints(features, everything)], n)
    return _put([head, *streams], n)
