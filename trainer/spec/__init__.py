"""The feature spec: its typed form, its loader, and the views derived from it (no TensorFlow).

`load_spec(path)` reads and validates a spec file (`trainer.spec.loader`); the
result is a `Spec` (`trainer.spec.types`). Derived views: the raw columns the
pipeline reads (`columns`), the columns of each tower side and the id features
(`sides`), the teacher's attention pairs (`attention`), the summary table
(`summary`).
"""
from trainer.spec.loader import load_spec, parse_spec
from trainer.spec.types import (CONFIG_SECTIONS, STUDENT_SIDES, TEACHER_ONLY_SIDES, TOWER_SIDES, DataSource, Embedding,
                                Feature, Label, Spec, Table, TransformStep, Vocabulary)

__all__ = ["CONFIG_SECTIONS", "STUDENT_SIDES", "TEACHER_ONLY_SIDES", "TOWER_SIDES", "DataSource", "Embedding",
           "Feature", "Label", "Spec", "Table", "TransformStep", "Vocabulary", "load_spec", "parse_spec"]
