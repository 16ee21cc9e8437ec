"""Loading a feature spec: `load_spec` reads and validates a `feature_specs/*.yaml` file.

Every problem is reported at once, each with the file, line and field path
(`trainer.errors.SpecError`); the result is the typed `trainer.spec.types.Spec`.
"""
import hashlib
import json
import math
import os
from typing import Any

from trainer.errors import SpecError
from trainer.spec.located_yaml import Path, format_path, load_located_yaml, read_yaml_file
from trainer.spec.schema import Field, Reader
from trainer.spec.types import (COMPRESSIONS, CONFIG_SECTIONS, FORMATS, ID_DTYPES, INITIALIZERS, KINDS,
                                LABEL_TRANSFORMS, LABEL_TYPES, MAX_BOUNDARIES, MAX_EMBEDDING_DIM, MAX_OOV_BUCKETS,
                                MAX_SEQUENCE_LENGTH, MAX_TABLE_ROWS, MAX_VECTOR_DIM, POOLINGS, SIDES, STUDENT_SIDES,
                                TRANSFORM_OPS, VOCAB_SOURCES, DataSource, Embedding, Feature, Label, Spec,
                                TransformStep, Vocabulary)
from trainer.spec.vocabulary_file import read_vocabulary_file

_TOP = (
    Field("name", (str,), required=True, doc="spec name"),
    Field("description", (str,), default=""),
    Field("data", (dict,), default=None, doc="where the data lives"),
    Field("features", (list,), required=True, doc="list of features"),
    Field("labels", (list,), required=True, doc="list of labels (tasks)"),
    Field("sample_weight", (str, type(None)), default=None, doc="column with per-example weights"),
    Field("group_key", (list, str), default=None, doc="columns grouping examples, e.g. [user_id, date]"),
    Field("model", (dict,), default=None, doc="model, losses and optimizers (read by trainer.config)"),
    Field("training", (dict,), default=None, doc="the training loop (read by trainer.config)"),
    Field("plugins", (list,), default=None, doc="modules registering custom components (read by trainer.config)"),
)
_DATA = (
    Field("format", (str,), default="tfrecord", choices=FORMATS),
    Field("compression", (str,), default="none", choices=COMPRESSIONS),
    Field("train", (str, list), default=None, doc="a glob, or a list of globs, of training files"),
    Field("validation", (str, list), default=None, doc="glob(s) of validation files"),
    Field("eval", (str, list), default=None, doc="glob(s) of evaluation files"),
    Field("list_delimiter", (str,), default="|"),
)
_FEATURE = (
    Field("name", (str,), required=True, doc="unique feature name"),
    Field("kind", (str,), required=True, choices=KINDS, doc="one of " + ", ".join(KINDS)),
    Field("side", (str,), required=True, choices=SIDES, doc="one of " + ", ".join(SIDES)),
    Field("source", (str,), default=None, doc="column name; defaults to the feature name"),
    Field("cross_of", (list,), default=None, doc="columns hashed together into one id"),
    Field("dtype", (str,), default=None, choices=ID_DTYPES),
    Field("vocabulary", (dict,), default=None, doc="how ids map to rows"),
    Field("embedding", (dict,), default=None, doc="table, dim, initializer"),
    Field("max_length", (int,), default=None, doc="sequence: max ids kept"),
    Field("keep", (str,), default="last", choices=("last", "first")),
    Field("pooling", (str,), default="mean", choices=POOLINGS),
    Field("transform", (list, str), default=None, doc="numeric transform steps"),
    Field("default", (int, float, str), default=None, doc="value for records lacking the column"),
    Field("dim", (int,), default=None, doc="dense_vector length"),
    Field("cardinality", (int,), default=None, doc="expected distinct ids (synthetic data)"),
)
_VOCAB = (
    Field("source", (str,), required=True, choices=VOCAB_SOURCES, doc="data, file or hash"),
    Field("min_count", (int,), default=1), Field("max_size", (int, type(None)), default=None),
    Field("path", (str,), default=None), Field("buckets", (int,), default=None),
    Field("oov_buckets", (int,), default=1),
)
_EMBEDDING = (
    Field("table", (str,), default=None, doc="table name; defaults to the feature name"),
    Field("dim", (int,), required=True, doc="embedding dimension"),
    Field("initializer", (str,), default="uniform", choices=INITIALIZERS),
)
_LABEL = (
    Field("name", (str,), required=True, doc="task name"),
    Field("column", (str,), default=None, doc="source column; defaults to the name"),
    Field("type", (str,), required=True, choices=LABEL_TYPES, doc="binary or regression"),
    Field("transform", (str,), default="none", choices=LABEL_TRANSFORMS),
    Field("weight", (float,), default=1.0),
)


