"""Values derived from a configuration and its spec."""
from trainer.config.knobs import Config
from trainer.spec.types import Spec


def student_task(config: Config, spec: Spec) -> str:
    """The label the student learns: model.student.task, or the spec's first binary label."""
    return config.model.student.task or next(l.name for l in spec.labels if l.type == "binary")


def fused_weights(config: Config, spec: Spec) -> dict[str, float]:
    """Task -> weight in the teacher's fused score (default: the student's task alone)."""
    return dict(config.model.teacher.fused_weights) or {student_task(config, spec): 1.0}


VOCABULARY_SOURCES = ("data", "file")  # tables whose ids are looked up in a vocabulary, with OOV rows first


def id_dropout_tables(spec: Spec) -> list[str]:
    """The tables id dropout can act on: looked up in a vocabulary (so with OOV rows) by a categorical feature."""
    return [name for name, table in spec.tables.items() if table.vocabulary.source in VOCABULARY_SOURCES
            and any(spec.feature(f).kind == "categorical" for f in table.features)]


def id_dropout_rates(config: Config, spec: Spec) -> dict[str, float]:
    """Table -> the share of its categorical features' ids sent to its OOV row in training (rates > 0 only):
    model.id_dropout_tables' rate for a table it names, else model.id_dropout."""
    m = config.model
    rates = {name: m.id_dropout_tables.get(name, m.id_dropout) for name in id_dropout_tables(spec)}
    return {name: rate for name, rate in rates.items() if rate > 0}
