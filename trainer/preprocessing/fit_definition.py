"""What defines one fitted table or statistic, so that a fit is reused table by table, not spec by spec.

A vocabulary is defined by its dtype, the columns counted into it (every feature sharing the table) and its
`min_count` / `max_size`; a statistic by its column and the transform steps before its normaliser. `analyze`
records these definitions in `preprocessing.json`; `train --preprocessing DIR` compares them with the spec's,
table by table, so a spec may gain a table (or edit anything a fit does not read: model knobs, embedding dims,
other features) and still reuse the fit of the tables it shares.
"""
from trainer.preprocessing.fitted import normalised_features
from trainer.preprocessing.numeric import steps_before_normalisation
from trainer.spec.types import Spec


def table_definition(spec: Spec, table: str) -> dict:
    """The definition of a `source: data` table's fit."""
    t = spec.tables[table]
    columns = sorted({spec.feature(name).columns[0] for name in t.features})
    return {"dtype": t.dtype, "columns": columns, "min_count": t.vocabulary.min_count,
            "max_size": t.vocabulary.max_size}


def statistic_definition(spec: Spec, feature: str) -> dict:
    """The definition of a normalised feature's fitted statistics."""
    f = spec.feature(feature)
    return {"column": f.columns[0], "steps": [step.op for step in steps_before_normalisation(f.transforms)]}


def definitions(spec: Spec) -> dict:
    """Every fit the spec needs: {"tables": {table: definition}, "stats": {feature: definition}}."""
    return {"tables": {t: table_definition(spec, t) for t, table in spec.tables.items()
                       if table.vocabulary.source == "data"},
            "stats": {name: statistic_definition(spec, name) for name in normalised_features(spec)}}


def mismatches(spec: Spec, fitted: dict) -> list[str]:
    """How the recorded definitions `fitted` (as `definitions` returns them) fall short of the spec's, one line a
    table or statistic: missing, or fitted differently (naming the fields that differ). Tables the fit has and the
    spec does not need are fine."""
    problems = []
    for kind, noun in (("tables", "table"), ("stats", "statistics of")):
        have = fitted.get(kind, {})
        for name, wanted in definitions(spec)[kind].items():
            if name not in have:
                problems.append(f"{noun} '{name}': not fitted (the spec needs it: {_describe(wanted)})")
                continue
            differ = differences(have[name], wanted)
            if differ:
                problems.append(f"{noun} '{name}': fitted with {differ}")
    return problems


def differences(fitted: dict, wanted: dict) -> str:
    """How one recorded definition differs from the spec's ("" if it does not): "steps ['log1p'] (the spec: [])"."""
    return ", ".join(f"{key} {fitted.get(key)!r} (the spec: {value!r})" for key, value in wanted.items()
                     if fitted.get(key) != value)


def _describe(definition: dict) -> str:
    return ", ".join(f"{key} {value!r}" for key, value in definition.items())
