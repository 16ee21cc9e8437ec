"""Reading and checking the configuration: YAML sections, `--set` overrides, run records, Python objects.

The `model:`, `training:` and `plugins:` sections live in the feature spec
beside the features (or in a separate YAML file given with `--config`); any
key can be overridden from the command line with `--set section.key=value`
(the value is read as YAML). Plugins are imported first, so the components
they register are valid choices in the rest. Every problem is reported at
once, like spec problems: file, line (or `--set`), field path, what was
expected (`trainer.errors.ConfigError`). A `Config` built in Python goes
through the same checks (`validate_config`).
"""
import dataclasses
import inspect
import math
import os
import typing
from collections.abc import Callable
from typing import Any


from trainer.config.checks import check_against_spec
from trainer.config.knobs import MAX_STEPS, Component, Config
from trainer.config.plugins import load_plugins
from trainer.errors import ConfigError, SpecIssue
from trainer.registry import Registry
from trainer.spec.located_yaml import Path, format_path, load_located_yaml, read_yaml_file
from trainer.spec.types import CONFIG_SECTIONS, Spec

Issue = Callable[[Path, str], None]  # issue(field path, message)
COMMAND_LINE = "command line --set"


def load_config(spec: Spec, config_path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read the config sections of the spec file (or of `config_path`), apply `--set` overrides, import the
    plugins and check everything, also against `spec`; ConfigError lists every problem."""
    path = config_path or spec.path
    text = read_yaml_file(path, ConfigError, "config file" if config_path else "spec file")
    doc = load_located_yaml(text, path, error=ConfigError)
    issues: list[SpecIssue] = []
    raw = doc.data if isinstance(doc.data, dict) else {}
    if config_path is not None:  # a config file holds only the config sections (a spec file also holds the spec)
        if doc.data is not None and not isinstance(doc.data, dict):
            issues.append(SpecIssue(path, doc.line_of(()), "<document>",
                                    f"expected a mapping with {' / '.join(s + ':' for s in CONFIG_SECTIONS)}"))
        for key in raw:
            if key not in CONFIG_SECTIONS:
                issues.append(SpecIssue(path, doc.line_of((key,)), format_path((key,)),
                                        f"unknown key; expected one of: {', '.join(CONFIG_SECTIONS)}"))
    raw = {k: raw[k] for k in CONFIG_SECTIONS if k in raw}
    from_command_line = _apply_overrides(raw, overrides, issues)

    def issue(p: Path, message: str) -> None:
        on_cli = any(p[:len(k)] == k for k in from_command_line)
        issues.append(SpecIssue(COMMAND_LINE if on_cli else doc.file, None if on_cli else doc.line_of(p),
                                format_path(p), message))

    config = _read_with_plugins(raw, os.path.dirname(os.path.abspath(path)), issue)
    if not issues:
        check_against_spec(config, spec, issue)
    if issues:
        raise ConfigError(issues)
    return config


def config_from_dict(raw: dict, source: str, spec: Spec | None = None) -> Config:
    """A Config from its `to_dict()` form (e.g. a model directory's run.json), its plugins imported; checked
    against `spec` if given."""
    issues: list[SpecIssue] = []

    def issue(p: Path, message: str) -> None:
        issues.append(SpecIssue(source, None, format_path(p), message))

    config = _read_with_plugins(dict(raw), os.path.dirname(os.path.abspath(source)), issue)
    if not issues and spec is not None:
        check_against_spec(config, spec, issue)
    if issues:
        raise ConfigError(issues)
    return config


def validate_config(config: Config, spec: Spec, source: str = "Config (built in Python)") -> Config:
    """Give a Config built in Python the checks of one read from YAML (types, choices, plugins' components and
    their params, the checks against the spec); returns the config as read back."""
    if not isinstance(config, Config):
        raise ConfigError.single(source, "<config>", f"expected a trainer.Config, got {type(config).__name__}")
    return config_from_dict(config.to_dict(), source, spec)


def _apply_overrides(raw: dict, overrides: list[str], issues: list[SpecIssue]) -> set[Path]:
    """Apply `--set KEY=VALUE` items to `raw` in place; the key paths they set."""
    from_command_line: set[Path] = set()
    for item in overrides:
        key, sep, value = item.partition("=")
        keys = tuple(k.strip() for k in key.strip().split("."))
        if not sep or not all(keys):
            issues.append(SpecIssue(COMMAND_LINE, None, item or "''",
                                    "expected KEY=VALUE with a dotted KEY, e.g. training.max_steps=100"))
            continue
        try:  # the bounded loader: an alias bomb on the command line is refused like one in a file
            parsed = load_located_yaml(value, COMMAND_LINE, error=ConfigError).data
        except ConfigError as exc:
            problem = "; ".join(i.message.removeprefix("invalid YAML: ") for i in exc.issues)
            issues.append(SpecIssue(COMMAND_LINE, None, key.strip(), f"invalid YAML value {value[:80]!r}: {problem}"))
            continue
        target = raw
        for k in keys[:-1]:
            if isinstance(target, dict) and target.get(k) is None:
                target[k] = {}  # absent, or an empty section (`training:` with every line commented out)
            target = target[k] if isinstance(target, dict) else target
        if not isinstance(target, dict):
            issues.append(SpecIssue(COMMAND_LINE, None, key.strip(), f"'{'.'.join(keys[:-1])}' is not a mapping"))
            continue
        target[keys[-1]] = parsed
        from_command_line.add(keys)
    return from_command_line


def _read_with_plugins(raw: dict, base_dir: str, issue: Issue) -> Config:
    """Import the plugins, then read the other sections (whose choices may name what the plugins register)."""
    entries = _value(list[str], raw.pop("plugins", None) or [], ("plugins",), {}, issue)
    plugins = load_plugins(entries, base_dir, issue) if entries is not _BAD else []
    config = _read(Config, raw, (), issue)
    return dataclasses.replace(config, plugins=plugins)


def _read(cls: type, raw: Any, path: Path, issue: Issue) -> Any:
    if raw is None:  # an empty section: every knob at its default
        raw = {}
    if not isinstance(raw, dict):
        issue(path, f"expected a mapping, got {raw!r}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            issue(path + (key,), f"unknown key; expected one of: {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _value(hints[name], raw[name], path + (name,), f.metadata, issue)
    return cls(**{k: v for k, v in values.items() if v is not _BAD})


_BAD = object()


def _value(hint: Any, value: Any, path: Path, meta: typing.Mapping, issue: Issue) -> Any:
    if hint is Component:
        return _component(value, path, meta["registry"], issue)
    if dataclasses.is_dataclass(hint):
        return _read(hint, value, path, issue)
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            issue(path, f"expected a list, got {value!r}")
            return _BAD
        items = [_value(typing.get_args(hint)[0], v, path + (i,), meta, issue) for i, v in enumerate(value)]
        return _BAD if _BAD in items else items
    if origin is dict:
        if not isinstance(value, dict):
            issue(path, f"expected a mapping, got {value!r}")
            return _BAD
        out = {str(k): _value(typing.get_args(hint)[1], v, path + (k,), {}, issue) for k, v in value.items()}
        return _BAD if _BAD in out.values() else out
    ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        expected = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(hint, str(hint))
        issue(path, f"expected {expected}{' or null' if optional else ''}, got {value!r}")
        return _BAD
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        issue(path, f"expected one of {', '.join(choices)}, got {value!r}")
        return _BAD
    if hint in (int, float) and not _within(value, hint, meta):
        issue(path, f"expected {_bounds(hint, meta, value)}, got {value!r}")
        return _BAD
    return value


def _within(value: float, hint: type, meta: typing.Mapping) -> bool:
    """Whether a number is within its knob's bounds (see `trainer.config.knobs.knob`)."""
    above, maximum = meta.get("above"), _maximum(hint, meta)
    low_ok = value > above if above is not None else value >= meta.get("minimum", 0)
    return low_ok and (maximum is None or value <= maximum) and (hint is int or math.isfinite(value))


def _maximum(hint: type, meta: typing.Mapping) -> float | None:
    maximum = meta.get("maximum")
    return MAX_STEPS if maximum is None and hint is int else maximum


def _bounds(hint: type, meta: typing.Mapping, value: float) -> str:
    """`a number > 0`, `an integer in [1, 16384]`, `an integer >= 1`."""
    what = "an integer" if hint is int else "a number"
    above, maximum = meta.get("above"), meta.get("maximum")
    if maximum is None and hint is int and value > MAX_STEPS:
        maximum = MAX_STEPS  # the implicit bound of every integer knob, named only when it is the one exceeded
    if above is not None:
        return f"{what} > {above}" + (f" and <= {maximum}" if maximum is not None else "")
    minimum = meta.get("minimum", 0)
    return f"{what} in [{minimum}, {maximum}]" if maximum is not None else f"{what} >= {minimum}"


def _component(value: Any, path: Path, registry: Registry, issue: Issue) -> Any:
    """A Component from `name` or `{name: ..., params: {...}}`: the name registered, the params its own."""
    if isinstance(value, Component):
        value = {"name": value.name, "params": value.params}
    if isinstance(value, str):
        name, params, params_path = value, {}, path
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        unknown = sorted(set(value) - {"name", "params"})
        if unknown:
            issue(path + (unknown[0],), "unknown key; expected name and (optionally) params")
            return _BAD
        name, params, params_path = value["name"], value.get("params") or {}, path + ("params",)
        if not isinstance(params, dict):
            issue(params_path, f"expected a mapping of keyword arguments, got {params!r}")
            return _BAD
    else:
        issue(path, f"expected a {registry.kind} name or {{name: ..., params: {{...}}}}, got {value!r}")
        return _BAD
    if name not in registry:
        issue(path, f"expected one of {', '.join(registry.names())}, got {name!r} (a custom {registry.kind} must be "
                    "registered by a module listed under plugins:)")
        return _BAD
    if params and registry.is_builtin(name):
        issue(params_path, f"the built-in {registry.kind} '{name}' takes no params (its knobs are the config's own)")
        return _BAD
    if params and not _params_fit(registry, name, params, params_path, issue):
        return _BAD
    return Component(name, dict(params))


def _params_fit(registry: Registry, name: str, params: dict, path: Path, issue: Issue) -> bool:
    """Whether `params` are keyword arguments the registered factory takes (besides what prerank passes it)."""
    try:
        signature = inspect.signature(registry.factory(name))
    except (TypeError, ValueError):  # no introspectable signature: the factory checks its own arguments
        return True
    accepted = [p.name for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in registry.context]
    for key in params:
        if key not in accepted:
            issue(path + (key,), f"{registry.kind} '{name}' takes no argument {key!r}; its params: "
                                 f"{', '.join(accepted) or 'none'}")
            return False
    return True
