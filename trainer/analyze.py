"""Fitted preprocessing: vocabularies and normalisation statistics from training data.

`analyze` reads the training files once through the input pipeline and fits
what the spec leaves to the data: vocabularies of `source: data` tables
(ids ordered by frequency, filtered by `min_count`, cut at `max_size`) and the
mean / std / min / max that `zscore` and `minmax` steps need (computed on the
values after the steps before them). The result is saved beside the model
(`preprocessing.json` + `vocab/<table>.txt`) and baked into the Keras layers,
so an exported model takes raw values and no serving code re-implements it.
"""
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from trainer.errors import DataError
from trainer.input import InputConfig, make_pipeline
from trainer.numeric import NORMALISERS, apply_steps_np, steps_before_normalisation
from trainer.spec import Spec

FILE_NAME = "preprocessing.json"


@dataclass(frozen=True)
class NumericStats:
    """Statistics of one numeric feature, after the transform steps that precede normalisation."""

    mean: float
    std: float
    min: float
    max: float
    count: int


@dataclass
class Preprocessing:
    """What `analyze` fitted, for one spec."""

    spec_name: str
    spec_fingerprint: str
    rows: int
    vocabularies: dict[str, list] = field(default_factory=dict)  # table -> ids, most frequent first
    counts: dict[str, list[int]] = field(default_factory=dict)  # table -> count of each id
    stats: dict[str, NumericStats] = field(default_factory=dict)  # feature -> statistics

    def save(self, directory: str) -> str:
        """Write `preprocessing.json` and one vocabulary file per table, atomically."""
        os.makedirs(os.path.join(directory, "vocab"), exist_ok=True)
        for table, ids in self.vocabularies.items():
            atomic_write(os.path.join(directory, "vocab", f"{table}.txt"),
                          "".join(f"{i}\t{c}\n" for i, c in zip(ids, self.counts[table])))
        meta = {"spec_name": self.spec_name, "spec_fingerprint": self.spec_fingerprint, "rows": self.rows,
                "tables": {t: {"size": len(v), "dtype": "string" if v and isinstance(v[0], str) else "int64"}
                           for t, v in self.vocabularies.items()},
                "stats": {n: vars(s) for n, s in self.stats.items()}}
        path = os.path.join(directory, FILE_NAME)
        atomic_write(path, json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str) -> "Preprocessing":
        path = os.path.join(directory, FILE_NAME)
        if not os.path.isfile(path):
            raise DataError(f"{path} not found: run `prerank analyze` first")
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
        vocabularies, counts = {}, {}
        for table, info in meta["tables"].items():
            ids, cnt = [], []
            with open(os.path.join(directory, "vocab", f"{table}.txt"), encoding="utf-8") as fh:
                for line in fh:
                    value, count = line.rstrip("\n").rsplit("\t", 1)
                    ids.append(value if info["dtype"] == "string" else int(value))
                    cnt.append(int(count))
            vocabularies[table], counts[table] = ids, cnt
        stats = {n: NumericStats(**s) for n, s in meta["stats"].items()}
        return cls(meta["spec_name"], meta["spec_fingerprint"], meta["rows"], vocabularies, counts, stats)

    def check_matches(self, spec: Spec, directory: str) -> None:
        """Fail if this was fitted for another spec, or misses a table or statistic the spec needs."""
        missing = [t for t, table in spec.tables.items() if table.vocabulary.source == "data"
                   and t not in self.vocabularies] + [f for f in _normalised(spec) if f not in self.stats]
        if missing:
            raise DataError(f"{os.path.join(directory, FILE_NAME)} was fitted for spec '{self.spec_name}' and lacks "
                            f"{', '.join(missing)} needed by {spec.path}: rerun `prerank analyze`")


def atomic_write(path: str, text: str) -> None:
    """Write `text` to a temporary file, then rename it over `path`: readers never see half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _normalised(spec: Spec) -> list[str]:
    return [f.name for f in spec.features if any(s.op in NORMALISERS for s in f.transforms)]


def _values(value) -> np.ndarray:
    if isinstance(value, tf.RaggedTensor):
        value = value.flat_values
    return np.asarray(value).reshape(-1)


def analyze(spec: Spec, patterns: str | list[str], batch_size: int = 4096) -> Preprocessing:
    """Fit vocabularies and statistics on the files matching `patterns` (one pass)."""
    data_tables = {t: table for t, table in spec.tables.items() if table.vocabulary.source == "data"}
    counters: dict[str, Counter] = {t: Counter() for t in data_tables}
    normalised = {f.name: f for f in spec.features if f.name in _normalised(spec)}
    moments = {n: np.zeros(3) for n in normalised}  # count, sum, sum of squares
    extremes = {n: [np.inf, -np.inf] for n in normalised}
    config = InputConfig(batch_size=batch_size, shuffle_buffer=0, epochs=1, deterministic=True)
    rows = 0
    for batch in make_pipeline(spec, patterns, config):
        features = batch["features"]
        rows += int(batch["group"].shape[0])
        for t, table in data_tables.items():
            for name in table.features:
                ids, n = np.unique(_values(features[spec.feature(name).columns[0]]), return_counts=True)
                counters[t].update(dict(zip(ids.tolist(), n.tolist())))
        for name, f in normalised.items():
            x = apply_steps_np(_values(features[f.columns[0]]).astype(np.float64),
                               steps_before_normalisation(f.transforms))
            moments[name] += (x.size, x.sum(), np.square(x).sum())
            low, high = extremes[name]
            extremes[name] = [min(low, x.min(initial=np.inf)), max(high, x.max(initial=-np.inf))]
    if rows == 0:
        raise DataError(f"no rows in {patterns}: cannot fit vocabularies or statistics")
    result = Preprocessing(spec.name, spec.fingerprint, rows)
    for t, counter in counters.items():
        vocab = data_tables[t].vocabulary
        kept = sorted(((i, c) for i, c in counter.items() if c >= vocab.min_count), key=lambda ic: (-ic[1], ic[0]))
        kept = kept[:vocab.max_size] if vocab.max_size else kept
        decode = data_tables[t].dtype == "string"
        result.vocabularies[t] = [i.decode() if decode else int(i) for i, _ in kept]
        result.counts[t] = [int(c) for _, c in kept]
    for name, (n, s, ss) in moments.items():
        mean = s / max(n, 1)
        std = float(np.sqrt(max(ss / max(n, 1) - mean * mean, 0.0)))
        result.stats[name] = NumericStats(float(mean), std, float(extremes[name][0]), float(extremes[name][1]), int(n))
    return result
