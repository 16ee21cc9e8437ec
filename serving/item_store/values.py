"""Item ids and vectors as the item store accepts them: one checked, typed form, or a DataError
naming the item and what was expected."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from trainer.errors import DataError, ExportError

ID_DTYPES = ("int64", "string")
PathLike = str | os.PathLike
_INT64_MAX = np.iinfo(np.int64).max


def check_version(model_version: int) -> int:
    """A model version is a non-negative integer, as in TF Serving."""
    if isinstance(model_version, bool) or not isinstance(model_version, (int, np.integer)) or model_version < 0:
        raise ExportError(f"model_version must be a non-negative integer, got {model_version!r}")
    return int(model_version)


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise ExportError(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


def check_id_dtype(id_dtype: str) -> str:
    if id_dtype not in ID_DTYPES:
        raise ExportError(f"id_dtype must be one of {list(ID_DTYPES)}, got {id_dtype!r}")
    return id_dtype


def _as_int64_ids(ids: np.ndarray, where: str) -> np.ndarray:
    if ids.dtype.kind not in "iu":
        raise DataError(f"{where}: item ids must be integers for id_dtype int64, got dtype {ids.dtype}")
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > _INT64_MAX:
        raise DataError(f"{where}: item id {int(ids.max())} does not fit in int64")
    return ids.astype(np.int64, copy=False)


def _as_string_ids(ids: np.ndarray, where: str) -> np.ndarray:
    if ids.dtype.kind == "U":
        return ids
    if ids.dtype.kind == "S":
        try:
            return np.char.decode(ids, "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: item ids are bytes that are not UTF-8: {e}") from None
    if ids.dtype.kind == "O":
        items = [i.decode("utf-8") if isinstance(i, bytes) else i for i in ids.tolist()]
        bad = [i for i in items if not isinstance(i, str)]
        if bad:
            raise DataError(f"{where}: item ids must be strings for id_dtype string, got {bad[0]!r}")
        return np.asarray(items, dtype=str).reshape(ids.shape)
    raise DataError(f"{where}: item ids must be strings for id_dtype string, got dtype {ids.dtype}")


def as_ids(ids: Sequence[Any] | np.ndarray, id_dtype: str, where: str) -> np.ndarray:
    """Item ids as a 1-D int64 or unicode array; DataError if they are of the wrong kind."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise DataError(f"{where}: item ids must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64 if id_dtype == "int64" else "<U1")
    if id_dtype == "int64":
        return _as_int64_ids(array, where)
    return _as_string_ids(array, where)


def as_vectors(vectors: Any, dim: int, count: int, where: str) -> np.ndarray:
    """Vectors as float32 [count, dim]; DataError on anything else."""
    try:
        with np.errstate(over="ignore"):  # overflow becomes inf, which check_finite reports
            array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: vectors are not convertible to float32: {e}") from None
    if array.ndim != 2 or array.shape[1] != dim:
        raise DataError(f"{where}: vectors must have shape [n, {dim}] (dim {dim}), got {array.shape}")
    if array.shape[0] != count:
        raise DataError(f"{where}: {count} item ids but {array.shape[0]} vectors; need one vector per id")
    return array


def check_finite(vectors: np.ndarray, ids: np.ndarray, offset: int, where: str) -> None:
    """DataError naming the first item whose vector holds NaN or inf."""
    bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        raise DataError(f"{where}: the vector of item id {ids[row].item()!r} (item {offset + row}) is not "
                        f"finite: {vectors[row].tolist()[:8]}; {bad_rows.size} such vectors in this part")


def first_duplicate(ids: np.ndarray) -> Any | None:
    """The first id (in order) that occurs more than once, or None."""
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    repeated = first[counts > 1]
    return ids[repeated.min()].item() if repeated.size else None


def jsonable(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata as it reads back from JSON (so tuples and lists compare equal)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ExportError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ExportError(f"metadata must be JSON-serializable: {e}") from None


def normalize_export_dir(export_dir: PathLike) -> str:
    """Local paths made absolute, so relative and absolute spellings compare equal; URLs kept."""
    text = os.fspath(export_dir)
    return text if "://" in text else os.path.abspath(text)


def check_fingerprint(fingerprint: str) -> str:
    """An export fingerprint: lowercase letters and digits (`serving.savedmodel.layout.export_fingerprint`)."""
    if not isinstance(fingerprint, str) or not fingerprint or not all(c.isdigit() or "a" <= c <= "z"
                                                                      for c in fingerprint):
        raise ExportError(f"fingerprint must be a non-empty string of lowercase letters and digits, "
                          f"got {fingerprint!r}")
    return fingerprint


def check_attribute_names(names: Sequence[str]) -> list[str]:
    """Attribute names: distinct non-empty strings."""
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ExportError(f"attribute names must be non-empty strings, got {bad[0]!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ExportError(f"attribute {repeated[0]!r} named twice")
    return names


def as_attributes(values: Any, names: list[str], ids: np.ndarray, offset: int, where: str) -> np.ndarray:
    """A chunk's attribute values as float32 [n, k] (k = len(names)), finite; a DataError naming the item and
    attribute otherwise. With no attributes, `values` must be None."""
    if not names:
        if values is not None:
            raise DataError(f"{where}: attribute values given, but the store was started without attributes")
        return np.zeros((len(ids), 0), np.float32)
    if values is None:
        raise DataError(f"{where}: no values for the attributes {names}")
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: attribute values are not convertible to float32: {e}") from None
    if array.shape != (len(ids), len(names)):
        raise DataError(f"{where}: attribute values must have shape [{len(ids)}, {len(names)}] ({', '.join(names)}), "
                        f"got {array.shape}")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        row, col = (int(x) for x in bad[0])
        raise DataError(f"{where}: attribute '{names[col]}' of item id {ids[row].item()!r} (item {offset + row}) is "
                        f"{array[row, col]}; expected a finite number")
    return array
