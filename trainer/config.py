"""The model and training configuration: the spec's `model:` and `training:` sections.

Every knob is declared once, below, with its default and a one-line doc.
The sections live in the feature spec beside the features (or in a separate
YAML file given with `--config`), and any key can be overridden from the
command line with `--set section.key=value` (the value is read as YAML).
Problems are reported like spec problems: file, line, field path, what was
expected.
"""
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainer.errors import SpecError, SpecIssue
from trainer.located_yaml import Path, format_path, load_located_yaml
from trainer.spec import Spec
from trainer.target_attention import attention_pairs


def knob(default: Any, doc: str, choices: tuple | None = None) -> Any:
    """Declare a config field: its default, what it does, and (optionally) its allowed values."""
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SenetConfig:
    enabled: bool = knob(False, "re-weight each tower's feature fields with a squeeze-excitation block")
    reduction: int = knob(4, "excitation bottleneck: fields / reduction hidden units")


@dataclass(frozen=True)
class DualAugmentedConfig:
    enabled: bool = knob(False, "add a learned augmentation vector per user id and per item id (dual augmented "
                                "two-tower); each learns the other tower's output on positives")
    user_feature: str | None = knob(None, "categorical user feature whose ids own the user vectors "
                                          "(default: the first categorical user feature)")
    item_feature: str | None = knob(None, "categorical item feature whose ids own the item vectors "
                                          "(default: the first categorical item feature)")
    mimic_weight: float = knob(1.0, "weight of the mimic loss (augmentation vector vs stop-gradient of the "
                                    "other tower's output, on positives)")


@dataclass(frozen=True)
class StudentConfig:
    user_tower: list[int] = knob([512, 128, 64, 32], "user tower layer sizes; the last is the vector size")
    item_tower: list[int] = knob([512, 128, 64, 32], "item tower layer sizes; the last must equal the user's")
    towers: list[str] = knob(["mlp"], "parallel towers per side, fused with learned weights: mlp, dcn, fm",
                             choices=("mlp", "dcn", "fm"))
    dcn_layers: int = knob(2, "cross layers of the dcn tower")
    fm_dim: int = knob(16, "factor size of the fm tower")
    senet: SenetConfig = knob(SenetConfig(), "squeeze-excitation field re-weighting")
    similarity: str = knob("dot", "how the two vectors make a score", choices=("dot", "cosine", "multi_head"))
    temperature: float = knob(0.1, "cosine: the score is cosine / temperature")
    heads: int = knob(4, "multi_head: the vectors are split into this many sub-vectors")
    dual_augmented: DualAugmentedConfig = knob(DualAugmentedConfig(), "dual augmented vectors")
    task: str | None = knob(None, "the label the student learns (default: the spec's first binary label)")


@dataclass(frozen=True)
class TeacherConfig:
    experts: int = knob(4, "MMoE experts")
    expert_layers: list[int] = knob([256, 128], "layer sizes of each expert")
    task_tower: list[int] = knob([64], "layer sizes of each task's tower above its gate")
    dropout: float = knob(0.0, "dropout rate after each expert layer, in training")
    regression_loss: str = knob("mse", "regression tasks: mse on the (transformed) target, or weighted_logistic "
                                       "(odds estimate the target)", choices=("mse", "weighted_logistic"))
    fused_score: str = knob("weighted_sum", "how task predictions make the ranking score the student learns",
                            choices=("weighted_sum", "product"))
    fused_weights: dict[str, float] = knob({}, "task -> weight in the fused score (default: the student's task, 1)")
    target_attention: bool = knob(False, "also pool each user history sequence with weights from the candidate "
                                         "(DIN-style), for every item feature sharing its table")
    attention_hidden: int = knob(32, "hidden units of the target attention's scoring MLP")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = knob("linear", "how lambda grows", choices=("constant", "linear", "sigmoid"))
    max: float = knob(1.0, "lambda's final value")
    start_step: int = knob(0, "lambda is 0 before this step")
    ramp_steps: int = knob(1000, "linear / sigmoid: steps from start_step to (about) max")


