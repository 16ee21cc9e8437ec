"""Cold-start slices: the evaluation rows whose ids a trained model does not know.

An id outside its table's fitted vocabulary reads the table's out-of-vocabulary
row (the rule in `trainer.data.records`): an id the training data never had, or
a rare one (seen fewer than the spec's `min_count` times). `out_of_vocabulary`
marks, for the named categorical features, the rows whose id is such an id,
in the order `trainer.evaluation.predict.predict` returns rows (file order,
every row), so any per-row prediction can be scored on the slice
(`slice_aucs`). Which vocabulary decides is the caller's: a model directory's
own fit, or a reference fit (e.g. one with `min_count: 1`, whose vocabulary
is exactly the ids of the training data) to compare models on the same rows.
"""
from collections.abc import Iterable

import numpy as np

from trainer.config.derived import VOCABULARY_SOURCES
from trainer.data.input_config import InputConfig
from trainer.data.pipeline import make_pipeline
from trainer.errors import DataError
from trainer.evaluation.metrics import auc
from trainer.preprocessing.fitted import Preprocessing
from trainer.spec.types import Spec
from trainer.spec.vocabulary_file import read_vocabulary_file


def known_ids(spec: Spec, preprocessing: Preprocessing, feature: str) -> np.ndarray:
    """The ids a categorical feature's table knows (its vocabulary: fitted, or the spec's file), as the
    pipeline gives them (int64, or bytes for strings)."""
    f = next((f for f in spec.features if f.name == feature), None)
    if f is None or f.kind != "categorical" or f.vocabulary is None or f.vocabulary.source not in VOCABULARY_SOURCES:
        choices = [g.name for g in spec.features if g.kind == "categorical" and g.vocabulary is not None
                   and g.vocabulary.source in VOCABULARY_SOURCES]
        raise DataError(f"{spec.path}: feature {feature!r}: expected a categorical feature looked up in a "
                        f"vocabulary (source data or file): {', '.join(choices)}")
    table = f.embedding.table
    if f.vocabulary.source == "file":
        ids = read_vocabulary_file(f.vocabulary.path, f.dtype)
    elif table in preprocessing.vocabularies:
        ids = preprocessing.vocabularies[table]
    else:
        raise DataError(f"feature {feature!r}: the fitted preprocessing has no vocabulary of table {table!r}")
    if f.dtype == "string":
        return np.asarray([i.encode("utf-8") for i in ids], dtype=object)
    return np.asarray(ids, dtype=np.int64)


def out_of_vocabulary(spec: Spec, preprocessing: Preprocessing, data: str | list[str], features: Iterable[str],
                      skip_corrupt: bool = False, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Feature -> bool [rows]: the row's id of that feature is not in its table's vocabulary (it reads the
    table's OOV row), for every row of `data` in file order (`predict`'s order; with `skip_corrupt`, corrupt
    records are left out as `predict` leaves them out)."""
    features = list(features)
    known = {name: known_ids(spec, preprocessing, name) for name in features}
    config = InputConfig(batch_size=batch_size, shuffle_buffer=0, deterministic=True, skip_corrupt=skip_corrupt)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in features}
    for batch in make_pipeline(spec, data, config):
        for name in features:
            ids = batch["features"][spec.feature(name).columns[0]].numpy()
            parts[name].append(~np.isin(ids, known[name]))
    return {name: np.concatenate(p) if p else np.zeros(0, bool) for name, p in parts.items()}


def slice_aucs(labels: dict[str, np.ndarray], scores: dict[str, np.ndarray], rows: np.ndarray | None = None,
               ) -> dict[str, float | None]:
    """Name -> AUC of `scores[name]` against `labels[name]` on the rows selected by the bool mask `rows`
    (None: every row); None where the slice holds one class only (or nothing)."""
    out: dict[str, float | None] = {}
    for name, score in scores.items():
        label = labels[name] if rows is None else labels[name][rows]
        value = auc(label, score if rows is None else score[rows])
        out[name] = None if np.isnan(value) else value
    return out
