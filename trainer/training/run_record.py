"""MODEL_DIR/run.json: the spec and config a model directory was trained with.

Written when a model directory is first used; checked on every later start, so
resuming with an edited spec or model config is refused with the list of what
changed (knobs that only change how long or how visibly the job runs may
differ: `RESUMABLE_KEYS`). A directory without a checkpoint holds nothing
trained with its record (the run failed before its first checkpoint, e.g. on a
bad learning rate or out of memory): a changed spec or config replaces the
record, with a note. A run.json that is not a run record is a ModelDirError
naming it. A warm-started directory's run.json also holds the warm start's record
(`warm_start`: where it started from, what it carried; `trainer.training.warm_start`).
"""
import json
import os
from collections.abc import Callable

from trainer.config.knobs import Config
from trainer.config.loader import config_from_dict
from trainer.errors import ConfigError, ModelDirError
from trainer.files import read_json, write_json_atomic
from trainer.spec.located_yaml import load_located_yaml
from trainer.spec.types import CONFIG_SECTIONS, Spec
from trainer.training.checkpoints import latest_checkpoint
from trainer.training.layout import RUN_FILE, checkpoint_dir

# Keys that may differ when a model directory is resumed: they change how long or how visibly the
# job runs, not what is trained.
RESUMABLE_KEYS = ("training.epochs", "training.warm_start_epochs", "training.max_steps", "training.log_every", "training.checkpoint_every",
                  "training.keep_checkpoints", "training.eval_every", "training.eval_batches", "training.progress",
                  "training.max_table_gb", "training.steps_per_call", "training.min_shard_mb",
                  "training.cluster_grace_seconds")


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


def read_run_record(path: str) -> dict:
    """The run record at `path`: {"spec": ..., "config": ...}; ModelDirError naming the file if it is not one."""
    raw = read_json(path, ModelDirError, "`prerank train`")
    problem = _not_an_object(raw)
    if problem:
        where, got = problem
        raise ModelDirError(f"{path}: not a prerank run record: expected an object at {where}, got "
                            f"{json.dumps(got)[:60]} (a run record is {{\"spec\": {{\"features\": ..., \"labels\": "
                            "...}, \"config\": {\"model\": ..., \"training\": ...}}); restore the run.json "
                            "`prerank train` wrote, or use a new --model-dir")
    return raw


def _not_an_object(raw) -> tuple[str, object] | None:
    """The first place where a run record holds something else than an object: (its key path, its value)."""
    if not isinstance(raw, dict):
        return "the top level", raw
    for section, keys in (("spec", ("features", "labels")), ("config", ("model", "training"))):
        value = raw.get(section)
        if not isinstance(value, dict):
            return f"'{section}'", value
        for key in keys:
            if not isinstance(value.get(key), dict):
                return f"'{section}.{key}'", value.get(key)
    return None


def check_or_record(model_dir: str, spec: Spec, config: Config, record: bool = True,
                    log: Callable[[str], None] = print) -> bool:
    """Record the run in a new model directory; in one with a checkpoint, refuse changes. True if it holds a
    checkpoint (the run resumes).

    Args:
      model_dir: the model directory.
      spec: the spec the run uses.
      config: the config the run uses.
      record: False (a multi-worker job's non-chief workers, commands that only read): check only, never write.
      log: where the note of a replaced record goes.
    Raises ConfigError listing the changes when a directory with a checkpoint was trained with another spec or
    config; ModelDirError when its run.json is not a run record, or is missing beside checkpoints.
    """
    path = os.path.join(model_dir, RUN_FILE)
    current = {"spec": spec_content(spec), "config": config.to_dict()}
    trained = latest_checkpoint(model_dir) is not None
    if os.path.exists(path):
        saved = read_run_record(path)
        saved_config = with_defaults(saved["config"], Config().to_dict())  # knobs added since: their defaults
        changes = [f"spec: {c}" for c in config_changes(saved["spec"], current["spec"])] \
            + [f"config: {c}" for c in config_changes(saved_config, current["config"])]
        if not changes:
            return trained
        if trained:
            raise ConfigError.single(path, "", "this model directory was trained with another spec or config; "
                                     "resume with the same ones or use a new --model-dir. Changed:\n    "
                                     + "\n    ".join(changes))
        if not record:
            return False
        log(f"note: {path} recorded another spec or config, but no checkpoint was written with it (that run "
            "failed before its first one): recording this run's instead. Changed:\n    " + "\n    ".join(changes))
    elif trained:
        raise ModelDirError(f"{path}: missing, but {checkpoint_dir(model_dir)} holds checkpoints: the spec and "
                            "config they were trained with are unknown; restore run.json or use a new --model-dir")
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
    return config_from_dict(read_run_record(path)["config"], path)


WARM_START_KEY = "warm_start"  # run.json: where a warm-started directory started from, and what it carried


def record_warm_start(model_dir: str, record: dict) -> None:
    """Add (or replace) the warm-start record of MODEL_DIR/run.json (`trainer.training.warm_start`): at least
    {"from": the previous model directory, "step": the step the run counts from}; after the carry, what was
    carried, what started fresh and why, what was dropped."""
    path = os.path.join(model_dir, RUN_FILE)
    write_json_atomic(path, {**read_run_record(path), WARM_START_KEY: record})


def warm_start_record(model_dir: str) -> dict | None:
    """The warm-start record of MODEL_DIR/run.json; None for a directory that was not warm-started (or has no
    run.json yet)."""
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    record = read_run_record(path).get(WARM_START_KEY)
    if record is not None and not (isinstance(record, dict) and isinstance(record.get("step"), int)
                                   and isinstance(record.get("from"), str)):
        raise ModelDirError(f"{path}: '{WARM_START_KEY}' is not a warm-start record (an object with \"from\" and an "
                            f"integer \"step\"), got {json.dumps(record)[:80]}; restore the run.json `prerank "
                            "train` wrote")
    return record
