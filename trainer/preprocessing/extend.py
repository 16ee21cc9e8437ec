"""Growing a previous model's fitted preprocessing with new data (`prerank analyze --extend PREV`, the daily loop).

A model retrained every day on the new day's logs starts from yesterday's weights; its fit grows instead of
being fitted again, so that every row and every first-layer input it carries keeps its meaning:

- A `source: data` table the previous fit holds, with the dtype the spec still gives it: every id it knew keeps
  its index, in the same order, its count becoming the previous count plus its count in the new data. Ids new in
  the new data that reach `min_count` there (counted on the new data alone) are appended after them, most frequent
  in the new data first (ties by id, as `analyze` orders), until the table holds `max_size` ids. The new ids left
  out once it is full read the table's out-of-vocabulary row, as any unknown id does; the record counts them
  (`left_out_ids`) and their occurrences in the new data (`left_out_occurrences`).
- Known ids are never evicted to make room, however rare they became: their trained rows and their indices stay
  where the carried weights expect them. A team that wants the vocabulary to follow the data refits (a new model).
  The one exception is a `max_size` lowered below the previous vocabulary's size: the previous fit's first
  `max_size` ids are kept (its most frequent ones, and the oldest) and the rest dropped (`dropped`), reading the
  out-of-vocabulary row from then on.
- A table whose dtype changed cannot be extended (its ids are other values), nor its rows carried by id by a warm
  start: `check_dtypes` refuses it (ConfigError naming the feature's dtype, the table and both dtypes).
- A `source: data` table the previous fit lacks is fitted from the new data exactly as `analyze` fits it.
- A normalisation statistic is kept from the previous fit when its definition (`fit_definition`: the column and
  the steps before the normaliser) is unchanged: the carried dense weights were trained on inputs normalised with
  it, and refitting would shift every first-layer input. The new data's mean and std are recorded beside it (the
  drift), not used. A statistic that is new, or defined differently, is fitted on the new data.

The result's `rows` is the new data's row count, its `definitions` the spec's, and its `extension` records the
previous directory and, per table and statistic, what happened (`fitted.TABLE_RECORD_FIELDS`,
`fitted.STAT_RECORD_FIELDS`).
"""
import os
from collections import Counter

from trainer.errors import ConfigError
from trainer.preprocessing.analyze import DataCounts, count_data, frequent_ids
from trainer.preprocessing.fit_definition import definitions, differences, statistic_definition
from trainer.preprocessing.fitted import FILE_NAME, Preprocessing, normalised_features
from trainer.spec.types import Spec, Vocabulary
from trainer.tables import text_table


def extend_preprocessing(previous: Preprocessing, spec: Spec, patterns: str | list[str], batch_size: int = 4096,
                         skip_corrupt: bool = False) -> Preprocessing:
    """`previous` grown with the data in `patterns` by the rules of this module (one pass over the data).

    Args:
      previous: the fit to extend (`Preprocessing.load` of a model's `preprocessing/` or an `analyze` output;
        its `loaded_from` is recorded as the extension's `previous`).
      spec: the features and tables to fit now (may add, drop or redefine tables and statistics).
      patterns: the new data (globs).
      batch_size: rows read per batch.
      skip_corrupt: leave corrupt records out (the result's `skipped` lists them per file) instead of failing.
    """
    check_dtypes(previous, spec)  # before reading any data
    counted = count_data(spec, patterns, batch_size, skip_corrupt)
    result = Preprocessing(spec.name, spec.fingerprint, counted.rows, skipped=counted.skipped,
                           definitions=definitions(spec))
    tables = {}
    for t, counter in counted.ids.items():
        vocab = spec.tables[t].vocabulary
        if t in previous.vocabularies:
            ids, counts, tables[t] = _grow(previous.vocabularies[t], previous.counts[t], counter, vocab)
        else:
            taken, left_out = frequent_ids(counter, vocab.min_count, vocab.max_size)
            ids, counts = [i for i, _ in taken], [c for _, c in taken]
            tables[t] = _table_record("fitted", 0, len(ids), left_out, 0)
        result.vocabularies[t], result.counts[t] = ids, counts
    result.stats, stats = _statistics(previous, spec, counted)
    result.extension = {"previous": previous.loaded_from, "tables": tables, "stats": stats}
    return result


