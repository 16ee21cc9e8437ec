"""Checks of a configuration that need the spec, or several knobs at once."""
from collections.abc import Callable

from trainer.config.knobs import Component, Config
from trainer.registry import DISTILLATION_LOSSES, TOWERS
from trainer.spec.attention import attention_pairs
from trainer.spec.located_yaml import Path
from trainer.spec.types import Spec


def check_against_spec(config: Config, spec: Spec, issue: Callable[[Path, str], None]) -> None:
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
    elif s.similarity.name == "multi_head" and s.heads >= 1 and s.user_tower[-1] % s.heads:
        issue(("model", "student", "heads"), f"the vector size {s.user_tower[-1]} must divide into {s.heads} heads")
    if not s.towers:
        issue(("model", "student", "towers"), f"expected at least one of {', '.join(TOWERS.names())}")
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
    if (_needs_groups(m.distill.loss) or m.distill.cascade.enabled) and not spec.group_key:
        issue(("model", "distill"), f"distillation loss '{m.distill.loss}' and cascade mode need the spec's group_key"
              if _needs_groups(m.distill.loss) else "cascade mode needs the spec's group_key")


def _needs_groups(loss: Component) -> bool:
    """Whether the distillation loss compares the rows of a group (it then needs the spec's group key)."""
    if DISTILLATION_LOSSES.loaded(loss.name):
        return bool(getattr(DISTILLATION_LOSSES.get(loss.name), "needs_groups", False))
    return loss.name == "pairwise"  # the built-in that does (its module, with TensorFlow, is not imported here)
