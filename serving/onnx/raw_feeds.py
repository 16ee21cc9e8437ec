"""One request's raw features -> the ONNX user (or item) tower's feeds, by the rules of `inputs.json`.

What `inputs.json` (`serving.onnx.manifest`) documents, done in numpy for one row at a time, so a service can
run the ONNX tower without TensorFlow's preprocessing on its latency path:

- vocabulary: an id in the file -> oov_buckets + its line; any other id -> 0 with one OOV row, else
  `id mod oov_buckets` (int64) or FarmHash Fingerprint64 of the UTF-8 bytes mod oov_buckets (strings);
- hash: Fingerprint64 of the text (an int64 id in decimal) mod buckets;
- bucketize: the steps, then the number of boundaries <= x (float32);
- transform: log1p (sign-preserving), zscore, minmax with the fitted statistics, in float32;
- sequences: keep the last (or first) max_length ids, map each, pad with -1;
- dense vectors as they are.

Fingerprint64 is TensorFlow's own op (`tf.strings.to_hash_bucket_fast`), the one the model hashes with.
The id rule of the signatures' input checks holds here too: a negative id other than a column's declared
negative default, or a negative id in a sequence, is refused naming the column.
"""
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from serving.onnx.inputs import PAD_ROW
from trainer.errors import DataError, ExportError
from trainer.preprocessing.numeric import EPSILON

MANIFEST = "inputs.json"


def _fingerprint_mod(texts: list[str], buckets: int) -> np.ndarray:
    return tf.strings.to_hash_bucket_fast(tf.constant(texts, tf.string), buckets).numpy().astype(np.int64)


