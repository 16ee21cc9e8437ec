"""A tiny declarative checker for YAML mappings: known keys, types, required fields.

Each spec section declares its fields once (name, accepted types, required,
default, one-line doc); `read_mapping` checks a raw mapping against it and
records every problem with the file, line and field path.
"""
from dataclasses import dataclass
from typing import Any

from trainer.errors import SpecIssue
from trainer.spec.located_yaml import LocatedDocument, Path, format_path

_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false",
               list: "a list", dict: "a mapping", type(None): "null"}


@dataclass(frozen=True)
class Field:
    """One key of a spec mapping."""

    name: str
    types: tuple[type, ...]
    required: bool = False
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None


class Reader:
    """Collects issues while reading a located document."""

    def __init__(self, doc: LocatedDocument):
        self.doc = doc
        self.issues: list[SpecIssue] = []

    def error(self, path: Path, message: str) -> None:
        self.issues.append(SpecIssue(self.doc.file, self.doc.line_of(path), format_path(path), message))

    def read_mapping(self, raw: Any, path: Path, fields: tuple[Field, ...]) -> dict[str, Any] | None:
        """Return {field: value} with defaults filled, or None if `raw` is not a mapping."""
        if not isinstance(raw, dict):
            self.error(path, f"expected a mapping, got {_describe(raw)}")
            return None
        known = {f.name: f for f in fields}
        for key in raw:
            if key not in known:
                self.error(path + (key,), f"unknown key; expected one of: {', '.join(sorted(known))}")
        out: dict[str, Any] = {}
        for f in fields:
            value = raw.get(f.name, _MISSING)
            if value is _MISSING:
                if f.required:
                    self.error(path + (f.name,), f"missing required field '{f.name}' ({f.doc})")
                out[f.name] = f.default
                continue
            out[f.name] = self.check_value(value, path + (f.name,), f.types, f.choices)
        return out

    def check_value(self, value: Any, path: Path, types: tuple[type, ...],
                    choices: tuple[Any, ...] | None = None) -> Any:
        """Return `value` if it has one of `types` (ints pass as floats), else record an error."""
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            self.error(path, f"expected {expected}, got {_describe(value)}")
            return None
        if choices is not None and value not in choices:
            self.error(path, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
            return None
        return value


def _describe(value: Any) -> str:
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} ({value!r})"
