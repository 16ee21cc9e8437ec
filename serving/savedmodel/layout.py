"""An export base on disk: TF Serving's integer version directories, and what prerank records in each.

    BASE/
      3/                           a complete version (TF Serving ignores names that are not integers)
        saved_model.pb, variables/
        assets.extra/
          tf_serving_warmup_requests   one PredictionLog per signature (`warmup`)
          prerank_export.json          where the export came from: checkpoint, spec, pruning (`export`)
      .tmp-4-<host>-<pid>/         a version being written (`trainer.files`)
"""
import hashlib
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


EXPECTED = "an export version (a directory with saved_model.pb and variables/) or a base directory of integer versions"
MANIFEST_MAX_BYTES = 1 << 20  # `prerank export` writes a few KB
# what prerank reads from a manifest: key -> its JSON type(s)
MANIFEST_FIELDS = {"version": int, "spec": str, "spec_fingerprint": str, "model_dir": str, "checkpoint": str,
                   "pruned": bool, "signatures": list, "warmup_data": (str, list)}


def resolve_version_dir(path: str) -> str:
    """`path` itself if it is a SavedModel, else its newest integer version; an ExportError naming `path`
    and what was expected if it is neither (or does not exist)."""
    if not os.path.exists(path):
        raise ExportError(f"{path}: no such file or directory; expected {EXPECTED}")
    if not os.path.isdir(path):
        raise ExportError(f"{path}: a file, not a directory; expected {EXPECTED}")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise ExportError(f"{path}: neither a SavedModel (no saved_model.pb) nor a base directory with "
                          "integer versions")
    return os.path.join(path, str(found[-1]))


def read_manifest(export_dir: str) -> dict:
    """The `prerank_export.json` of an export version, checked: an ExportError naming the file if it is
    missing, unreadable, not JSON, or lacks a field prerank reads (or holds one of another type)."""
    path = os.path.join(export_dir, MANIFEST)
    if not os.path.exists(path):
        raise ExportError(f"{export_dir}: no {MANIFEST}; was it written by `prerank export`?")
    what = "expected the JSON manifest `prerank export` writes"
    try:
        if os.path.getsize(path) > MANIFEST_MAX_BYTES:
            raise ExportError(f"{path}: {os.path.getsize(path):,} bytes, more than a manifest's "
                              f"{MANIFEST_MAX_BYTES:,}; {what}")
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: json.JSONDecodeError
        raise ExportError(f"{path}: unreadable ({e}); {what}") from None
    if not isinstance(manifest, dict):
        raise ExportError(f"{path}: a JSON {type(manifest).__name__}; {what} (an object)")
    problems = []
    for key, kind in MANIFEST_FIELDS.items():
        value = manifest.get(key)
        if key not in manifest:
            problems.append(f"no '{key}'")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"'{key}' is {json.dumps(value)[:40]}")
    if problems:
        raise ExportError(f"{path}: {', '.join(problems)}; {what} (with {', '.join(MANIFEST_FIELDS)})")
    name = os.path.basename(os.path.normpath(export_dir))
    if name.isdigit() and int(name) != manifest["version"]:
        raise ExportError(f"{path}: records version {manifest['version']} but lies in version directory "
                          f"{name}, which TF Serving serves as version {name}; was the directory renamed or copied?")
    return manifest


def directory_bytes(path: str) -> int:
    """Bytes of every file under `path`."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


FINGERPRINT_CHARS = 20  # hex digits of a SHA-256 kept: 80 bits


def checkpoint_digest(checkpoint: str) -> str:
    """SHA-256 of a checkpoint's files (`ckpt-N.index` and its data shards), in name order: the weights
    themselves, whatever directory they lie in."""
    folder, prefix = os.path.split(checkpoint)
    names = sorted(n for n in os.listdir(folder) if n == f"{prefix}.index" or n.startswith(f"{prefix}.data-"))
    if not names:
        raise ExportError(f"{checkpoint}: no checkpoint files (.index, .data-*) to fingerprint")
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        with open(os.path.join(folder, name), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def export_fingerprint(checkpoint_sha256: str, spec_fingerprint: str, options: dict) -> str:
    """The identity of an export's item vectors: the checkpoint's content, the spec and the export options
    (pruned, student-only, ...). Two exports share it only when they compute the same vectors the same way;
    item stores key vectors by it, so one export's vectors are never served with another's."""
    text = json.dumps({"checkpoint": checkpoint_sha256, "spec": spec_fingerprint, "options": options},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]


def manifest_fingerprint(export_dir: str, manifest: dict) -> str:
    """The fingerprint a manifest records; an ExportError for an export written before fingerprints."""
    value = manifest.get("fingerprint")
    if not isinstance(value, str) or not value:
        raise ExportError(f"{os.path.join(export_dir, MANIFEST)}: no 'fingerprint' (an export of an older prerank); "
                          "export the model again: item vectors are keyed by the export's fingerprint")
    return value
