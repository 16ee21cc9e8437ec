"""MODEL_DIR/run.json: the spec and config a model directory was trained with.

Written when a model directory is first used; checked on every later start, so
resuming with an edited spec or model config is refused with the list of what
changed (knobs that only change how long or how visibly the job runs may
differ, see trainer.config.RESUMABLE_KEYS).
"""
import json
import os

from trainer.analyze import atomic_write
from trainer.config import Config, config_changes
from trainer.errors import DataError
from trainer.located_yaml import load_located_yaml
from trainer.spec import CONFIG_SECTIONS, Spec

RUN_FILE = "run.json"


def spec_content(spec: Spec) -> dict:
    """The spec file's features, labels and data sections as plain data, features and labels keyed by name."""
    with open(spec.path, encoding="utf-8") as fh:
        data = load_located_yaml(fh.read(), spec.path).data
    out = {k: v for k, v in data.items() if k not in CONFIG_SECTIONS}
    for section in ("features", "labels"):
        out[section] = {item.get("name", str(i)): item for i, item in enumerate(out.get(section) or [])}
    return out


def check_or_record(model_dir: str, spec: Spec, config: Config, record: bool = True) -> bool:
    """Record the run in a new model directory; in an existing one, refuse changes. True if it existed.

    `record` False (a multi-worker job's non-chief workers): check only, never write.
    """
    path = os.path.join(model_dir, RUN_FILE)
    current = {"spec": spec_content(spec), "config": config.to_dict()}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        saved_config = with_defaults(saved["config"], Config().to_dict())  # knobs added since: their defaults
        changes = [f"spec: {c}" for c in config_changes(saved["spec"], current["spec"])] \
            + [f"config: {c}" for c in config_changes(saved_config, current["config"])]
        if changes:
            raise DataError(f"{model_dir} was trained with another spec or config; resume with the same ones or "
                            "use a new --model-dir. Changed:\n  " + "\n  ".join(changes))
        return True
    if record:
        os.makedirs(model_dir, exist_ok=True)
        write_json_atomic(path, current)
    return False


def with_defaults(saved: dict, defaults: dict) -> dict:
    """`saved` plus the keys of `defaults` it lacks (recursively)."""
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and value and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def write_json_atomic(path: str, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str))
