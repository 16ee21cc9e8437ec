"""Writing one model version of the item store, resumably and atomically (layout: `serving.item_store.reader`).

Parts are written to temp names and `os.replace`d; `finish()` concatenates them
into the final files and publishes the version with one `os.rename`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from serving.item_store.reader import (ATTRIBUTES_FILE, FORMAT_VERSION, HEADER_FILE, IDS_FILE, MANIFEST_FILE,
                                       PARTIAL_PREFIX, VECTORS_FILE, read_json, version_key)
from serving.item_store.values import (PathLike, as_attributes, as_ids, as_vectors, check_attribute_names, check_dim,
                                       check_finite, check_fingerprint, check_id_dtype, check_version,
                                       first_duplicate, jsonable, normalize_export_dir)
from trainer.errors import DataError, ExportError
from trainer.files import TMP_SUFFIX, atomic_path, atomic_write, publish_directory, write_json_atomic


_PART_RE = re.compile(r"^part-(\d+)-(\d+)-(\d+)\.npz$")


@dataclass(frozen=True)
class _Part:
    """One part file: items [start, stop) of the write."""

    index: int
    start: int
    stop: int
    path: Path


def _part_name(index: int, start: int, stop: int) -> str:
    return f"part-{index:06d}-{start:012d}-{stop:012d}.npz"


def _part_files(partial_dir: Path) -> list[_Part]:
    """The part files of a partial directory, ordered by part number."""
    parts = []
    for name in os.listdir(partial_dir):
        match = _PART_RE.match(name)
        if match:
            index, start, stop = (int(g) for g in match.groups())
            parts.append(_Part(index, start, stop, partial_dir / name))
    return sorted(parts, key=lambda p: p.index)


def _scan_parts(partial_dir: Path) -> list[_Part]:
    """The part files, in order; ExportError if they do not cover items [0, n) without gaps."""
    parts = _part_files(partial_dir)
    offset = 0
    for expected_index, part in enumerate(parts):
        if part.index != expected_index or part.start != offset or part.stop <= part.start:
            raise ExportError(f"{partial_dir}: part files are not contiguous at {part.path.name} (expected part "
                              f"{expected_index} starting at item {offset}); delete {partial_dir} to start over")
        offset = part.stop
    return parts


def _load_part(part: _Part, key: str) -> np.ndarray:
    with np.load(part.path, allow_pickle=False) as npz:
        return npz[key]


def _remove_temp_files(directory: Path) -> None:
    """Delete half-written files left by a killed process."""
    for name in os.listdir(directory):
        if name.endswith(TMP_SUFFIX):
            os.remove(directory / name)


class StoreWriter:
    """Writes the vectors of one model version into a store, resumably; see the module docstring.

    Call ``write`` with consecutive chunks starting at ``next_offset`` (which is
    above 0 when an interrupted write of the same version is resumed), then
    ``finish``. The result does not depend on how the items were chunked or how
    often the write was interrupted, as long as the items come in the same order.
    """

    def __init__(self, store_dir: PathLike, model_version: int, *, fingerprint: str, dim: int, id_dtype: str,
                 export_dir: PathLike, id_column: str = "item_id",
                 metadata: dict[str, Any] | None = None, attributes: Sequence[str] = (),
                 reference_time: str | None = None):
        """
        Args:
          store_dir: the store directory; created if missing.
          model_version: integer version of the model the vectors come from.
          fingerprint: the export's fingerprint (`serving.savedmodel.layout.export_fingerprint`); with the
            version it names `STORE/<version>-<fingerprint>/`.
          dim: length of every vector.
          id_dtype: "int64" or "string": the type of the item ids.
          export_dir: the SavedModel directory the vectors were computed from (recorded in the manifest).
          id_column: name of the item id column / feature (recorded in the manifest).
          metadata: extra JSON-serializable facts recorded in the manifest.
          attributes: names of numeric item attributes stored beside the vectors (float32, one per name and
            item; e.g. a click-through prior for the service's tiers).
          reference_time: the time the item features were computed for (ISO 8601), recorded.
        Raises ExportError if the version is already complete, or if an interrupted write of it
        was started with other settings.
        """
        self.store_dir = Path(store_dir)
        if self.store_dir.exists() and not self.store_dir.is_dir():
            raise ExportError(f"{self.store_dir}: a file, not a directory; expected an item vector store "
                              "directory (or a path to create one at)")
        self.model_version = check_version(model_version)
        key = version_key(self.model_version, check_fingerprint(fingerprint))
        self.final_dir = self.store_dir / key
        self.partial_dir = self.store_dir / f"{PARTIAL_PREFIX}{key}"
        self.settings: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model_version": self.model_version,
            "fingerprint": fingerprint,
            "attributes": check_attribute_names(attributes),
            "reference_time": reference_time,
            "export_dir": normalize_export_dir(export_dir),
            "dim": check_dim(dim),
            "id_dtype": check_id_dtype(id_dtype),
            "id_column": str(id_column),
            "metadata": jsonable(metadata),
        }
        self._refuse_complete()
        self._parts: list[_Part] = []
        self._seen: set[Any] = set()
        self._finalized_count: int | None = None  # set when an interrupted finish() left the final files
        self._finished = False
        self._open_partial()
        self.resumed_parts: int = len(self._parts)
        """How many whole parts an interrupted write had left (0 for a fresh write)."""

    @property
    def dim(self) -> int:
        return self.settings["dim"]

    @property
    def id_dtype(self) -> str:
        return self.settings["id_dtype"]

    @property
    def attribute_names(self) -> list[str]:
        return self.settings["attributes"]

    @property
    def next_offset(self) -> int:
        """Index of the next item to write: the number of items already written."""
        if self._finalized_count is not None:
            return self._finalized_count
        return self._parts[-1].stop if self._parts else 0

    @property
    def num_parts(self) -> int:
        """Number of part files written so far, including resumed ones."""
        return len(self._parts)

    # -- opening

    def _refuse_complete(self) -> None:
        if self.final_dir.exists():
            raise ExportError(f"model version {self.model_version} is already complete in {self.final_dir}; a "
                              f"complete version is never overwritten: write to a new model version, or delete "
                              f"{self.final_dir} first")

    @property
    def key(self) -> str:
        return self.final_dir.name

    def _open_partial(self) -> None:
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        _remove_temp_files(self.partial_dir)
        manifest_path = self.partial_dir / MANIFEST_FILE
        if manifest_path.exists():  # killed inside finish(), after the final files were whole
            manifest = read_json(manifest_path)
            self._check_same_settings(manifest, manifest_path)
            self._finalized_count = int(manifest["count"])
            return
        header_path = self.partial_dir / HEADER_FILE
        parts = _scan_parts(self.partial_dir)
        if header_path.exists():
            self._check_same_settings(read_json(header_path), header_path)
        elif parts:
            raise ExportError(f"{self.partial_dir} holds part files but no {HEADER_FILE}; delete it to start over")
        else:
            write_json_atomic(header_path, self.settings)
        for part in parts:
            self._resume_part(part)

    def _check_same_settings(self, recorded: dict[str, Any], path: Path) -> None:
        diffs = [f"{key}: started with {recorded.get(key)!r}, now {value!r}"
                 for key, value in self.settings.items() if recorded.get(key) != value]
        if diffs:
            raise ExportError(f"{path}: an interrupted write of model version {self.model_version} was started "
                              f"with other settings ({'; '.join(diffs)}). Resume it with the original settings, "
                              f"write to a new model version, or delete {self.partial_dir} to start over")

    def _resume_part(self, part: _Part) -> None:
        where = f"{part.path}"
        ids = as_ids(_load_part(part, "ids"), self.id_dtype, where)
        if len(ids) != part.stop - part.start:
            raise ExportError(f"{where}: holds {len(ids)} ids for items [{part.start}, {part.stop}); "
                              f"delete {self.partial_dir} to start over")
        self._check_new_ids(ids, where)
        self._parts.append(part)
        self._seen.update(ids.tolist())

    # -- writing

    def _check_writable(self, offset: int | None) -> None:
        if self._finished:
            raise ExportError(f"model version {self.model_version} is already finished in {self.final_dir}")
        if self._finalized_count is not None:
            raise ExportError(f"{self.partial_dir} already holds the final files of {self._finalized_count} items "
                              f"(an earlier finish() was interrupted); call finish() without writing more")
        if offset is not None and offset != self.next_offset:
            raise ExportError(f"chunk starts at item {offset} but the write continues at item {self.next_offset} "
                              f"(writer.next_offset)")

    def _check_new_ids(self, ids: np.ndarray, where: str) -> None:
        duplicate = first_duplicate(ids)
        if duplicate is not None:
            raise DataError(f"{where}: duplicate item id {duplicate!r} within this chunk; one vector per id")
        for item_id in ids.tolist():
            if item_id in self._seen:
                raise DataError(f"{where}: duplicate item id {item_id!r}: already written in an earlier part")

    def write(self, ids: Sequence[Any] | np.ndarray, vectors: Any, *, offset: int | None = None,
              attributes: Any = None) -> int:
        """Validate and write one chunk as the next part file; returns the new ``next_offset``.

        Args:
          ids: the chunk's item ids, 1-D, of the writer's id_dtype.
          vectors: one float32-convertible vector of length dim per id.
          offset: if given, the item index the chunk starts at; must equal ``next_offset``.
          attributes: float32 [n, k], the values of the writer's k attributes per id (k > 0 only).
        An empty chunk writes nothing.
        """
        self._check_writable(offset)
        index, start = len(self._parts), self.next_offset
        where = f"part {index} (items from {start})"
        ids = as_ids(ids, self.id_dtype, where)
        vectors = as_vectors(vectors, self.dim, len(ids), where)
        values = as_attributes(attributes, self.attribute_names, ids, start, where)
        if len(ids) == 0:
            return start
        check_finite(vectors, ids, start, where)
        self._check_new_ids(ids, where)
        part = _Part(index, start, start + len(ids), self.partial_dir / _part_name(index, start, start + len(ids)))
        atomic_write(str(part.path), lambda fh: np.savez(fh, ids=ids, vectors=vectors, attributes=values))
        self._parts.append(part)
        self._seen.update(ids.tolist())
        return self.next_offset

    # -- finishing

    def finish(self) -> Path:
        """Concatenate the parts into the final files and publish ``STORE/<version>/``; returns its path."""
        if self._finished:
            return self.final_dir
        self._refuse_complete()
        if self._finalized_count is None:
            self._write_final_files()
        for part in _part_files(self.partial_dir):  # the final files hold their content now
            os.remove(part.path)
        (self.partial_dir / HEADER_FILE).unlink(missing_ok=True)
        publish_directory(str(self.partial_dir), str(self.final_dir))
        self._finished = True
        return self.final_dir

    def _write_final_files(self) -> None:
        if not self._parts:
            raise ExportError(f"no items were written for model version {self.model_version}; nothing to finish "
                              f"({self.partial_dir})")
        ids = np.concatenate([_load_part(p, "ids") for p in self._parts])
        atomic_write(str(self.partial_dir / IDS_FILE), lambda fh: np.save(fh, ids, allow_pickle=False))
        self._write_vectors(len(ids))
        if self.attribute_names:
            values = np.concatenate([_load_part(p, "attributes") for p in self._parts]).astype(np.float32)
            atomic_write(str(self.partial_dir / ATTRIBUTES_FILE), lambda fh: np.save(fh, values, allow_pickle=False))
        manifest = dict(self.settings, count=len(ids),
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json_atomic(self.partial_dir / MANIFEST_FILE, manifest)  # last: marks the final files whole

    def _write_vectors(self, count: int) -> None:
        """Copy the parts' vectors into one memory-mapped .npy, never holding them all in memory."""
        with atomic_path(str(self.partial_dir / VECTORS_FILE)) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, self.dim))
            for part in self._parts:
                vectors = _load_part(part, "vectors")
                if vectors.shape != (part.stop - part.start, self.dim):
                    raise ExportError(f"{part.path}: vectors have shape {vectors.shape}, expected "
                                      f"{(part.stop - part.start, self.dim)}; delete {self.partial_dir} to start over")
                out[part.start:part.stop] = vectors
            out.flush()
            del out
