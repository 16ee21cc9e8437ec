"""Raw columns the spec reads, with the type each must have once parsed.

Several features may read one column (a numeric and its bucketized twin, an
id and a cross); they must agree on how the column is typed and defaulted.
"""
from dataclasses import dataclass
from typing import Any

from trainer.spec.types import Spec

ROLE_FEATURE, ROLE_LABEL, ROLE_WEIGHT, ROLE_GROUP = "feature", "label", "sample_weight", "group_key"


@dataclass(frozen=True)
class RawColumn:
    """A column as the pipeline parses it."""

    name: str
    dtype: str  # int64, string or float32: the parsed dtype handed to the model
    shape: str  # "scalar", "list" (ragged ids) or "vector" (fixed length)
    length: int | None = None  # vector length
    default: Any = None  # used when a record lacks the value; None = the value is required
    users: tuple[str, ...] = ()  # "feature:name", "label:name", ... for messages
    is_input: bool = True  # False for label / weight / group-only columns

    @property
    def negative_default(self) -> int | None:
        """The one negative id a scalar int64 column accepts besides ids >= 0: its declared default, if negative
        (the id rule of `trainer.data.records`); None otherwise."""
        if self.dtype == "int64" and self.shape == "scalar" and self.default is not None and int(self.default) < 0:
            return int(self.default)
        return None

    @property
    def read_by(self) -> str:
        """Who reads the column, for messages: "feature 'a', label 'b'"."""
        return ", ".join(self.users)


def raw_columns(spec: Spec) -> dict[str, RawColumn]:
    """Every column the spec reads, typed. Label/weight/group-only columns are not inputs."""
    out: dict[str, RawColumn] = {}

    def add(col: RawColumn) -> None:
        have = out.get(col.name)
        if have is None:
            out[col.name] = col
            return
        users = have.users + col.users
        out[col.name] = RawColumn(col.name, have.dtype, have.shape, have.length, have.default, users,
                                  have.is_input or col.is_input)

    # Plain features first: a column a cross shares with one takes that feature's type and default (a cross
    # hashes the canonical text of each column, `trainer.layers.encoder.cross_text`, so its columns may differ in
    # type); a column only crosses read takes the cross's dtype.
    for f in sorted(spec.features, key=lambda f: f.is_cross):
        shape = {"sequence": "list", "dense_vector": "vector"}.get(f.kind, "scalar")
        for c in f.columns:
            add(RawColumn(c, f.dtype, shape, f.dim, f.default, (f"feature '{f.name}'",)))
    for label in spec.labels:
        add(RawColumn(label.column, "float32", "scalar", None, None, (f"label '{label.name}'",), False))
    if spec.sample_weight:
        add(RawColumn(spec.sample_weight, "float32", "scalar", None, None, ("sample_weight",), False))
    for c in spec.group_key:
        if c not in out:
            add(RawColumn(c, "string", "scalar", None, None, ("group_key",), False))
    return out
