"""MODEL_DIR/run.json: the spec and config a model directory was trained with.

Written when a model directory is first used; checked on every later start, so
resuming with an edited spec or model config is refused with the list of what
changed (knobs that only change how long or how visibly the job runs may
differ: `RESUMABLE_KEYS`).
"""
import json
import os

from trainer.config.knobs import Config
from trainer.config.loader import config_from_dict
from trainer.errors import ConfigError, ModelDirError
from trainer.files import write_json_atomic
from trainer.spec.located_yaml import load_located_yaml
from trainer.spec.types import CONFIG_SECTIONS, Spec
from trainer.training.layout import RUN_FILE

# Keys that may differ when a model directory is resumed: they change how long or how visibly the
# job runs, not what is trained.
RESUMABLE_KEYS = ("training.epochs", "training.max_steps", "training.log_every", "training.checkpoint_every",
                  "training.keep_checkpoints", "training.eval_every", "training.eval_batches", "training.progress",
                  "training.max_table_gb")


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'key: saved -> current' for every key that differs, except the resumable ones."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and a and b:
            out += config_changes(a, b, name + ".")
        elif a != b and name not in RESUMABLE_KEYS:
            out.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


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
            raise ConfigError.single(path, "", "this model directory was trained with another spec or config; "
                                     "resume with the same ones or use a new --model-dir. Changed:\n    "
                                     + "\n    ".join(changes))
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


def recorded_config(model_dir: str) -> Config:
    """The config a model directory was trained with (its plugins imported)."""
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.exists(path):
        raise ModelDirError(f"{model_dir}: not a trained model directory (no {RUN_FILE}); run `prerank train` first")
    with open(path, encoding="utf-8") as fh:
        return config_from_dict(json.load(fh)["config"], path)