def _steps(steps: list[dict]) -> Callable[[np.ndarray], np.ndarray]:
    """The transform steps of inputs.json as one float32 function."""
    def apply(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        for s in steps:
            if s["op"] == "log1p":
                x = np.sign(x) * np.log1p(np.abs(x))
            elif s["op"] == "zscore":
                x = (x - np.float32(s["mean"])) / np.float32(max(s["std"], EPSILON))
            elif s["op"] == "minmax":
                x = (x - np.float32(s["min"])) / np.float32(max(s["max"] - s["min"], EPSILON))
            else:
                raise ExportError(f"{MANIFEST}: unknown transform step {s['op']!r}")
            x = x.astype(np.float32)
        return x
    return apply


def _vocabulary(path: str, dtype: str) -> dict:
    """id -> 0-based line of a vocabulary file (the id before the first tab; blank lines skipped)."""
    ids: dict = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = line.rstrip("\n").split("\t", 1)[0]
            if not text.strip():
                continue
            ids[int(text) if dtype == "int64" else text] = len(ids)
    return ids


@dataclass
class _Mapper:
    """How one ONNX input is computed from its raw column."""

    name: str
    column: str
    dtype: str  # the column's: int64, string, float32
    kind: str
    holds: str
    rows: Callable[[list], np.ndarray] | None  # raw ids -> rows
    value: Callable[[np.ndarray], np.ndarray] | None  # raw numbers -> transformed values / bucket rows
    default: Any
    max_length: int | None = None
    keep: str = "last"
    dim: int | None = None
    row: Callable[[Any], int] | None = None  # one raw id -> its row (vocabularies: a dict lookup, no arrays)

    def feed(self, raw: Any) -> np.ndarray:
        """The feed of one row ([1] or [1, max_length] / [1, dim])."""
        if self.holds == "dense vector":
            return np.asarray([raw], np.float32)
        if self.kind == "sequence":
            ids = list(raw)[-self.max_length:] if self.keep == "last" else list(raw)[:self.max_length]
            if self.dtype == "int64" and any(i < 0 for i in ids):
                bad = next(i for i in ids if i < 0)
                raise DataError(f"column {self.column} holds id {bad}; sequence ids are >= 0 (send the ids "
                                "themselves, without padding)")
            out = np.full([1, self.max_length], PAD_ROW, np.int64)
            if ids:
                out[0, :len(ids)] = self.rows(ids)
            return out
        if self.value is not None:  # numbers: transformed, or bucketized into rows
            return self.value(np.asarray([raw], np.float32))
        if self.dtype == "int64" and raw < 0 and raw != self.default:
            also = f" or {self.default}, its declared default" if isinstance(self.default, int) and self.default < 0 else ""
            raise DataError(f"column {self.column} holds id {raw}; ids are >= 0{also}")
        if self.row is not None:
            return np.array([self.row(raw)], np.int64)
        return self.rows([raw])


class RawFeeds:
    """The feeds of one ONNX graph's inputs from raw column values, built from an ONNX export's inputs.json.

    Args:
      onnx_dir: the directory `prerank onnx` wrote (inputs.json, preprocessing/, vocab_files/).
      graph: "user_vector" or "item_vector".
    """

    def __init__(self, onnx_dir: str, graph: str = "user_vector"):
        path = os.path.join(onnx_dir, MANIFEST)
        try:
            with open(path, encoding="utf-8") as fh:
                self.doc = json.load(fh)
        except (OSError, ValueError) as e:
            raise ExportError(f"{path}: unreadable ({e}); expected the inputs.json `prerank onnx` writes") from None
        if graph not in self.doc.get("graphs", {}):
            raise ExportError(f"{path}: no graph {graph!r}")
        self.onnx_dir, self.graph = onnx_dir, graph
        names = self.doc["graphs"][graph]["inputs"]
        by_name = {i["name"]: i for i in self.doc["inputs"]}
        self.mappers = [self._mapper(by_name[n]) for n in names]
        self.bias = float(self.doc["logit"]["bias"])

    @property
    def columns(self) -> list[str]:
        return sorted({m.column for m in self.mappers})

    def _mapper(self, entry: dict) -> _Mapper:
        if len(entry["columns"]) != 1:
            raise ExportError(f"{self.onnx_dir}/{MANIFEST}: input {entry['name']} reads columns {entry['columns']}; "
                              "crosses feed only the teacher")
        m = entry["mapping"]
        rows = value = row = None
        if m["type"] == "vocabulary":
            rows, row = self._vocabulary_rows(m, entry["column_dtype"])
        elif m["type"] == "hash":
            buckets = m["buckets"]
            rows = lambda ids: _fingerprint_mod([str(i) for i in ids], buckets)  # noqa: E731
        elif m["type"] == "bucketize":
            steps, bounds = _steps(m["steps"]), np.asarray(m["boundaries"], np.float32)
            value = lambda x: np.searchsorted(bounds, steps(x), side="right").astype(np.int64)  # noqa: E731
        elif m["type"] == "transform":
            value = _steps(m["steps"])
        elif m["type"] != "identity":
            raise ExportError(f"{self.onnx_dir}/{MANIFEST}: input {entry['name']}: unknown mapping {m['type']!r}")
        seq = entry.get("sequence") or {}
        return _Mapper(entry["name"], entry["columns"][0], entry["column_dtype"], entry["kind"], entry["holds"], rows,
                       value, entry.get("default"), seq.get("max_length"), seq.get("keep", "last"), row=row)

    def _vocabulary_rows(self, m: dict, dtype: str) -> tuple[Callable[[list], np.ndarray], Callable[[Any], int]]:
        """(ids -> rows, one id -> its row) by a vocabulary file's rule."""
        path = os.path.join(self.onnx_dir, m["file"])
        if not os.path.isfile(path):
            raise ExportError(f"{path}: missing; the ONNX export's vocabulary for table {m['table']}")
        lines, oov = _vocabulary(path, dtype), m["oov_buckets"]
        table = {k: v + oov for k, v in lines.items()}

        def rows(ids: list) -> np.ndarray:
            out = np.fromiter((table.get(i, -1) for i in ids), np.int64, count=len(ids))
            unknown = out < 0
            if unknown.any():
                if oov == 1:
                    out[unknown] = 0
                elif dtype == "string":
                    out[unknown] = _fingerprint_mod([i for i, u in zip(ids, unknown) if u], oov)
                else:
                    out[unknown] = np.asarray([i for i, u in zip(ids, unknown) if u], np.int64) % oov
            return out

        def row(i: Any) -> int:
            found = table.get(i)
            return found if found is not None else int(rows([i])[0])
        return rows, row

    def feeds(self, row: dict[str, Any]) -> dict[str, np.ndarray]:
        """The graph's feeds for one row of raw values (column -> scalar, list or vector; a column the row
        lacks takes its declared default)."""
        out = {}
        for m in self.mappers:
            raw = row.get(m.column)
            if raw is None:
                if m.default is None:
                    raise DataError(f"column {m.column} is missing and has no declared default")
                raw = m.default
            out[m.name] = m.feed(raw)
        return out
