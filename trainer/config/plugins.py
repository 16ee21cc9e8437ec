"""Importing the user's plugins: the modules listed under `plugins:` that register custom components.

An entry is a dotted module name importable from the job's Python path
(``my_team.towers``) or a path to a ``.py`` file, relative to the file that
lists it (``./towers.py``). Files are imported once per process, under a
module name derived from their absolute path, so a model directory's recorded
config (which stores absolute paths) imports the same code in every later
command. What a plugin registers is described in `trainer.registry`.
"""
import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable

Issue = Callable[[tuple, str], None]  # issue(field path, message)


def resolve_plugin(entry: str, base_dir: str) -> str:
    """The entry as it is recorded: a module name as given, a file as an absolute path."""
    if entry.endswith(".py") or os.sep in entry or entry.startswith("."):
        return os.path.normpath(os.path.join(base_dir, entry))
    return entry


def import_plugin(entry: str) -> None:
    """Import one resolved plugin entry (raises what the import raises)."""
    if not entry.endswith(".py"):
        importlib.import_module(entry)
        return
    if not os.path.isfile(entry):
        raise FileNotFoundError(f"no such file: {entry}")
    name = "prerank_plugin_" + hashlib.sha256(entry.encode()).hexdigest()[:12]
    if name in sys.modules:
        return
    module_spec = importlib.util.spec_from_file_location(name, entry)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_plugins(entries: list[str], base_dir: str, issue: Issue) -> list[str]:
    """Resolve and import every entry; each failure is reported as an issue at `plugins[i]`. Returns the
    resolved entries."""
    resolved = []
    for i, entry in enumerate(entries):
        path = resolve_plugin(entry, base_dir)
        try:
            import_plugin(path)
        except Exception as exc:  # noqa: BLE001 (the user's code: any error is reported, with its origin)
            origin = traceback.extract_tb(exc.__traceback__)[-1]
            where = f" ({origin.filename}:{origin.lineno})" if origin and not isinstance(exc, ImportError) else ""
            issue(("plugins", i), f"cannot import plugin {entry!r}: {type(exc).__name__}: {exc}{where}")
        resolved.append(path)
    return resolved