def _previous_dtype(previous: Preprocessing, table: str) -> str | None:
    """The dtype the previous fit recorded for `table` (from its ids in fits older than the definitions; None for
    an empty table of such a fit)."""
    recorded = previous.definitions.get("tables", {}).get(table, {}).get("dtype")
    if recorded:
        return recorded
    ids = previous.vocabularies[table]
    return ("string" if isinstance(ids[0], str) else "int64") if ids else None


def check_dtypes(previous: Preprocessing, spec: Spec) -> None:
    """Refuse (ConfigError naming the first feature's dtype) a `source: data` table whose ids changed type since
    `previous` was fitted: its vocabulary cannot be extended, nor its rows carried by id (a warm start checks it
    before anything is fitted or built)."""
    for t, table in spec.tables.items():
        if table.vocabulary.source != "data" or t not in previous.vocabularies:
            continue
        before = _previous_dtype(previous, t)
        if before not in (None, table.dtype):
            where = os.path.join(previous.loaded_from, FILE_NAME) if previous.loaded_from else "the previous fit"
            raise ConfigError.single(
                spec.path, f"features.{table.features[0]}.dtype",
                f"table '{t}' (features {', '.join(table.features)}) held {before} ids in {where} and holds "
                f"{table.dtype} ids now: its vocabulary cannot be extended nor its rows carried by id; give the "
                "table another name (it then starts fresh), or fit a new model (without --extend / --warm-start)")


def _table_record(status: str, kept: int, added: int, left_out: list[tuple], dropped: int) -> dict:
    return {"status": status, "kept": kept, "added": added, "left_out_ids": len(left_out),
            "left_out_occurrences": sum(c for _, c in left_out), "dropped": dropped}


def _grow(ids: list, counts: list[int], counter: Counter, vocab: Vocabulary) -> tuple[list, list[int], dict]:
    """The previous ids (cut at `max_size`) with their counts grown, then the new ids that fit; and the record."""
    kept = len(ids) if vocab.max_size is None else min(len(ids), vocab.max_size)
    room = None if vocab.max_size is None else vocab.max_size - kept
    taken, left_out = frequent_ids(counter, vocab.min_count, room, exclude=set(ids))
    grown_ids = ids[:kept] + [i for i, _ in taken]
    grown_counts = [c + counter[i] for i, c in zip(ids[:kept], counts)] + [c for _, c in taken]
    return grown_ids, grown_counts, _table_record("extended", kept, len(taken), left_out, len(ids) - kept)


def _statistics(previous: Preprocessing, spec: Spec, counted: DataCounts) -> tuple[dict, dict]:
    """(statistics, their records): kept where the definition is unchanged, else fitted on the new data."""
    stats, records = {}, {}
    recorded = previous.definitions.get("stats", {})
    for name in normalised_features(spec):
        new = counted.stats[name]
        if name in previous.stats and recorded.get(name) == statistic_definition(spec, name):
            old = stats[name] = previous.stats[name]
            records[name] = {"status": "kept", "mean": old.mean, "std": old.std, "new_mean": new.mean,
                             "new_std": new.std}
            continue
        stats[name] = new
        if name not in previous.stats:
            reason = "not in the previous fit"
        elif name not in recorded:
            reason = "the previous fit does not record its definition"
        else:
            reason = f"previously fitted with {differences(recorded[name], statistic_definition(spec, name))}"
        records[name] = {"status": "fitted", "reason": reason}
    return stats, records


def extension_summary(fitted: Preprocessing) -> str:
    """What an extension did, one line a table and a statistic (for the command line and the training log)."""
    record = fitted.extension
    tables = [[t, r["status"], len(fitted.vocabularies[t]), r["kept"], r["added"],
               f"{r['left_out_ids']} ({r['left_out_occurrences']} occurrences)", r["dropped"]]
              for t, r in record["tables"].items()]
    stats = [[name, r["status"], f"{fitted.stats[name].mean:.4g} / {fitted.stats[name].std:.4g}",
              f"{r['new_mean']:.4g} / {r['new_std']:.4g}" if r["status"] == "kept" else "(the same)",
              "its definition is unchanged" if r["status"] == "kept" else r["reason"]]
             for name, r in record["stats"].items()]
    parts = [f"extending {record['previous'] or 'a previous fit'} with {fitted.rows} rows"]
    if tables:
        parts.append(text_table(["table", "status", "ids", "kept", "added", "left out (max_size)", "dropped"],
                                tables))
    if stats:
        parts.append(text_table(["statistic", "status", "mean / std used", "new data's mean / std", "why"], stats))
    return "\n".join(parts)
