"""Opening an export for use: its version directory, manifest and SavedModel, or an ExportError naming the
file that is missing, unreadable or foreign and what was expected (never TensorFlow's or protobuf's own
exception). `verify-export`, `embed-items` and the serving benchmark open exports through here.
"""
import os
from dataclasses import dataclass

import tensorflow as tf

from serving.savedmodel.layout import read_manifest, resolve_version_dir
from trainer.data.records import clean_message
from trainer.errors import ExportError
from trainer.spec.loader import load_spec
from trainer.spec.types import Spec


@dataclass
class OpenedExport:
    """An export version, read: `manifest` checked (`layout.read_manifest`), `loaded` the SavedModel with
    the signatures the manifest lists."""

    path: str  # the version directory
    manifest: dict
    loaded: object  # what tf.saved_model.load returns


def _unreadable(export_dir: str, exc: BaseException) -> str:
    """The file of a SavedModel a load error is about, and why."""
    text = clean_message(str(exc)) if str(exc).strip() else type(exc).__name__
    name = "variables/" if "variables" in text or isinstance(exc, IndexError) else "saved_model.pb"
    return f"{os.path.join(export_dir, name)}: not a readable SavedModel ({type(exc).__name__}: {text})"


def load_saved_model(export_dir: str):
    """`tf.saved_model.load(export_dir)`; an ExportError naming saved_model.pb or variables/ if either is
    foreign or damaged.

    Whatever the loader raises on a damaged file is caught here (OSError for a protobuf that does not parse,
    ValueError for an empty one, IndexError for a truncated variables shard, TensorFlow's OpError for a
    garbled index, ...): this is the one place an export's files meet TensorFlow's reader."""
    try:
        return tf.saved_model.load(export_dir)
    except Exception as e:  # noqa: BLE001 -- any failure of the reader is a damaged or foreign file
        raise ExportError(f"{_unreadable(export_dir, e)}; expected the SavedModel `prerank export` "
                          "writes") from None


def open_export(path: str) -> OpenedExport:
    """The export at `path` (a version directory, or a base directory: its newest version), read and
    checked: the manifest first (cheap, and it says what the SavedModel must hold), then the SavedModel,
    whose signatures must be the manifest's."""
    export_dir = resolve_version_dir(path)
    manifest = read_manifest(export_dir)
    loaded = load_saved_model(export_dir)
    have, listed = sorted(loaded.signatures), sorted(manifest["signatures"])
    if have != listed:
        raise ExportError(f"{os.path.join(export_dir, 'saved_model.pb')}: signatures {have}, but its manifest "
                          f"lists {listed}; not the SavedModel `prerank export` wrote there")
    return OpenedExport(export_dir, manifest, loaded)


def export_spec(manifest: dict) -> Spec:
    """The spec an export was made with (the file its manifest names); an ExportError if the file changed since
    (its fingerprint differs from the one recorded)."""
    spec = load_spec(manifest["spec"])
    if spec.fingerprint != manifest["spec_fingerprint"]:
        raise ExportError(f"{manifest['spec']} changed since the export (fingerprint {spec.fingerprint}, "
                          f"export {manifest['spec_fingerprint']})")
    return spec