def load_spec(path: str) -> Spec:
    """Read and validate a spec file; raise SpecError listing every problem."""
    return parse_spec(read_yaml_file(path, SpecError, "spec file"), path)


def as_spec(spec: Spec | str) -> Spec:
    """`spec` itself, or the spec loaded from the file it names (the API takes either)."""
    return load_spec(spec) if isinstance(spec, str) else spec


def parse_spec(text: str, path: str) -> Spec:
    """Validate spec `text` read from `path` (used for messages and relative paths)."""
    doc = load_located_yaml(text, path)
    r = Reader(doc)
    base = os.path.dirname(os.path.abspath(path))
    top = r.read_mapping(doc.data if doc.data is not None else {}, (), _TOP)
    if top is None:
        raise SpecError(r.issues)
    data = _read_data(r, top["data"], base)
    read = [(i, f) for i, raw in enumerate(top["features"] or [])
            if (f := _read_feature(r, raw, ("features", i), base))]
    features = [f for _, f in read]
    read_labels = [(i, l) for i, raw in enumerate(top["labels"] or []) if (l := _read_label(r, raw, ("labels", i)))]
    labels = [l for _, l in read_labels]
    group_key = top["group_key"]
    if isinstance(group_key, str):
        group_key = [group_key]
    for i, col in enumerate(group_key or []):
        r.check_value(col, ("group_key", i), (str,))
    spec = Spec(name=top["name"] or "", path=os.path.abspath(path),
                fingerprint=_fingerprint(doc.data),
                features=tuple(features), labels=tuple(labels), sample_weight=top["sample_weight"],
                group_key=tuple(c for c in group_key or [] if isinstance(c, str)), data=data)
    _check_cross_references(r, spec, top, positions={id(x): i for i, x in read + read_labels})
    if r.issues:
        raise SpecError(r.issues)
    return spec


def _fingerprint(data: Any) -> str:
    """Hash of everything that defines features, labels and data (not the model / training sections)."""
    kept = {k: v for k, v in data.items() if k not in CONFIG_SECTIONS} if isinstance(data, dict) else data
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_data(r: Reader, raw: Any, base: str) -> DataSource:
    if raw is None:
        return DataSource()
    d = r.read_mapping(raw, ("data",), _DATA)
    if d is None:
        return DataSource()
    delimiter = d["list_delimiter"]
    if delimiter is not None and (not delimiter or delimiter in ',"\n\r'):
        r.error(("data", "list_delimiter"), f"expected a non-empty separator other than a comma, quote or line "
                                            f"break (CSV uses those), got {delimiter!r}")
    if d["format"] == "parquet" and d["compression"] not in (None, "none"):
        r.error(("data", "compression"), f"Parquet files compress inside themselves (their writer chooses the "
                                         f"codec); leave compression out or set it to none, got {d['compression']!r}")
    splits = {split: _read_globs(r, d[split], ("data", split), base) for split in ("train", "validation", "eval")}
    return DataSource(format=d["format"] or "tfrecord", compression=d["compression"] or "none",
                      list_delimiter=d["list_delimiter"] or "|", **splits)


