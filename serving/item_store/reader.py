"""A versioned, file-based store of item vectors (numpy only, no TensorFlow).

Layout of a store directory::

    STORE/
      3-5f0c9e1a2b3c4d5e6f70/ complete vectors of model version 3 made by the export of that fingerprint
                              (`serving.savedmodel.layout.export_fingerprint`); never modified
        ids.npy               item ids: int64 [n] or numpy unicode [n]
        vectors.npy           float32 [n, dim]
        attributes.npy        float32 [n, k]: the item table's attribute columns (only when k > 0)
        manifest.json         model_version, fingerprint, export_dir, dim, count, id_column, id_dtype,
                              attributes, reference_time, created, metadata, format_version
      .partial-4-a1b2.../     a write of model version 4 in progress (never read)
        header.json           the settings the write was started with
        part-000000-000000000000-000000001000.npz   items [0, 1000): ids, vectors, attributes
        part-000001-000000001000-000000002000.npz   items [1000, 2000)

Vectors are keyed by the export's fingerprint, not by the integer version alone: two exports numbered 3
(another base, a student-only export of the same checkpoint) never share vectors. `reference_time` is
the time the item features were computed for (an item's age changes daily): vectors are as fresh as it.

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
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from serving.item_store.id_index import IdIndex
from serving.item_store.values import PathLike, as_ids
from trainer.errors import DataError, ExportError

FORMAT_VERSION = 2
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
ATTRIBUTES_FILE = "attributes.npy"
MANIFEST_FILE = "manifest.json"
HEADER_FILE = "header.json"
PARTIAL_PREFIX = ".partial-"


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot read JSON: {e}") from None


_KEY = re.compile(r"^(\d+)-([0-9a-z]+)$")


def version_key(model_version: int, fingerprint: str) -> str:
    """The directory name of a version's vectors: `<model version>-<export fingerprint>`."""
    return f"{model_version}-{fingerprint}"


def _version_dirs(store_dir: Path) -> dict[tuple[int, str], Path]:
    """Complete version directories by (version, fingerprint): `<version>-<fingerprint>` names holding a
    manifest."""
    if not store_dir.is_dir():
        return {}
    found = {}
    for entry in os.scandir(store_dir):
        match = _KEY.match(entry.name)
        if match and entry.is_dir() and match.group(1) == str(int(match.group(1))):
            if os.path.exists(os.path.join(entry.path, MANIFEST_FILE)):
                found[(int(match.group(1)), match.group(2))] = Path(entry.path)
    return found


def _newest(dirs: dict[tuple[int, str], Path]) -> tuple[int, str]:
    """The highest version; among exports of one version number, the one written last."""
    return max(dirs, key=lambda k: (k[0], dirs[k].stat().st_mtime_ns))


