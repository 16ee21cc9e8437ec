"""Fitted preprocessing: vocabularies and normalisation statistics from training data.

`analyze` reads the training files once through the input pipeline and fits
what the spec leaves to the data: vocabularies of `source: data` tables
(ids ordered by frequency, filtered by `min_count`, cut at `max_size`) and the
mean / std / min / max that `zscore` and `minmax` steps need (computed on the
values after the steps before them). The result is saved beside the model
(`preprocessing.json` + `vocab/<table>.txt`) and baked into the Keras layers,
so an exported model takes raw values and no serving code re-implements it.

`count_data` is that one pass (`extend.extend_preprocessing` grows a previous
fit with it) and `frequent_ids` the vocabulary rule.
"""
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import DataError
from trainer.preprocessing.fit_definition import definitions
from trainer.preprocessing.fitted import NumericStats, Preprocessing, normalised_features
from trainer.preprocessing.numeric import apply_steps_np, steps_before_normalisation
from trainer.spec.types import Spec


@dataclass
class DataCounts:
    """What one pass over the data counted."""

    rows: int
    skipped: list[dict]  # corrupt records left out, per file (`trainer.data.corrupt.Skipped.as_dict`)
    ids: dict[str, Counter]  # `source: data` table -> id (str or int, as the vocabulary holds it) -> occurrences
    stats: dict[str, NumericStats]  # normalised feature -> statistics of its values before the normaliser


def _values(value) -> np.ndarray:
    if isinstance(value, tf.RaggedTensor):
        value = value.flat_values
    return np.asarray(value).reshape(-1)


def count_data(spec: Spec, patterns: str | list[str], batch_size: int = 4096,
               skip_corrupt: bool = False) -> DataCounts:
    """Count the ids of every `source: data` table and the moments of every normalised feature (one pass);
    DataError when the files hold no rows. Arguments as `analyze`'s."""
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
    ids = {t: Counter({i.decode(): c for i, c in counter.items()}) if data_tables[t].dtype == "string"
           else Counter({int(i): c for i, c in counter.items()}) for t, counter in counters.items()}
    stats = {}
    for name, (n, s, ss) in moments.items():
        mean = s / max(n, 1)
        std = float(np.sqrt(max(ss / max(n, 1) - mean * mean, 0.0)))
        stats[name] = NumericStats(float(mean), std, float(extremes[name][0]), float(extremes[name][1]), int(n))
    return DataCounts(rows, [s.as_dict() for s in pipeline.skipped], ids, stats)


def frequent_ids(counter: Counter, min_count: int, room: int | None = None,
                 exclude: frozenset | set = frozenset()) -> tuple[list[tuple], list[tuple]]:
    """(taken, left out): the (id, count) pairs of the ids counted at least `min_count` times (and not in
    `exclude`), most frequent first, ties by id; `taken` holds the first `room` of them (all if None),
    `left out` the rest."""
    ranked = sorted(((i, c) for i, c in counter.items() if c >= min_count and i not in exclude),
                    key=lambda ic: (-ic[1], ic[0]))
    return (ranked, []) if room is None else (ranked[:room], ranked[room:])


def analyze(spec: Spec, patterns: str | list[str], batch_size: int = 4096, skip_corrupt: bool = False) -> Preprocessing:
    """Fit vocabularies and statistics on the files matching `patterns` (one pass).

    Args:
      spec: the features and tables to fit.
      patterns: the training files (globs).
      batch_size: rows read per batch.
      skip_corrupt: leave corrupt records out (the result's `skipped` lists them per file) instead of failing.
    """
    counted = count_data(spec, patterns, batch_size, skip_corrupt)
    result = Preprocessing(spec.name, spec.fingerprint, counted.rows, skipped=counted.skipped,
                           definitions=definitions(spec), stats=counted.stats)
    for t, counter in counted.ids.items():
        vocab = spec.tables[t].vocabulary
        kept, _ = frequent_ids(counter, vocab.min_count, vocab.max_size)
        result.vocabularies[t] = [i for i, _ in kept]
        result.counts[t] = [int(c) for _, c in kept]
    return result
