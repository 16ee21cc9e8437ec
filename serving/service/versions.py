"""Which export version the service scores with: the newest under the export base whose item vectors are
in the store, loaded, warmed up and swapped in whole.

`Versions.poll` (run in a worker thread every few seconds) looks for a version newer than the served one.
A version whose vectors are not in the store yet waits (`pending`, with the reason); one that fails to load
is reported (`failed`) and not retried until its manifest changes. A loaded version has replayed its
warmup requests and computed a user vector before it is returned; the event loop then swaps it in with
one assignment, so a request is scored wholly by the old version or wholly by the new one, and requests
in flight finish on the version they started with.
"""
import os
import threading
from collections.abc import Callable

from serving.savedmodel.layout import MANIFEST, manifest_fingerprint, read_manifest, resolve_version_dir, versions
from serving.service.model import ServedModel
from serving.service.vectors import vectors_ready
from trainer.errors import PrerankError


class Versions:
    """The versions of one export base (or one fixed version directory).

    Args:
      export: an export base (versions are watched) or one version directory (served as is).
      store: the item store (directory or redis://host:port/db).
      cache_items: the hot cache's size per served version, in items (0: no cache).
      onnx_base: a directory of ONNX exports named by version (`prerank onnx --out ONNX_BASE/<version>`);
        version v's user tower is taken from ONNX_BASE/v when it exists and matches.
      log: where load and swap messages go.
    """

    def __init__(self, export: str, store: str, cache_items: int, onnx_base: str | None = None,
                 log: Callable[[str], None] = print):
        self.fixed = os.path.exists(os.path.join(export, "saved_model.pb"))
        self.export, self.store, self.cache_items, self.onnx_base, self.log = export, store, cache_items, onnx_base, log
        self.current: ServedModel | None = None
        self.pending: dict | None = None  # the newest version waiting, and why
        self.failed: dict[int, tuple[float, str]] = {}  # version -> (manifest mtime, error)
        self.lock = threading.Lock()  # one poll at a time

    def version_dirs(self) -> list[str]:
        """Candidate version directories, newest first."""
        if self.fixed:
            return [resolve_version_dir(self.export)]
        return [os.path.join(self.export, str(v)) for v in reversed(versions(self.export))]

    def poll(self) -> ServedModel | None:
        """A newer version, loaded and warmed up, if one is ready; None otherwise (see `pending`)."""
        with self.lock:
            served = self.current.version if self.current else -1
            waiting = None
            for path in self.version_dirs():
                version = int(os.path.basename(os.path.normpath(path))) if not self.fixed else None
                if version is not None and version <= served:
                    break
                if self.fixed and self.current is not None:
                    return None
                stamp = _mtime(os.path.join(path, MANIFEST))
                if version in self.failed and self.failed[version][0] == stamp:
                    continue
                try:
                    manifest = read_manifest(path)
                    fingerprint = manifest_fingerprint(path, manifest)
                    reason = vectors_ready(self.store, fingerprint)
                    if reason:
                        waiting = waiting or {"version": manifest["version"], "export": path, "reason": reason}
                        continue
                    onnx = os.path.join(self.onnx_base, str(manifest["version"])) if self.onnx_base else None
                    model = ServedModel.load(path, self.store, self.cache_items,
                                             onnx if onnx and os.path.isdir(onnx) else None, self.log)
                except PrerankError as e:
                    self.failed[version] = (stamp, str(e))
                    self.log(f"version {version} not served: {e}")
                    continue
                self.pending = waiting
                return model
            self.pending = waiting
            return None

    def swap(self, model: ServedModel) -> ServedModel | None:
        """Serve `model` from now on; returns the version it replaces."""
        old, self.current = self.current, model
        self.log(f"serving model version {model.version} ({model.fingerprint})"
                 + (f", replacing version {old.version}" if old else ""))
        return old


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0