class ItemVectorStore:
    """The vectors of one complete model version, memory-mapped; open with ``ItemVectorStore.open``."""

    def __init__(self, path: Path, manifest: dict[str, Any], ids: np.ndarray, vectors: np.ndarray,
                 attributes: np.ndarray | None = None):
        self.path = path
        self.manifest = manifest
        self.ids = ids
        self.vectors = vectors
        self.attributes = attributes if attributes is not None else np.zeros((len(ids), 0), np.float32)
        self._index: IdIndex | None = None  # id -> row, built on first lookup

    @property
    def model_version(self) -> int:
        return int(self.manifest["model_version"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def attribute_names(self) -> list[str]:
        return list(self.manifest.get("attributes", []))

    @property
    def reference_time(self) -> str | None:
        return self.manifest.get("reference_time")

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def versions(store_dir: PathLike) -> list[int]:
        """The complete model versions in a store, ascending; [] if there are none."""
        return sorted({v for v, _ in _version_dirs(Path(store_dir))})

    @staticmethod
    def fingerprints(store_dir: PathLike) -> list[str]:
        """The export fingerprints whose vectors are complete in a store."""
        return sorted({f for _, f in _version_dirs(Path(store_dir))})

    @classmethod
    def open(cls, store_dir: PathLike, version: int | None = None,
             fingerprint: str | None = None) -> "ItemVectorStore":
        """Open the vectors of the export with `fingerprint`, else the newest complete version (or `version`).

        Raises ExportError if the store has no such complete version (naming the ones it has), or if the
        version's files disagree with its manifest or with the directory's fingerprint.
        """
        store_dir = Path(store_dir)
        dirs = _version_dirs(store_dir)
        if not dirs:
            raise ExportError(f"{store_dir}: no complete model version in this item vector store"
                              + ("" if store_dir.is_dir() else " (the directory does not exist)")
                              + (f"{_partial_note(store_dir, version, fingerprint)}" if store_dir.is_dir() else ""))
        if fingerprint is not None:
            matching = [k for k in dirs if k[1] == fingerprint and (version is None or k[0] == version)]
            if not matching:
                raise ExportError(f"{store_dir}: no vectors of the export with fingerprint {fingerprint}"
                                  f"{'' if version is None else f' (model version {version})'} in this item vector "
                                  f"store{_partial_note(store_dir, version, fingerprint)}; it holds "
                                  f"{', '.join(version_key(*k) for k in sorted(dirs))}")
            key = matching[0]
        elif version is None:
            key = _newest(dirs)
        else:
            of_version = {k: p for k, p in dirs.items() if k[0] == version}
            if not of_version:
                raise ExportError(f"{store_dir}: model version {version} is not in this item vector store"
                                  f"{_partial_note(store_dir, version, None)}; available versions: "
                                  f"{sorted({v for v, _ in dirs})}")
            key = _newest(of_version)
        return cls._load(dirs[key], key)

    @classmethod
    def _load(cls, path: Path, key: tuple[int, str]) -> "ItemVectorStore":
        manifest = read_json(path / MANIFEST_FILE)
        try:
            ids = np.load(path / IDS_FILE, mmap_mode="r", allow_pickle=False)
            vectors = np.load(path / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
            attributes = np.load(path / ATTRIBUTES_FILE, mmap_mode="r", allow_pickle=False) \
                if manifest.get("attributes") else None
        except (OSError, ValueError) as e:
            raise ExportError(f"{path}: cannot read the item vectors: {e}") from None
        _check_loaded(path, manifest, ids, vectors, attributes)
        if (manifest["model_version"], manifest.get("fingerprint")) != key:
            raise ExportError(f"{path / MANIFEST_FILE}: records model version {manifest['model_version']} of the "
                              f"export with fingerprint {manifest.get('fingerprint')}, but lies in {path.name}; "
                              "vectors of one export are never served as another's (renamed or copied?)")
        return cls(path, manifest, ids, vectors, attributes)

    def index(self) -> IdIndex:
        """id -> row of every item (a vectorised hash table, `IdIndex`), built on first use."""
        if self._index is None:
            self._index = IdIndex.of(np.asarray(self.ids), self.manifest["id_dtype"])
        return self._index

    def rows(self, ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each id in `ids`, found [n] bool); rows of ids not found are 0 (check `found`)."""
        query = as_ids(ids, self.manifest["id_dtype"], f"lookup in {self.path}")
        rows = self.index().find(query)
        found = rows >= 0
        return np.where(found, rows, 0), found

    def fetch(self, ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors float32 [n, dim], attributes float32 [n, k], found [n] bool) of `ids`; the rows of ids
        not in the store are zeros, to be ignored (`found` says which)."""
        rows, found = self.rows(ids)
        vectors = np.asarray(self.vectors[rows], np.float32)
        attributes = np.asarray(self.attributes[rows], np.float32)
        if not found.all():
            vectors[~found] = 0.0
            attributes[~found] = 0.0
        return vectors, attributes, found

    def lookup(self, ids: Sequence[Any] | np.ndarray) -> np.ndarray:
        """The vectors of `ids`, float32 [len(ids), dim], in the order asked; DataError naming unknown ids."""
        query = as_ids(ids, self.manifest["id_dtype"], f"lookup in {self.path}")
        rows = self.index().find(query)
        if (rows < 0).any():
            missing = query[rows < 0]
            raise DataError(f"{self.path}: unknown item id {missing[0].item()!r} ({missing.size} of {query.size} "
                            f"ids not in model version {self.model_version}: {missing[:5].tolist()})")
        return np.array(self.vectors[rows], dtype=np.float32)


def _partial_note(store_dir: Path, version: int | None, fingerprint: str | None) -> str:
    partial = [p for p in store_dir.glob(f"{PARTIAL_PREFIX}*")
               if (version is None or p.name.startswith(f"{PARTIAL_PREFIX}{version}-"))
               and (fingerprint is None or p.name.endswith(f"-{fingerprint}"))]
    if version is None and fingerprint is None:
        return ""
    return f" (its write is unfinished: {partial[0]})" if partial else ""


def remove_old_versions(store_dir: PathLike, keep: int) -> list[str]:
    """The retention rule: keep the `keep` newest complete versions of a store (by model version, then by
    when they were written), remove the others; returns the removed directory names. A removed version is
    renamed out of sight first (`.removing-...`), so no reader opens it half deleted; a server that
    memory-mapped it keeps reading its files until it closes them (POSIX)."""
    if keep < 1:
        raise ExportError(f"keep must be at least 1 (the newest version), got {keep}")
    store_dir = Path(store_dir)
    dirs = _version_dirs(store_dir)
    ordered = sorted(dirs, key=lambda k: (k[0], dirs[k].stat().st_mtime_ns), reverse=True)
    removed = []
    for key in ordered[keep:]:
        doomed = store_dir / f".removing-{version_key(*key)}"
        os.rename(dirs[key], doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(version_key(*key))
    return removed


def _check_loaded(path: Path, manifest: dict[str, Any], ids: np.ndarray, vectors: np.ndarray,
                  attributes: np.ndarray | None) -> None:
    """DataError if the files of a version disagree with its manifest."""
    missing = [k for k in ("model_version", "fingerprint", "dim", "count", "id_dtype") if k not in manifest]
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
    k = len(manifest.get("attributes", []))
    if k and (attributes is None or attributes.shape != (count, k) or attributes.dtype != np.float32):
        raise ExportError(f"{path / ATTRIBUTES_FILE}: expected float32 {(count, k)} "
                          f"({', '.join(manifest['attributes'])}), got "
                          f"{None if attributes is None else (attributes.dtype, attributes.shape)}")
