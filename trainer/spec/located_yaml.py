"""YAML loading that remembers the line of every value, keyed by its field path.

A field path is a tuple of mapping keys and list indexes, e.g.
``("features", 3, "embedding", "dim")``. Duplicate mapping keys are reported
instead of silently overwritten; merge keys (``<<: *anchor``) are supported.

Hostile input is bounded before anything is expanded (`read_yaml_file`,
`load_located_yaml`): a file larger than `MAX_FILE_BYTES`, one that is not
UTF-8 text, nesting deeper than `MAX_DEPTH`, more than `MAX_ALIASES` alias
uses, a recursive alias or a document that expands (through aliases) to more
than `MAX_VALUES` values is refused with the file and line, so an alias bomb
of a few hundred bytes cannot hang the loader or fill memory. A syntax error
names the line where parsing failed and the line where the unclosed construct
(bracket, quote, block) opened.
"""
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainer.errors import IssuesError, SpecError, SpecIssue

Path = tuple[str | int, ...]

MAX_FILE_BYTES = 1 << 20  # a spec or config file: 1 MiB (the shipped KuaiRand spec is about 13 KB)
MAX_DEPTH = 64  # nested mappings / lists
MAX_ALIASES = 1_000  # uses of `*anchor`
MAX_VALUES = 100_000  # scalars, mappings and lists in the document once aliases are expanded


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


def read_yaml_file(path: str, error: type[IssuesError] = SpecError, what: str = "spec file") -> str:
    """The text of the YAML file at `path`; `error` naming the file (and line) if it cannot be read, is larger
    than MAX_FILE_BYTES, holds binary content or is not UTF-8."""
    def refuse(message: str, line: int | None = None) -> IssuesError:
        return error([SpecIssue(path, line, "<file>", message)])

    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise refuse(f"the {what} is {size:,} bytes; expected at most {MAX_FILE_BYTES:,} (a YAML text file)")
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read the {what}: {exc.strerror}") from None
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise refuse(f"binary content (a NUL byte) at line {line}; expected a YAML text file", line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise refuse(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}; save the {what} as UTF-8",
                     line) from None


def load_located_yaml(text: str, file: str, error: type[IssuesError] = SpecError) -> LocatedDocument:
    """Parse ``text``; raise `error` (a SpecError, or a ConfigError for a config file) naming the file and line
    on bad YAML or on input past the bounds of this module."""
    if len(text) > MAX_FILE_BYTES:
        raise error([SpecIssue(file, None, "<yaml>", f"{len(text):,} characters; expected at most "
                                                     f"{MAX_FILE_BYTES:,}")])
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expanded_size(node)
    except _Refused as exc:
        raise error([SpecIssue(file, exc.line, "<yaml>", exc.message)]) from None
    except yaml.YAMLError as exc:
        raise error([SpecIssue(file, _line(getattr(exc, "problem_mark", None)), "<yaml>",
                               f"invalid YAML: {_syntax_problem(exc)}")]) from None
    finally:
        loader.dispose()
    doc = LocatedDocument(file=file, data=None)
    issues: list[SpecIssue] = []
    if node is not None:
        doc.data = _convert(node, (), doc, issues)
    if issues:
        raise error(issues)
    return doc


def _line(mark: yaml.Mark | None) -> int | None:
    return None if mark is None else mark.line + 1


def _syntax_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem, plus where the construct it was reading opened (its `context_mark`)."""
    problem = getattr(exc, "problem", None) or str(exc)
    context, opened = getattr(exc, "context", None), _line(getattr(exc, "context_mark", None))
    if context and opened is not None:
        if context.startswith("while"):  # "while parsing a flow sequence": the construct left open
            return f"{problem} ({context} that opened at line {opened})"
        return f"{context} (from line {opened}), {problem}"  # "expected a single document ..., but found ..."
    return problem


class _Refused(Exception):
    """Input past a bound of this module, at a line."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader's composer with bounds on nesting depth and alias uses (aliases are not expanded here:
    the composed graph shares the anchored node)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.depth = self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(_line(self.peek_event().start_mark),
                               f"more than {MAX_ALIASES:,} alias uses (*anchor); expected fewer")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(_line(self.peek_event().start_mark),
                               f"nesting deeper than {MAX_DEPTH} levels; expected at most {MAX_DEPTH}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a recursive alias, or a document whose values, aliases expanded, number more than MAX_VALUES
    (an alias bomb): counted on the composed graph, each shared node once, before anything is expanded."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _Refused(_line(node.start_mark), "recursive alias: this anchored value contains itself")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        else:
            total = 1
        open_nodes.discard(key)
        if total > MAX_VALUES:
            raise _Refused(_line(node.start_mark), f"this value expands to more than {MAX_VALUES:,} values "
                                                   "through aliases (*anchor); expected fewer (an alias bomb?)")
        sizes[key] = total
        return total

    size(root)


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
