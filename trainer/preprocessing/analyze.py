"""Fitted preprocessing: vocabularies and normalisation statistics from training data.

`analyze` reads the training files once through the input pipeline and fits
what the spec leaves to the data: vocabularies of `source: data` tables
(ids ordered by frequency, filtered by `min_count`, cut at `max_size`) and the
mean / std / min / max that `zscore` and `minmax` steps need (computed on the
values after the steps before them). The result is saved beside the model
(`preprocessing.json` + `vocab/<table>.txt`) and baked into the Keras layers,
so an exported model takes raw values and no serving code re-implements it.
"""
from collections import Counter

import numpy as np
import tensorflow as tf

from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import DataError
from trainer.preprocessing.fit_definition import definitions
from trainer.preprocessing.fitted import NumericStats, Preprocessing, normalised_features
from trainer.preprocessing.numeric import apply_steps_np, steps_before_normalisation
from trainer.spec.types import Spec


def _values(value) -> np.ndarray:
    if isinstance(value, tf.RaggedTensor):
        value = value.flat_values
    return np.asarray(value).reshape(-1)


def analyze(spec: Spec, patterns: str | list[str], batch_size: int = 4096, skip_corrupt: bool = False) -> Preprocessing:
    """Fit vocabularies and statistics on the files matching `patterns` (one pass).

    Args:
      spec: the features and tables to fit.
      patterns: the training files (globs).
      batch_size: rows read per batch.
      skip_corrupt: leave corrupt records out (the result's `skipped` lists them per file) instead of failing.
    """
    data_tables = {t: table for t, table in spec.tables.items() if table.vocabulary.source == "data"}
    counters: dict[str, Counter] = {t: Counter() for t in data_tables}
    normalised = {f.name: f for f in spec.features if f.name in normalised_features(spec)}
    moments = {n: np.zeros(3) for n in normalised}  # count, sum, sum of squares
    extremes = {n: [np.inf, -np.inf] for n in normalised}
    config = InputConfig(batch_size=batch_size, shuffle_buffer=0, epochs=1, deterministic=True,
                         skip_corrupt=skip_corrupt)
    rows = 0
    pipeline = make_pipeline(spec, patterns, config)
    for batch in pipeline:
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
    result = Preprocessing(spec.name, spec.fingerprint, rows, skipped=[s.as_dict() for s in pipeline.skipped],
                           definitions=definitions(spec))
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
