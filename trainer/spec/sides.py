"""Views of the spec by tower side: the columns each student tower reads, the id features, the item catalog's
columns. Derived from the features' sides, never listed."""
from dataclasses import replace

from trainer.errors import SpecError, SpecIssue
from trainer.spec.types import TOWER_SIDES, Spec


def id_feature(spec: Spec, side: str, name: str | None = None) -> str:
    """The feature whose ids name users / items: `name`, or the first categorical feature of `side`."""
    if name:
        return name
    for f in spec.features_on(side):
        if f.kind == "categorical" and not f.is_cross:
            return f.name
    raise SpecError([SpecIssue(spec.path, None, "features",
                               f"this needs a categorical {side} feature (an id); the spec has none")])


def side_columns(spec: Spec, side: str) -> list[str]:
    """Columns read by the features of a student tower (`side`: "user", i.e. user + context, or "item")."""
    return sorted({c for f in spec.features_on(*TOWER_SIDES[side]) for c in f.columns})


def user_columns(spec: Spec) -> list[str]:
    """Columns read by user or context features: taken from the group's row for a sampled candidate."""
    return side_columns(spec, "user")


def catalog_columns(spec: Spec) -> list[str]:
    """Columns of the item catalog: every column no user or context feature reads (item features, their
    offline statistics, the item half of crosses)."""
    users = set(user_columns(spec))
    return sorted({c for f in spec.features for c in f.columns if c not in users})


def item_tower_spec(spec: Spec) -> Spec:
    """What an item table holds: the spec cut to the student item tower's features (no labels, weight or group
    key), so such a table is read and checked like any data, one row per item."""
    return replace(spec, features=spec.features_on(*TOWER_SIDES["item"]), labels=(), sample_weight=None,
                   group_key=())
