"""What `analyze` fits for one spec: vocabularies and normalisation statistics, saved beside the model.

The result is saved as `preprocessing.json` + `vocab/<table>.txt` (one
`id<TAB>count` a line, most frequent first) and baked into the Keras layers, so
an exported model takes raw values and no serving code re-implements it.
`preprocessing.json` also records the corrupt records the fit skipped
(`skipped`: `trainer.data.corrupt.Skipped.as_dict` entries) and, for a fit that
extended a previous one (`extend.extend_preprocessing`), what it kept, added
and left out (`extension`).

Loading checks what it reads: a file that is not what `save` writes is a
ModelDirError naming the file, and the line or the key.
"""
import json
import os
from dataclasses import dataclass, field

from trainer.errors import ModelDirError
from trainer.files import atomic_write, read_json
from trainer.preprocessing.numeric import NORMALISERS
from trainer.spec.types import Spec


FILE_NAME = "preprocessing.json"
# The end of the message for a preprocessing file that is not what `save` wrote.
DAMAGED = (" (damaged, or not written by prerank: restore the copy that was fitted, or fit the preprocessing again "
           "with `prerank analyze` for a new model)")
# The record of an extension (`extend.extend_preprocessing`), checked on load: its fields, one table's entry
# ("extended" from the previous fit or "fitted" fresh) and one statistic's ("kept" with the new data's figures
# beside, or "fitted" with the reason).
EXTENSION_FIELDS = {"previous": str, "tables": dict, "stats": dict}
TABLE_RECORD_FIELDS = {"status": str, "kept": int, "added": int, "left_out_ids": int, "left_out_occurrences": int,
                       "dropped": int}
STAT_RECORD_FIELDS = {"kept": {"status": str, "mean": float, "std": float, "new_mean": float, "new_std": float},
                      "fitted": {"status": str, "reason": str}}


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
    skipped: list[dict] = field(default_factory=list)  # corrupt records left out of the fit, per file
    # what each table and statistic was fitted from (`fit_definition.definitions`); {} in fits older than it
    definitions: dict = field(default_factory=dict)
    # for a fit that extended a previous one: {"previous": its directory, "tables": {table: TABLE_RECORD_FIELDS},
    # "stats": {feature: STAT_RECORD_FIELDS[status]}}; {} for a plain fit
    extension: dict = field(default_factory=dict)
    loaded_from: str = field(default="", compare=False)  # the directory `load` read it from ("" if not loaded)

    def save(self, directory: str) -> str:
        """Write `preprocessing.json` and one vocabulary file per table, atomically."""
        os.makedirs(os.path.join(directory, "vocab"), exist_ok=True)
        for table, ids in self.vocabularies.items():
            atomic_write(os.path.join(directory, "vocab", f"{table}.txt"),
                          "".join(f"{i}\t{c}\n" for i, c in zip(ids, self.counts[table])))
        meta = {"spec_name": self.spec_name, "spec_fingerprint": self.spec_fingerprint, "rows": self.rows,
                "tables": {t: {"size": len(v), "dtype": "string" if v and isinstance(v[0], str) else "int64"}
                           for t, v in self.vocabularies.items()},
                "stats": {n: vars(s) for n, s in self.stats.items()}, "skipped": self.skipped,
                "definitions": self.definitions, "extension": self.extension}
        path = os.path.join(directory, FILE_NAME)
        atomic_write(path, json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: str) -> "Preprocessing":
        """What `save` wrote into `directory`; ModelDirError naming the file (and line or key) it cannot read."""
        path = os.path.join(directory, FILE_NAME)
        if not os.path.isfile(path):
            raise ModelDirError(f"{path} not found: run `prerank analyze` first")
        meta = read_json(path, ModelDirError, "`prerank analyze` (or `prerank train`)")
        check = _Checker(path)
        check.mapping(meta, "", {"spec_name": str, "spec_fingerprint": str, "rows": int, "tables": dict,
                                 "stats": dict})
        vocabularies, counts = {}, {}
        for table, info in meta["tables"].items():
            check.mapping(info, f"tables.{table}", {"size": int, "dtype": str})
            if info["dtype"] not in ("string", "int64"):
                check.fail(f"tables.{table}.dtype", f"expected 'string' or 'int64', got {info['dtype']!r}")
            ids, cnt = read_vocabulary(os.path.join(directory, "vocab", f"{table}.txt"), info["dtype"], info["size"])
            vocabularies[table], counts[table] = ids, cnt
        stats = {}
        for name, s in meta["stats"].items():
            check.mapping(s, f"stats.{name}", {"mean": float, "std": float, "min": float, "max": float,
                                               "count": int})
            stats[name] = NumericStats(**{k: s[k] for k in ("mean", "std", "min", "max", "count")})
        skipped = meta.get("skipped", [])
        if not isinstance(skipped, list) or not all(isinstance(e, dict) for e in skipped):
            check.fail("skipped", f"expected a list of objects, got {json.dumps(skipped)[:80]}")
        definitions = meta.get("definitions", {})
        if not isinstance(definitions, dict) or not all(isinstance(definitions.get(k, {}), dict)
                                                        for k in ("tables", "stats")):
            check.fail("definitions", f"expected an object of 'tables' and 'stats', got {json.dumps(definitions)[:80]}")
        extension = meta.get("extension", {})  # absent in fits older than it
        if extension != {}:
            check.extension(extension)
        return cls(meta["spec_name"], meta["spec_fingerprint"], meta["rows"], vocabularies, counts, stats, skipped,
                   definitions, extension, loaded_from=directory)

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


