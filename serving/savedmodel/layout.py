"""An export base on disk: TF Serving's integer version directories, and what prerank records in each.

    BASE/
      3/                           a complete version (TF Serving ignores names that are not integers)
        saved_model.pb, variables/
        assets.extra/
          tf_serving_warmup_requests   one PredictionLog per signature (`warmup`)
          prerank_export.json          where the export came from: checkpoint, spec, pruning (`export`)
      .tmp-4-<host>-<pid>/         a version being written (`trainer.files`)
"""
import json
import os

from trainer.errors import ExportError

MANIFEST = os.path.join("assets.extra", "prerank_export.json")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODEL_NAME = "prerank"  # the TF Serving model name in serving/tf_serving/models.config


def versions(base_dir: str) -> list[int]:
    """The complete versions under `base_dir`, ascending."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(n) for n in os.listdir(base_dir) if n.isdigit() and os.path.isdir(os.path.join(base_dir, n)))


def resolve_version_dir(path: str) -> str:
    """`path` itself if it is a SavedModel, else its newest integer version."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise ExportError(f"{path}: neither a SavedModel (no saved_model.pb) nor a base directory with "
                          "integer versions")
    return os.path.join(path, str(found[-1]))


def read_manifest(export_dir: str) -> dict:
    """The `prerank_export.json` of an export version."""
    path = os.path.join(export_dir, MANIFEST)
    if not os.path.exists(path):
        raise ExportError(f"{export_dir}: no {MANIFEST}; was it written by `prerank export`?")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def directory_bytes(path: str) -> int:
    """Bytes of every file under `path`."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
