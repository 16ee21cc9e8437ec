"""A versioned, file-based store of item vectors (numpy only, no TensorFlow).

Layout of a store directory::

    STORE/
      3/                      complete vectors of model version 3; never modified
        ids.npy               item ids: int64 [n] or numpy unicode [n]
        vectors.npy           float32 [n, dim]
        manifest.json         model_version, export_dir, dim, count, id_column,
                              id_dtype, created, metadata, format_version
      .partial-4/             a write of model version 4 in progress (never read)
        header.json           the settings the write was started with
        part-000000-000000000000-000000001000.npz   items [0, 1000): ids, vectors
        part-000001-000000001000-000000002000.npz   items [1000, 2000)

A write appends numbered part files (each written to a temp name, then
``os.replace``d, `trainer.files`) and, on ``finish()``, concatenates them into the final files
inside the partial directory, which is then renamed to ``STORE/<version>/`` in
one ``os.rename``. A killed write resumes from its last whole part. One writer
per model version at a time: concurrent writers of the same version are not
detected.

This module reads a store (`ItemVectorStore`); `serving.item_store.writer`
writes one; `serving.item_store.values` checks ids and vectors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from serving.item_store.values import PathLike, as_ids
from trainer.errors import DataError, ExportError

FORMAT_VERSION = 1
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
HEADER_FILE = "header.json"
PARTIAL_PREFIX = ".partial-"


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot read JSON: {e}") from None
_INT64_MAX = np.iinfo(np.int64).max



def _version_dirs(store_dir: Path) -> dict[int, Path]:
    """Complete version directories by version: integer names holding a manifest."""
    if not store_dir.is_dir():
        return {}
    found = {}
    for entry in os.scandir(store_dir):
        name = entry.name
        if name.isdigit() and name == str(int(name)) and entry.is_dir():
            if os.path.exists(os.path.join(entry.path, MANIFEST_FILE)):
                found[int(name)] = Path(entry.path)
    return found


class ItemVectorStore:
    """The vectors of one complete model version, memory-mapped; open with ``ItemVectorStore.open``."""

    def __init__(self, path: Path, manifest: dict[str, Any], ids: np.ndarray, vectors: np.ndarray):
        self.path = path
        self.manifest = manifest
        self.ids = ids
        self.vectors = vectors
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (order, ids[order]), built on first lookup

    @property
    def model_version(self) -> int:
        return int(self.manifest["model_version"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def versions(store_dir: PathLike) -> list[int]:
        """The complete model versions in a store, ascending; [] if there are none."""
        return sorted(_version_dirs(Path(store_dir)))

    @classmethod
    def open(cls, store_dir: PathLike, version: int | None = None) -> "ItemVectorStore":
        """Open the newest complete version of a store, or `version`.

        Raises DataError if the store has no complete version or `version` is not one of them.
        """
        store_dir = Path(store_dir)
        dirs = _version_dirs(store_dir)
        if not dirs:
            raise ExportError(f"{store_dir}: no complete model version in this item vector store"
                            + ("" if store_dir.is_dir() else " (the directory does not exist)"))
        if version is None:
            version = max(dirs)
        elif version not in dirs:
            raise ExportError(f"{store_dir}: model version {version} is not in this item vector store"
                              f"{_partial_note(store_dir, version)}; available versions: {sorted(dirs)}")
        return cls._load(dirs[version])

    @classmethod
    def _load(cls, path: Path) -> "ItemVectorStore":
        manifest = read_json(path / MANIFEST_FILE)
        try:
            ids = np.load(path / IDS_FILE, mmap_mode="r", allow_pickle=False)
            vectors = np.load(path / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ExportError(f"{path}: cannot read the item vectors: {e}") from None
        _check_loaded(path, manifest, ids, vectors)
        return cls(path, manifest, ids, vectors)

    def _sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            order = np.argsort(self.ids, kind="stable")
            self._sorted = (order, np.asarray(self.ids)[order])
        return self._sorted

    def lookup(self, ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """The vectors of `ids`, float32 [len(ids), dim], in the order asked; DataError naming unknown ids."""
        query = as_ids(ids, self.manifest["id_dtype"], f"lookup in {self.path}")
        order, sorted_ids = self._sorted_ids()
        pos = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)
        found = sorted_ids[pos] == query
        if not found.all():
            missing = query[~found]
            raise DataError(f"{self.path}: unknown item id {missing[0].item()!r} ({missing.size} of {query.size} "
                            f"ids not in model version {self.model_version}: {missing[:5].tolist()})")
        return np.array(self.vectors[order[pos]], dtype=np.float32)


def _partial_note(store_dir: Path, version: int) -> str:
    partial = store_dir / f"{PARTIAL_PREFIX}{version}"
    return f" (its write is unfinished: {partial})" if partial.exists() else ""


def _check_loaded(path: Path, manifest: dict[str, Any], ids: np.ndarray, vectors: np.ndarray) -> None:
    """DataError if the files of a version disagree with its manifest."""
    missing = [k for k in ("model_version", "dim", "count", "id_dtype") if k not in manifest]
    if missing:
        raise ExportError(f"{path / MANIFEST_FILE}: missing fields {missing}")
    count, dim = manifest["count"], manifest["dim"]
    id_kind = "i" if manifest["id_dtype"] == "int64" else "U"
    if ids.shape != (count,) or ids.dtype.kind != id_kind:
        raise ExportError(f"{path / IDS_FILE}: expected {count} ids of {manifest['id_dtype']}, "
                          f"got shape {ids.shape} dtype {ids.dtype}")
    if vectors.shape != (count, dim) or vectors.dtype != np.float32:
        raise ExportError(f"{path / VECTORS_FILE}: expected float32 {(count, dim)}, "
                          f"got {vectors.dtype} {vectors.shape}")