@dataclass(frozen=True)
class CascadeConfig:
    enabled: bool = knob(False, "the student learns the teacher's top-N of each group instead of the labels")
    top_n: int = knob(1, "teacher's top-N candidates of a group become the student's positives")
    unexposed: int = knob(0, "items sampled per group from the item table (never shown; teacher labels only)")


@dataclass(frozen=True)
class DistillConfig:
    loss: str = knob("cross_entropy", "mse (logits), cross_entropy (teacher probability at a temperature) or "
                                      "pairwise (teacher's order within a group)",
                     choices=("mse", "cross_entropy", "pairwise"))
    temperature: float = knob(1.0, "cross_entropy: both logits are divided by this")
    schedule: ScheduleConfig = knob(ScheduleConfig(), "lambda(step), the distillation weight")
    drop_label_loss_after: int | None = knob(None, "from this step on the student learns from the teacher only")
    cascade: CascadeConfig = knob(CascadeConfig(), "cascade mode")


@dataclass(frozen=True)
class FtrlConfig:
    learning_rate: float = knob(0.05, "FTRL learning rate (embedding tables)")
    l1: float = knob(0.0, "L1 strength: drives rows to exactly zero (pruned at export)")
    l2: float = knob(0.0, "L2 strength")
    initial_accumulator: float = knob(0.001, "FTRL initial accumulator value (large values slow early learning)")


@dataclass(frozen=True)
class AdagradConfig:
    learning_rate: float = knob(0.05, "AdaGrad learning rate (every non-embedding variable)")
    initial_accumulator: float = knob(0.001, "AdaGrad initial accumulator value (large values slow early learning)")


@dataclass(frozen=True)
class ModelConfig:
    mode: str = knob("joint", "joint: student and teacher together; teacher: the teacher alone; student: a "
                              "student distilled from a saved teacher (training.teacher_dir)",
                     choices=("joint", "teacher", "student"))
    student: StudentConfig = knob(StudentConfig(), "the two-tower student")
    teacher: TeacherConfig = knob(TeacherConfig(), "the MMoE teacher")
    distill: DistillConfig = knob(DistillConfig(), "distillation from teacher to student")
    ftrl: FtrlConfig = knob(FtrlConfig(), "optimizer of the embedding tables")
    adagrad: AdagradConfig = knob(AdagradConfig(), "optimizer of the dense layers")


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = knob(1024, "examples per step (global, across workers)")
    epochs: int = knob(1, "passes over the training data")
    max_steps: int | None = knob(None, "stop after this many steps (default: when the epochs end)")
    shuffle_buffer: int = knob(10_000, "examples in the shuffle buffer (0: read in file order)")
    seed: int = knob(0, "seed of initialisation and shuffling")
    deterministic: bool = knob(False, "read and shuffle the training data in a fixed, seeded order (every epoch "
                                      "alike), so a run, and a resumed run, can be reproduced exactly; slower")
    log_every: int = knob(50, "steps between TensorBoard scalars / history lines")
    checkpoint_every: int = knob(500, "steps between checkpoints")
    keep_checkpoints: int = knob(3, "checkpoints kept")
    eval_every: int = knob(0, "steps between evaluations on the validation data (0: only at the end)")
    eval_batches: int | None = knob(None, "batches read per evaluation (default: all)")
    teacher_dir: str | None = knob(None, "mode student: model directory of the trained teacher")
    progress: bool = knob(True, "show a progress bar")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = knob(ModelConfig(), "model, losses and optimizers")
    training: TrainingConfig = knob(TrainingConfig(), "the training loop")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Keys that may differ when a model directory is resumed: they change how long or how visibly the
# job runs, not what is trained.
RESUMABLE_KEYS = ("training.epochs", "training.max_steps", "training.log_every", "training.checkpoint_every",
                  "training.keep_checkpoints", "training.eval_every", "training.eval_batches", "training.progress")


