"""YAML loading that remembers the line of every value, keyed by its field path.

A field path is a tuple of mapping keys and list indexes, e.g.
``("features", 3, "embedding", "dim")``. Duplicate mapping keys are reported
instead of silently overwritten; merge keys (``<<: *anchor``) are supported.
"""
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainer.errors import IssuesError, SpecError, SpecIssue

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


def load_located_yaml(text: str, file: str, error: type[IssuesError] = SpecError) -> LocatedDocument:
    """Parse ``text``; raise `error` (a SpecError, or a ConfigError for a config file) naming the file and line
    on bad YAML."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error([SpecIssue(file, line, "<yaml>", f"invalid YAML: {problem}")]) from None
    doc = LocatedDocument(file=file, data=None)
    issues: list[SpecIssue] = []
    if node is not None:
        doc.data = _convert(node, (), doc, issues)
    if issues:
        raise error(issues)
    return doc


_MERGE_TAG = "tag:yaml.org,2002:merge"
_UNREADABLE = object()


def _convert(node: yaml.Node, path: Path, doc: LocatedDocument, issues: list[SpecIssue]) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        return _convert_mapping(node, path, doc, issues)
    if isinstance(node, yaml.SequenceNode):
        return [_convert(child, path + (i,), doc, issues) for i, child in enumerate(node.value)]
    value = _scalar(node, path, doc, issues)
    return None if value is _UNREADABLE else value


def _convert_mapping(node: yaml.MappingNode, path: Path, doc: LocatedDocument,
                     issues: list[SpecIssue]) -> dict[str, Any]:
    """Explicit keys first; then keys merged in with ``<<: *anchor`` that are not given explicitly."""
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = _scalar(key_node, path, doc, issues)
        if key is _UNREADABLE:
            continue
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
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            _merge_into(out, value_node, key_node.start_mark.line + 1, path, doc, issues)
    return out


def _merge_into(out: dict[str, Any], source: yaml.Node, line: int, path: Path, doc: LocatedDocument,
                issues: list[SpecIssue]) -> None:
    """Apply ``<<: *anchor`` (or a list of anchors, earliest wins) without overriding explicit keys."""
    sources = source.value if isinstance(source, yaml.SequenceNode) else [source]
    for src in sources:
        if not isinstance(src, yaml.MappingNode):
            issues.append(SpecIssue(doc.file, line, format_path(path + ("<<",)),
                                    "'<<' expects a mapping or a list of mappings (e.g. <<: *defaults)"))
            continue
        scratch = LocatedDocument(doc.file, None)
        scratch_issues: list[SpecIssue] = []
        merged = _convert_mapping(src, path, scratch, scratch_issues)
        issues.extend(i for i in scratch_issues if i not in issues)
        for key, value in merged.items():
            if key in out:
                continue
            out[key] = value
            doc.lines.update((p, ln) for p, ln in scratch.lines.items() if p[:len(path) + 1] == path + (key,))


def _scalar(node: yaml.Node, path: Path, doc: LocatedDocument, issues: list[SpecIssue]) -> Any:
    """Construct a scalar (or complex key); record an issue and return _UNREADABLE if YAML cannot."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(SpecIssue(doc.file, node.start_mark.line + 1, format_path(path),
                                f"cannot read value {node.value!r}: {problem}"))
        return _UNREADABLE
    finally:
        loader.dispose()
