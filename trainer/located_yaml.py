"""YAML loading that remembers the line of every value, keyed by its field path.

A field path is a tuple of mapping keys and list indexes, e.g.
``("features", 3, "embedding", "dim")``. Duplicate mapping keys are reported
instead of silently overwritten.
"""
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainer.errors import SpecError, SpecIssue

Path = tuple[str | int, ...]


@dataclass
class LocatedDocument:
    """Plain Python data parsed from YAML, plus the 1-based line of each path."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """Line of ``path``, or of its nearest ancestor that exists."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def format_path(path: Path) -> str:
    """``("features", 3, "embedding")`` -> ``features[3].embedding``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<document>"


def load_located_yaml(text: str, file: str) -> LocatedDocument:
    """Parse ``text``; raise SpecError naming the file and line on bad YAML."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([SpecIssue(file, line, "<yaml>", f"invalid YAML: {problem}")]) from None
    doc = LocatedDocument(file=file, data=None)
    issues: list[SpecIssue] = []
    if node is not None:
        doc.data = _convert(node, (), doc, issues)
    if issues:
        raise SpecError(issues)
    return doc


def _convert(node: yaml.Node, path: Path, doc: LocatedDocument, issues: list[SpecIssue]) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if not isinstance(key, str):
                issues.append(SpecIssue(doc.file, key_node.start_mark.line + 1, format_path(path),
                                        f"mapping keys must be strings, got {key!r}"))
                continue
            if key in out:
                issues.append(SpecIssue(doc.file, key_node.start_mark.line + 1, format_path(path + (key,)),
                                        "duplicate key (YAML would silently keep only the last one)"))
                continue
            out[key] = _convert(value_node, path + (key,), doc, issues)
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(child, path + (i,), doc, issues) for i, child in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