def _read_globs(r: Reader, raw: Any, path: Path, base: str) -> tuple[str, ...] | None:
    """A split's files: one glob or a list of globs, each resolved against the spec's folder."""
    if raw is None:
        return None
    globs = [raw] if isinstance(raw, str) else raw
    if not globs:
        r.error(path, "expected a glob or a non-empty list of globs, got []")
        return None
    for i, glob in enumerate(globs):
        if not isinstance(glob, str) or not glob.strip():
            r.error(path + (i,) if isinstance(raw, list) else path, f"expected a non-empty glob string, got {glob!r}")
            return None
    return tuple(os.path.normpath(os.path.join(base, g)) for g in globs)


def _read_feature(r: Reader, raw: Any, path: Path, base: str) -> Feature | None:
    d = r.read_mapping(raw, path, _FEATURE)
    if d is None or not d["name"] or not d["kind"] or not d["side"]:
        return None
    kind, n_issues = d["kind"], len(r.issues)
    columns = _read_columns(r, d, path, kind)

    def forbid(*keys: str) -> None:
        for k in keys:
            if isinstance(raw, dict) and k in raw:
                r.error(path + (k,), f"not allowed for a {kind} feature")

    def need(key: str, what: str) -> None:
        if d[key] is None:
            r.error(path + (key,), f"missing required field '{key}' for a {kind} feature ({what})")

    vocabulary = embedding = None
    transforms: tuple[TransformStep, ...] = ()
    dtype = "float32"
    if kind in ("categorical", "sequence"):
        need("dtype", "int64 or string")
        need("vocabulary", "{source: data|file|hash, ...}")
        need("embedding", "{table, dim, initializer}")
        forbid("transform", "dim")
        dtype = d["dtype"] or "int64"
        vocabulary = _read_vocabulary(r, d["vocabulary"], path + ("vocabulary",), base, dtype)
        embedding = _read_embedding(r, d["embedding"], path + ("embedding",), d["name"])
        if kind == "sequence":
            need("max_length", "a positive integer")
            forbid("cross_of", "default")
        else:
            forbid("max_length", "keep", "pooling")
        if columns and len(columns) > 1 and vocabulary and vocabulary.source != "hash":
            r.error(path + ("vocabulary", "source"), "a cross_of feature must use source: hash")
    elif kind == "numeric":
        forbid("dtype", "vocabulary", "max_length", "keep", "pooling", "dim", "cross_of", "cardinality")
        transforms = _read_transforms(r, d["transform"], path + ("transform",))
        if transforms and transforms[-1].op == "bucketize":
            need("embedding", "bucketized numbers are embedded: {table, dim}")
            embedding = _read_embedding(r, d["embedding"], path + ("embedding",), d["name"])
        else:
            forbid("embedding")
    else:  # dense_vector
        forbid("dtype", "vocabulary", "embedding", "max_length", "keep", "pooling", "transform", "cross_of",
               "cardinality", "default")
        need("dim", "vector length")
    for key, maximum in (("max_length", MAX_SEQUENCE_LENGTH), ("dim", MAX_VECTOR_DIM), ("cardinality", MAX_TABLE_ROWS)):
        _check_size(r, path + (key,), d[key], maximum)
    default = d["default"]
    if default is not None and kind == "numeric" and isinstance(default, str):
        r.error(path + ("default",), f"expected a number for a numeric feature, got {default!r}")
    elif isinstance(default, float) and not math.isfinite(default):
        r.error(path + ("default",), f"expected a finite number, got {default!r}")
    if default is not None and kind == "categorical":
        want = str if dtype == "string" else int
        if not isinstance(default, want) or isinstance(default, bool):
            r.error(path + ("default",), f"expected {'a string' if want is str else 'an integer'} "
                                         f"(the feature's dtype is {dtype}), got {default!r}")
    if len(r.issues) > n_issues or columns is None:
        return None
    return Feature(name=d["name"], kind=kind, side=d["side"], columns=columns, dtype=dtype,
                   vocabulary=vocabulary, embedding=embedding, max_length=d["max_length"], keep=d["keep"],
                   pooling=d["pooling"], transforms=transforms,
                   default=float(default) if kind == "numeric" and default is not None else default,
                   dim=d["dim"], cardinality=d["cardinality"])


