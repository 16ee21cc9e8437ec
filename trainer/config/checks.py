"""Checks of a configuration that need the spec, or several knobs at once."""
import math
from collections.abc import Callable

from trainer.config.cluster import parameter_servers
from trainer.config.derived import id_dropout_tables
from trainer.config.knobs import MAX_ID_DROPOUT, Component, Config
from trainer.registry import DISTILLATION_LOSSES, TOWERS
from trainer.spec.attention import attention_pairs
from trainer.spec.located_yaml import Path
from trainer.spec.table_size import oversized_tables
from trainer.spec.types import Spec


def check_against_spec(config: Config, spec: Spec, issue: Callable[[Path, str], None]) -> None:
    """Checks that need the spec or several knobs at once."""
    s, t, m = config.model.student, config.training, config.model
    for message in oversized_tables(spec, t.max_table_gb, parameter_servers=parameter_servers()):
        issue(("training", "max_table_gb"), message)
    if m.teacher.target_attention and not attention_pairs(spec):
        issue(("model", "teacher", "target_attention"), "no user-side sequence feature reads the embedding table of "
              "an item-side categorical feature, so there is nothing to attend")
    if not s.user_tower or not s.item_tower:
        issue(("model", "student", "user_tower" if not s.user_tower else "item_tower"), "expected at least one layer")
    elif s.user_tower[-1] != s.item_tower[-1]:
        issue(("model", "student", "item_tower"),
              f"the towers' last sizes must match (the vectors are compared): user tower ends with "
              f"{s.user_tower[-1]}, item tower with {s.item_tower[-1]}")
    elif s.similarity.name == "multi_head" and s.user_tower[-1] % s.heads:
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
    droppable = id_dropout_tables(spec)
    for name, rate in m.id_dropout_tables.items():
        if name not in droppable:
            issue(("model", "id_dropout_tables", name), f"expected a table read by a categorical feature through a "
                  f"vocabulary (source data or file): {', '.join(droppable) or 'the spec has none'}")
        elif not (isinstance(rate, float) and math.isfinite(rate) and 0 <= rate <= MAX_ID_DROPOUT):
            issue(("model", "id_dropout_tables", name), f"expected a number in [0, {MAX_ID_DROPOUT}], got {rate!r}")
    if m.mode == "student" and not t.teacher_dir:
        issue(("training", "teacher_dir"), "model.mode student needs the trained teacher's model directory")
    if m.distill.cascade.enabled and m.mode == "teacher":
        issue(("model", "distill", "cascade", "enabled"), "cascade mode needs a student (model.mode joint or student)")
    if (_needs_groups(m.distill.loss) or m.distill.cascade.enabled) and not spec.group_key:
        issue(("model", "distill"), f"distillation loss '{m.distill.loss}' and cascade mode need the spec's group_key"
              if _needs_groups(m.distill.loss) else "cascade mode needs the spec's group_key")


def _needs_groups(loss: Component) -> bool:
    """Whether the distillation loss compares the rows of a group (it then needs the spec's group key)."""
    if DISTILLATION_LOSSES.loaded(loss.name):
        return bool(getattr(DISTILLATION_LOSSES.get(loss.name), "needs_groups", False))
    return loss.name == "pairwise"  # the built-in that does (its module, with TensorFlow, is not imported here)
