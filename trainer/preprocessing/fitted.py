"""What `analyze` fits for one spec: vocabularies and normalisation statistics, saved beside the model.

The result is saved as `preprocessing.json` + `vocab/<table>.txt` (one
`id<TAB>count` a line, most frequent first) and baked into the Keras layers, so
an exported model takes raw values and no serving code re-implements it.
"""
import json
import os
from dataclasses import dataclass, field

from trainer.errors import ModelDirError
from trainer.files import atomic_write
from trainer.preprocessing.numeric import NORMALISERS
from trainer.spec.types import Spec


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
            raise ModelDirError(f"{path} not found: run `prerank analyze` first")
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
                   and t not in self.vocabularies] + [f for f in normalised_features(spec) if f not in self.stats]
        if missing:
            raise ModelDirError(f"{os.path.join(directory, FILE_NAME)} was fitted for spec '{self.spec_name}' and "
                                f"lacks {', '.join(missing)} needed by {spec.path}: rerun `prerank analyze`")


def normalised_features(spec: Spec) -> list[str]:
    """Features with a zscore or minmax step (their statistics are fitted)."""
    return [f.name for f in spec.features if any(s.op in NORMALISERS for s in f.transforms)]