def _check_size(r: Reader, path: Path, value: int | None, maximum: int) -> None:
    """Record an issue if a declared size (None: not given) is outside [1, maximum]."""
    if value is not None and not 1 <= value <= maximum:
        r.error(path, f"expected a positive integer <= {maximum:,}, got {value:,}")


def _read_columns(r: Reader, d: dict, path: Path, kind: str) -> tuple[str, ...] | None:
    if d["cross_of"] is not None:
        if d["source"] is not None:
            r.error(path + ("source",), "give either source or cross_of, not both")
        cols = [r.check_value(c, path + ("cross_of", i), (str,)) for i, c in enumerate(d["cross_of"])]
        if len(cols) < 2:
            r.error(path + ("cross_of",), "expected a list of at least two columns")
            return None
        if kind != "categorical":
            r.error(path + ("cross_of",), "only categorical features can be crosses")
        return tuple(c for c in cols if c)
    return (d["source"] or d["name"],)


def _read_vocabulary(r: Reader, raw: Any, path: Path, base: str, dtype: str) -> Vocabulary | None:
    if raw is None:
        return None
    d = r.read_mapping(raw, path, _VOCAB)
    if d is None or d["source"] is None:
        return None
    src = d["source"]
    allowed = {"data": {"source", "min_count", "max_size", "oov_buckets"},
               "file": {"source", "path", "oov_buckets"}, "hash": {"source", "buckets"}}[src]
    for key in raw:
        if key not in allowed and key in {f.name for f in _VOCAB}:
            r.error(path + (key,), f"not used with source: {src} (allowed: {', '.join(sorted(allowed))})")
    file_path = None
    if src == "file":
        if not d["path"]:
            r.error(path + ("path",), "missing required field 'path' for source: file")
        else:
            file_path = os.path.normpath(os.path.join(base, d["path"]))
            if not os.path.isfile(file_path):
                r.error(path + ("path",), f"vocabulary file not found: {file_path}")
            else:
                try:
                    read_vocabulary_file(file_path, dtype, format_path(path + ("path",)))
                except SpecError as exc:
                    r.issues.extend(exc.issues)
    if src == "hash" and d["buckets"] is None:
        r.error(path + ("buckets",), "missing required field 'buckets' for source: hash (a positive integer)")
    _check_size(r, path + ("min_count",), d["min_count"], MAX_TABLE_ROWS)
    for key in ("buckets", "max_size"):
        _check_size(r, path + (key,), d[key], MAX_TABLE_ROWS)
    if src != "hash" and d["oov_buckets"] is not None:
        if d["oov_buckets"] < 1:
            r.error(path + ("oov_buckets",), f"expected at least 1 (unseen ids need a row), got {d['oov_buckets']}")
        elif d["oov_buckets"] > MAX_OOV_BUCKETS:
            r.error(path + ("oov_buckets",), f"expected at most {MAX_OOV_BUCKETS:,}, got {d['oov_buckets']:,}")
    return Vocabulary(source=src, min_count=d["min_count"], max_size=d["max_size"], path=file_path,
                      buckets=d["buckets"], oov_buckets=0 if src == "hash" else d["oov_buckets"])


def _read_embedding(r: Reader, raw: Any, path: Path, feature_name: str) -> Embedding | None:
    if raw is None:
        return None
    d = r.read_mapping(raw, path, _EMBEDDING)
    if d is None or d["dim"] is None:
        return None
    _check_size(r, path + ("dim",), d["dim"], MAX_EMBEDDING_DIM)
    return Embedding(table=d["table"] or feature_name, dim=d["dim"], initializer=d["initializer"])