class _Checker:
    """Checks of the JSON `save` writes, failing with ModelDirError naming the file and the key."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, message: str):
        raise ModelDirError(f"{self.path}: {key}: {message}{DAMAGED}")

    def mapping(self, value, key: str, fields: dict[str, type]) -> None:
        """`value` must be an object holding `fields` of those types (float: any number; int: an integer)."""
        if not isinstance(value, dict):
            self.fail(key or "(top level)", f"expected a JSON object, got {json.dumps(value)[:80]}")
        for name, kind in fields.items():
            where = f"{key}.{name}" if key else name
            if name not in value:
                self.fail(where, "missing")
            v = value[name]
            ok = isinstance(v, (int, float)) if kind is float else isinstance(v, kind)
            if isinstance(v, bool) or not ok:
                wanted = {float: "a number", int: "an integer", str: "a string", dict: "an object"}[kind]
                self.fail(where, f"expected {wanted}, got {json.dumps(v)[:80]}")

    def extension(self, record) -> None:
        """`record` must be what `extend.extend_preprocessing` writes under "extension"."""
        self.mapping(record, "extension", EXTENSION_FIELDS)
        for kind, statuses in (("tables", {"extended": TABLE_RECORD_FIELDS, "fitted": TABLE_RECORD_FIELDS}),
                               ("stats", STAT_RECORD_FIELDS)):
            for name, entry in record[kind].items():
                key = f"extension.{kind}.{name}"
                self.mapping(entry, key, {"status": str})
                if entry["status"] not in statuses:
                    self.fail(f"{key}.status", f"expected one of {', '.join(map(repr, statuses))}, "
                                               f"got {entry['status']!r}")
                self.mapping(entry, key, statuses[entry["status"]])


def read_vocabulary(path: str, dtype: str, size: int) -> tuple[list, list[int]]:
    """The ids and counts of a `vocab/<table>.txt` file (`id<TAB>count` a line) holding `size` distinct ids of
    `dtype` ("string" or "int64"); ModelDirError naming the file and line otherwise."""
    ids, counts, seen = [], [], {}

    def fail(where: str, message: str):
        raise ModelDirError(f"{where}: {message}{DAMAGED}")

    try:
        with open(path, encoding="utf-8", newline="\n") as fh:
            for number, line in enumerate(fh, 1):
                value, tab, count = line.rstrip("\n").rpartition("\t")
                if not tab or not line.endswith("\n"):
                    fail(f"{path}:{number}", f"expected '<id><TAB><count>' ending in a newline, got {line[:80]!r}")
                if dtype == "int64":
                    try:
                        value = int(value)
                    except ValueError:
                        value = None
                    if value is None or not -2 ** 63 <= value < 2 ** 63:
                        fail(f"{path}:{number}", f"expected an int64 id, got {line.rpartition(chr(9))[0][:80]!r}")
                if not (count.isascii() and count.isdigit()):
                    fail(f"{path}:{number}", f"expected a count (a non-negative integer), got {count[:80]!r}")
                if value in seen:
                    fail(f"{path}:{number}", f"id {value!r} repeats line {seen[value]}")
                seen[value] = number
                ids.append(value)
                counts.append(int(count))
    except FileNotFoundError:
        fail(path, "not found (preprocessing.json lists this table)")
    except UnicodeDecodeError as exc:
        fail(path, f"not UTF-8 text (byte {exc.start})")
    if len(ids) != size:
        fail(path, f"holds {len(ids)} ids, preprocessing.json says {size}")
    return ids, counts
