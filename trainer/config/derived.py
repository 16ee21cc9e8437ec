"""Values derived from a configuration and its spec."""
from trainer.config.knobs import Config
from trainer.spec.types import Spec


def student_task(config: Config, spec: Spec) -> str:
    """The label the student learns: model.student.task, or the spec's first binary label."""
    return config.model.student.task or next(l.name for l in spec.labels if l.type == "binary")


def fused_weights(config: Config, spec: Spec) -> dict[str, float]:
    """Task -> weight in the teacher's fused score (default: the student's task alone)."""
    return dict(config.model.teacher.fused_weights) or {student_task(config, spec): 1.0}