def _read_transforms(r: Reader, raw: Any, path: Path) -> tuple[TransformStep, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    steps: list[TransformStep] = []
    for i, item in enumerate(items):
        p = path if isinstance(raw, str) else path + (i,)
        if isinstance(item, str):
            if item not in TRANSFORM_OPS or item == "bucketize":
                r.error(p, f"expected one of log1p, zscore, minmax or {{bucketize: [boundaries]}}, got {item!r}")
                continue
            steps.append(TransformStep(item))
        elif isinstance(item, dict) and list(item) == ["bucketize"]:
            bounds = item["bucketize"]
            if not isinstance(bounds, list) or not bounds or not all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
                r.error(p + ("bucketize",), f"expected a non-empty list of numbers, got {bounds!r}")
                continue
            if len(bounds) > MAX_BOUNDARIES or not all(math.isfinite(b) for b in bounds):
                r.error(p + ("bucketize",), f"expected at most {MAX_BOUNDARIES:,} finite boundaries, got "
                                            f"{len(bounds):,}" + ("" if all(math.isfinite(b) for b in bounds)
                                                                  else " with a nan or inf"))
                continue
            if any(lo >= hi for lo, hi in zip(bounds, bounds[1:])):
                r.error(p + ("bucketize",), f"boundaries must be strictly increasing, got {bounds}")
                continue
            steps.append(TransformStep("bucketize", tuple(float(b) for b in bounds)))
        else:
            r.error(p, f"expected one of log1p, zscore, minmax or {{bucketize: [boundaries]}}, got {item!r}")
    ops = [s.op for s in steps]
    if "bucketize" in ops[:-1]:
        r.error(path, "bucketize must be the last transform step")
    if sum(op in ("zscore", "minmax") for op in ops) > 1:
        r.error(path, "at most one of zscore / minmax")
    return tuple(steps)


def _read_label(r: Reader, raw: Any, path: Path) -> Label | None:
    d = r.read_mapping(raw, path, _LABEL)
    if d is None or not d["name"] or not d["type"]:
        return None
    if d["type"] == "binary" and d["transform"] not in (None, "none"):
        r.error(path + ("transform",), "a binary label takes no transform")
    return Label(name=d["name"], column=d["column"] or d["name"], type=d["type"],
                 transform=d["transform"] or "none", weight=1.0 if d["weight"] is None else d["weight"])


def _check_unique_names(r: Reader, section: str, what: str, raws: list | None) -> dict[str, int]:
    """Report repeated names in a list section; return each name's first index."""
    first: dict[str, int] = {}
    for i, raw in enumerate(raws or []):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            r.error((section, i, "name"), f"duplicate {what} name '{name}' (first at {section}[{first[name]}])")
        first.setdefault(name, i)
    return first


def _check_cross_references(r: Reader, spec: Spec, top: dict, positions: dict[int, int]) -> None:
    """Checks across features and labels; `positions` maps id(feature or label) to its YAML list index."""
    raw_features = [raw if isinstance(raw, dict) else {} for raw in top["features"] or []]
    seen = _check_unique_names(r, "features", "feature", top["features"])
    label_seen = _check_unique_names(r, "labels", "label", top["labels"])
    for name, i in label_seen.items():
        if name in seen:
            r.error(("labels", i, "name"), f"label name '{name}' is also a feature name")

    def fpath(f: Feature, *rest: str | int) -> Path:
        return ("features", positions[id(f)]) + rest

    def column_path(f: Feature) -> Path:
        """The key that names the feature's column(s): cross_of, source, or (by default) name."""
        raw = raw_features[positions[id(f)]]
        return fpath(f, next((k for k in ("cross_of", "source") if k in raw), "name"))

    # Shared tables must agree on everything that shapes the table.
    first: dict[str, Feature] = {}
    for f in spec.features:
        if f.embedding is None:
            continue
        owner = first.setdefault(f.embedding.table, f)
        if owner is f:
            continue
        for what, a, b, key in (("dimension", owner.embedding.dim, f.embedding.dim, ("embedding", "dim")),
                                ("initializer", owner.embedding.initializer, f.embedding.initializer,
                                 ("embedding", "initializer")),
                                ("dtype", owner.dtype, f.dtype, ("dtype",)),
                                ("vocabulary", owner.vocabulary, f.vocabulary, ("vocabulary",)),
                                ("bucket boundaries", owner.transforms, f.transforms, ("transform",))):
            if a != b:
                r.error(fpath(f, *key), f"shares table '{f.embedding.table}' with feature '{owner.name}' "
                                        f"but disagrees on {what}: {_show(b)} here, {_show(a)} there")
    # A column read by several features must be typed and defaulted the same way. A cross reads its columns as
    # the features that own them do (it hashes their canonical text, whatever their types), but only scalars.
    shape = lambda x: {"sequence": "list", "dense_vector": "vector"}.get(x.kind, "scalar")  # noqa: E731
    column_owner: dict[str, Feature] = {}
    for f in sorted(spec.features, key=lambda f: f.is_cross):
        for c in f.columns:
            owner = column_owner.setdefault(c, f)
            if owner is not f and f.is_cross:
                if shape(owner) != "scalar":
                    r.error(column_path(f), f"a cross hashes one id per row, but column '{c}' is a {shape(owner)} "
                                            f"(read by {owner.kind} feature '{owner.name}')")
                continue
            if owner is not f and (owner.dtype, shape(owner), owner.default) != (f.dtype, shape(f), f.default):
                r.error(column_path(f), f"column '{c}' is also read by feature '{owner.name}' with another "
                                        f"dtype, shape or default ({f.dtype}/{shape(f)}/default={f.default!r} "
                                        f"here, {owner.dtype}/{shape(owner)}/default={owner.default!r} there)")
    # Crosses and offline-only columns never reach the student.
    privileged_cols = {c: f.name for f in spec.features if f.side == "privileged" for c in f.columns}
    for f in spec.features:
        if f.side not in STUDENT_SIDES:
            continue
        if f.is_cross:
            r.error(fpath(f, "side"), f"a student tower ({f.side}) would see cross feature '{f.name}'; "
                                      "crosses must have side: cross")
        for c in f.columns:
            if c in privileged_cols:
                r.error(column_path(f), f"a student tower ({f.side}) would see column '{c}', which is "
                                        f"offline-only (read by privileged feature '{privileged_cols[c]}')")
    # Labels and weights are targets, never inputs.
    feature_cols = {c: f.name for f in spec.features for c in f.columns}
    raw_labels = [raw if isinstance(raw, dict) else {} for raw in top["labels"] or []]
    for label in spec.labels:
        i = positions[id(label)]
        key = "column" if "column" in raw_labels[i] else "name"  # the column defaults to the name
        if label.column in feature_cols:
            r.error(("labels", i, key), f"label column '{label.column}' is also read by feature "
                                        f"'{feature_cols[label.column]}' (the label would leak into inputs)")
    if spec.sample_weight and spec.sample_weight in feature_cols:
        r.error(("sample_weight",), f"sample weight column '{spec.sample_weight}' is also a feature column")
    # Judge towers on the sides written in the YAML, so a feature with another error does not
    # also make its tower look empty.
    sides = {side for raw in raw_features if isinstance(side := raw.get("side"), str)}
    if not raw_features:
        r.error(("features",), "expected at least one feature (the student needs a user or context feature and "
                               "an item feature; the teacher reads them all)")
    if raw_features and not sides & {"user", "context"}:
        r.error(("features",), "the student's user tower needs at least one user or context feature")
    if raw_features and "item" not in sides:
        r.error(("features",), "the student's item tower needs at least one item feature")
    if not (top["labels"] or []):
        r.error(("labels",), "expected at least one label")


def _show(value: Any) -> str:
    if isinstance(value, Vocabulary):
        parts = [f"source={value.source}"] + [f"{k}={v}" for k, v in vars(value).items()
                                              if k != "source" and v not in (None,)]
        return "{" + ", ".join(parts) + "}"
    return repr(value)
