"""How an export stores embedding rows: float32 (as trained), float16, or int8 with a per-row scale and offset.

int8 (row-wise, asymmetric): each row x is stored as q = round((x - offset) / scale) - 128, an int8 per value,
with its own float16 `offset` (the row's minimum, rounded down to a float16) and float16 `scale` (the row's
range over 255, rounded up to a float16), so that q never clips and every value comes back within half a
step (scale / 2) of the trained one. At dim 16 a row is 16 + 2 + 2 = 20 bytes instead of 64 (68.75% smaller);
float32 scale and offset would make it 24. The lookup dequantizes with stock ops only (gather, cast, add,
multiply, add: `dequantize`), after the pruned-index remap, so TF Serving and tf2onnx take the graph as is.
An all-zero row (the pruned rows' shared row) has scale 0 and offset 0 and reads exact zeros.

float16: each value rounded to the nearest float16 and cast back to float32 at lookup (32 bytes a row at
dim 16); its step is the float16 spacing at the value, so the error is at most half of it.

Small tables stay float32 whatever the format (`table_format`): a table of at most FLOAT32_MAX_ROWS rows
(4 KiB at dim 16) saves at most 2.9 KiB as int8, while its dequantizing ops (a gather of the scale and offset, a
cast, a multiply and two adds) cost every lookup the same as a large table's; the KuaiRand student has 29 such
tables (one-hot user attributes, context, item types) of its 36, 0.9% of its float32 bytes.

A table whose values exceed float16's range (|x| > 65504) cannot be stored either way: an ExportError
names it.
"""
import numpy as np
import tensorflow as tf

from trainer.errors import ConfigError, ExportError

FORMATS = ("float32", "float16", "int8")
INT8_LEVELS = 255  # steps between a row's minimum and maximum
INT8_SHIFT = 128  # q is stored as q - 128 in an int8
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT32_MAX_ROWS = 64  # tables of at most this many rows are stored float32 in any format (`table_format`)


def table_format(embeddings: str, rows: int, float32_max_rows: int = FLOAT32_MAX_ROWS) -> str:
    """The format a table of `rows` rows is stored in, in an export of format `embeddings`: float32 for a table
    of at most `float32_max_rows` rows (0: none), else `embeddings`."""
    return "float32" if rows <= float32_max_rows else embeddings


def check_format(embeddings: str, where: str = "--embeddings") -> str:
    """`embeddings` if it is a known format, else a ConfigError naming the option and the choices."""
    if embeddings not in FORMATS:
        raise ConfigError.single(where, "", f"expected one of {', '.join(FORMATS)}, got {embeddings!r}")
    return embeddings


def row_bytes(dim: int, embeddings: str) -> int:
    """Bytes one stored row takes: its values, plus the int8 format's float16 scale and offset."""
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim + 4}[check_format(embeddings)]


def _round_float16(values: np.ndarray, direction: str) -> np.ndarray:
    """float16 nearest to `values`, moved one float16 step "down" (<= values) or "up" (>= values) when rounding
    went the other way."""
    rounded = values.astype(np.float16)
    if direction == "down":
        wrong = rounded.astype(np.float32) > values
        return np.where(wrong, np.nextafter(rounded, np.float16(-np.inf)), rounded)
    wrong = rounded.astype(np.float32) < values
    return np.where(wrong, np.nextafter(rounded, np.float16(np.inf)), rounded)


def quantize(values: np.ndarray, embeddings: str, table: str = "") -> dict[str, np.ndarray]:
    """The stored arrays of float32 rows [rows, dim]: {"values"} (float32, float16) or {"values", "scale",
    "offset"} (int8: int8 values, float16 scale and offset per row)."""
    check_format(embeddings)
    values = np.asarray(values, np.float32)
    if embeddings == "float32":
        return {"values": values}
    peak = float(np.max(np.abs(values), initial=0.0))
    if peak > FLOAT16_MAX:
        raise ExportError(f"table {table}: a value of magnitude {peak:.3g} exceeds float16's range "
                          f"({FLOAT16_MAX:g}); export it with --embeddings float32")
    if embeddings == "float16":
        return {"values": values.astype(np.float16)}
    low = values.min(axis=1, initial=np.inf) if values.shape[1] else np.zeros(len(values), np.float32)
    high = values.max(axis=1, initial=-np.inf) if values.shape[1] else np.zeros(len(values), np.float32)
    offset = _round_float16(low, "down")
    span = high - offset.astype(np.float32)  # >= 0
    scale = _round_float16(span / INT8_LEVELS, "up")
    scale32 = scale.astype(np.float32)
    safe = np.where(scale32 > 0, scale32, 1.0)
    steps = np.rint((values - offset.astype(np.float32)[:, None]) / safe[:, None])
    steps = np.where(scale32[:, None] > 0, steps, 0.0)
    q = (np.clip(steps, 0, INT8_LEVELS) - INT8_SHIFT).astype(np.int8)
    return {"values": q, "scale": scale, "offset": offset}


def dequantize(stored: dict[str, np.ndarray]) -> np.ndarray:
    """float32 rows from `quantize`'s arrays (or an export's, whose scale and offset are one [rows, 2]
    "scale_offset"), computed as the lookup computes them (`dequantize_rows`)."""
    if "scale_offset" in stored:
        stored = {"values": stored["values"], "scale": stored["scale_offset"][:, 0],
                  "offset": stored["scale_offset"][:, 1]}
    return dequantize_rows(stored["values"], stored.get("scale"), stored.get("offset")).numpy()


def dequantize_rows(values, scale=None, offset=None) -> tf.Tensor:
    """float32 rows of gathered stored rows (and their scale and offset): cast, and for int8
    (q + 128) * scale + offset; stock ops only."""
    rows = tf.cast(values, tf.float32)
    if scale is None:
        return rows
    scale = tf.expand_dims(tf.cast(scale, tf.float32), -1)
    offset = tf.expand_dims(tf.cast(offset, tf.float32), -1)
    return (rows + float(INT8_SHIFT)) * scale + offset


def half_step(values: np.ndarray, embeddings: str, stored: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """[rows, dim]: half the quantization step at each value, the most a stored value may differ from
    `values` (float32: 0; float16: half the float16 spacing at the value; int8: half the row's scale, plus the
    float32 rounding of the dequantizing multiply and add)."""
    values = np.asarray(values, np.float32)
    if embeddings == "float32":
        return np.zeros_like(values)
    if embeddings == "float16":
        rounded = values.astype(np.float16)
        up = np.nextafter(rounded, np.float16(np.inf)).astype(np.float32) - rounded.astype(np.float32)
        down = rounded.astype(np.float32) - np.nextafter(rounded, np.float16(-np.inf)).astype(np.float32)
        return np.maximum(up, down) / 2  # the wider of the float16 gaps beside the stored value
    stored = stored if stored is not None else quantize(values, "int8")
    scale, offset = (stored[k].astype(np.float32)[:, None] for k in ("scale", "offset"))
    # float32 rounding of the lookup's multiply and add: one ulp each, at most
    rounding = 2 * np.finfo(np.float32).eps * (np.abs(offset) + (INT8_LEVELS + 1) * scale)
    return np.broadcast_to(scale / 2 + rounding, values.shape)