def load_config(spec: Spec, config_path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read `model:` / `training:` from the spec file (or `config_path`) and apply `--set` overrides."""
    path = config_path or spec.path
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise SpecError([SpecIssue(path, None, "<file>", f"cannot read the config file: {exc.strerror}")]) from None
    doc = load_located_yaml(text, path)
    issues: list[SpecIssue] = []
    sections = ("model", "training")
    raw = doc.data if isinstance(doc.data, dict) else {}
    if config_path is not None:  # a config file holds only the two sections (a spec file also holds the spec)
        if doc.data is not None and not isinstance(doc.data, dict):
            issues.append(SpecIssue(path, doc.line_of(()), "<document>", "expected a mapping with model: / training:"))
        for key in raw:
            if key not in sections:
                issues.append(SpecIssue(path, doc.line_of((key,)), format_path((key,)),
                                        f"unknown key; expected one of: {', '.join(sections)}"))
    raw = {k: raw[k] for k in sections if k in raw}
    from_command_line: set[Path] = set()
    for item in overrides:
        key, sep, value = item.partition("=")
        keys = tuple(k.strip() for k in key.strip().split("."))
        if not sep or not all(keys):
            issues.append(SpecIssue("command line --set", None, item or "''",
                                    "expected KEY=VALUE with a dotted KEY, e.g. training.max_steps=100"))
            continue
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            issues.append(SpecIssue("command line --set", None, key.strip(),
                                    f"invalid YAML value {value!r}: {problem}"))
            continue
        target = raw
        for k in keys[:-1]:
            if isinstance(target, dict) and target.get(k) is None:
                target[k] = {}  # absent, or an empty section (`training:` with every line commented out)
            target = target[k] if isinstance(target, dict) else target
        if not isinstance(target, dict):
            issues.append(SpecIssue("command line --set", None, key.strip(),
                                    f"'{'.'.join(keys[:-1])}' is not a mapping"))
            continue
        target[keys[-1]] = parsed
        from_command_line.add(keys)

    def issue(p: Path, message: str) -> None:
        on_cli = any(p[:len(k)] == k for k in from_command_line)
        issues.append(SpecIssue("command line --set" if on_cli else doc.file, None if on_cli else doc.line_of(p),
                                format_path(p), message))

    config = _read(Config, raw, (), issue)
    if not issues:
        _check_against_spec(config, spec, issue)
    if issues:
        raise SpecError(issues)
    return config


def _read(cls: type, raw: Any, path: Path, issue) -> Any:
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
            values[name] = _value(hints[name], raw[name], path + (name,), f.metadata.get("choices"), issue)
    return cls(**{k: v for k, v in values.items() if v is not _BAD})


_BAD = object()


def _value(hint: Any, value: Any, path: Path, choices: tuple | None, issue) -> Any:
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
        items = [_value(typing.get_args(hint)[0], v, path + (i,), choices, issue) for i, v in enumerate(value)]
        return _BAD if _BAD in items else items
    if origin is dict:
        if not isinstance(value, dict):
            issue(path, f"expected a mapping, got {value!r}")
            return _BAD
        out = {str(k): _value(typing.get_args(hint)[1], v, path + (k,), None, issue) for k, v in value.items()}
        return _BAD if _BAD in out.values() else out
    ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        expected = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(hint, str(hint))
        issue(path, f"expected {expected}{' or null' if optional else ''}, got {value!r}")
        return _BAD
    if choices is not None and value not in choices:
        issue(path, f"expected one of {', '.join(choices)}, got {value!r}")
        return _BAD
    if hint in (int, float) and value < 0:
        issue(path, f"expected a value >= 0, got {value!r}")
        return _BAD
    return value


def _check_against_spec(config: Config, spec: Spec, issue) -> None:
    """Checks that need the spec or several knobs at once."""
    s, t, m = config.model.student, config.training, config.model
    for p, sizes in ((("model", "student", "user_tower"), s.user_tower),
                     (("model", "student", "item_tower"), s.item_tower),
                     (("model", "teacher", "expert_layers"), m.teacher.expert_layers),
                     (("model", "teacher", "task_tower"), m.teacher.task_tower)):
        for i, size in enumerate(sizes):
            if size < 1:
                issue(p + (i,), f"expected a layer size >= 1, got {size}")
    for p, value in ((("model", "student", "heads"), s.heads), (("model", "teacher", "experts"), m.teacher.experts),
                     (("model", "student", "fm_dim"), s.fm_dim), (("training", "epochs"), t.epochs),
                     (("model", "teacher", "attention_hidden"), m.teacher.attention_hidden)):
        if value < 1:
            issue(p, f"expected a positive integer, got {value}")
    for p, value in ((("model", "student", "temperature"), s.temperature),
                     (("model", "distill", "temperature"), m.distill.temperature)):
        if value <= 0:
            issue(p, f"expected a number > 0, got {value}")
    if not 0 <= m.teacher.dropout < 1:
        issue(("model", "teacher", "dropout"), f"expected a rate in [0, 1), got {m.teacher.dropout}")
    if m.teacher.target_attention and not attention_pairs(spec):
        issue(("model", "teacher", "target_attention"), "no user-side sequence feature reads the embedding table of "
              "an item-side categorical feature, so there is nothing to attend")
    if not s.user_tower or not s.item_tower:
        issue(("model", "student", "user_tower" if not s.user_tower else "item_tower"), "expected at least one layer")
    elif s.user_tower[-1] != s.item_tower[-1]:
        issue(("model", "student", "item_tower"),
              f"the towers' last sizes must match (the vectors are compared): user tower ends with "
              f"{s.user_tower[-1]}, item tower with {s.item_tower[-1]}")
    elif s.similarity == "multi_head" and s.heads >= 1 and s.user_tower[-1] % s.heads:
        issue(("model", "student", "heads"), f"the vector size {s.user_tower[-1]} must divide into {s.heads} heads")
    if not s.towers:
        issue(("model", "student", "towers"), "expected at least one of mlp, dcn, fm")
    tasks = {label.name: label for label in spec.labels}
    if s.task is not None and (s.task not in tasks or tasks[s.task].type != "binary"):
        issue(("model", "student", "task"), f"expected a binary label of the spec "
              f"({', '.join(n for n, l in tasks.items() if l.type == 'binary')}), got {s.task!r}")
    elif s.task is None and not any(l.type == "binary" for l in spec.labels):
        issue(("model", "student", "task"), "the spec has no binary label for the student to learn")
    for name in m.teacher.fused_weights:
        if name not in tasks:
            issue(("model", "teacher", "fused_weights", name), f"expected a label of the spec ({', '.join(tasks)})")
    aug = s.dual_augmented
    for side, name in (("user", aug.user_feature), ("item", aug.item_feature)):
        if name is None:
            continue
        f = next((f for f in spec.features if f.name == name), None)
        if f is None or f.side != side or f.kind != "categorical":
            issue(("model", "student", "dual_augmented", f"{side}_feature"),
                  f"expected a categorical {side} feature of the spec, got {name!r}")
    for key, value in (("batch_size", t.batch_size), ("log_every", t.log_every),
                       ("checkpoint_every", t.checkpoint_every), ("keep_checkpoints", t.keep_checkpoints)):
        if value < 1:
            issue(("training", key), f"expected a positive integer, got {value}")
    if m.mode == "student" and not t.teacher_dir:
        issue(("training", "teacher_dir"), "model.mode student needs the trained teacher's model directory")
    if m.distill.cascade.enabled and m.mode == "teacher":
        issue(("model", "distill", "cascade", "enabled"), "cascade mode needs a student (model.mode joint or student)")
    if m.distill.cascade.top_n < 1:
        issue(("model", "distill", "cascade", "top_n"), "expected a positive integer")
    if (m.distill.loss == "pairwise" or m.distill.cascade.enabled) and not spec.group_key:
        issue(("model", "distill"), "pairwise distillation and cascade mode need the spec's group_key")


def student_task(config: Config, spec: Spec) -> str:
    return config.model.student.task or next(l.name for l in spec.labels if l.type == "binary")


def fused_weights(config: Config, spec: Spec) -> dict[str, float]:
    return dict(config.model.teacher.fused_weights) or {student_task(config, spec): 1.0}


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


def config_from_dict(raw: dict, source: str) -> Config:
    """A Config from its `to_dict()` form (e.g. a model directory's run.json)."""
    issues: list[SpecIssue] = []
    config = _read(Config, raw, (), lambda p, m: issues.append(SpecIssue(source, None, format_path(p), m)))
    if issues:
        raise SpecError(issues)
    return config
