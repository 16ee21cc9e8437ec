"""Behaviour sequences derived from the impressions log itself, point-in-time correct.

`NAME=ITEM[:LABEL]:N`: for each impression, the last N values of column ITEM
in the same user's impressions strictly before its time (all of them, or only
those whose LABEL is set: non-zero, true), oldest first. Impressions with
the same time see none of each other: a row never sees its own event, one at
its own time, or a later one.

How (all in the engine, out of core, with no list larger than 2N in flight):
for each impression, k = the number of the user's counted impressions (item
present, LABEL set if given) strictly before its time: a running sum over the
user's impressions in time order that excludes the impression's own time
(`EXCLUDE GROUP`). The counted impressions of each user, numbered 1, 2, ... in
(time, table order), are cut into blocks of N; the history is positions
k-N+1..k, found in at most two blocks (k-N and k-1 rounded down to a block),
joined by (user, block). A user's heavy history never travels whole: a
user with a million impressions costs blocks of N ids, not a list of a million
per row.
"""
import re
from dataclasses import dataclass

from trainer.data.convert.expressions import NAME_PATTERN
from trainer.errors import ConfigError
from trainer.spec.types import MAX_SEQUENCE_LENGTH

_SPEC = re.compile(r"^(?P<name>[^=]+)=(?P<item>[^:]+)(:(?P<label>[^:]+))?:(?P<n>[0-9]+)$")


@dataclass(frozen=True)
class History:
    """A history column: the last `length` values of `item` (with `label` set, if given) before each row."""

    name: str
    item: str
    length: int
    label: str | None = None

    @property
    def text(self) -> str:
        return f"{self.name}={self.item}" + (f":{self.label}" if self.label else "") + f":{self.length}"

    @classmethod
    def parse(cls, text: str) -> "History":
        """`NAME=ITEM[:LABEL]:N` from the command line."""
        match = _SPEC.match(text.strip())
        where = f"--history {text}"
        if not match or not all(NAME_PATTERN.match(match.group(g)) for g in ("name", "item")
                                if match.group(g)) or (match.group("label") and
                                                       not NAME_PATTERN.match(match.group("label"))):
            raise ConfigError.single(where, "", "expected NAME=ITEM_COLUMN[:LABEL_COLUMN]:N, e.g. "
                                     "watch_seq=video_id:50 or click_seq=video_id:is_click:20")
        length = int(match.group("n"))
        if not 1 <= length <= MAX_SEQUENCE_LENGTH:
            raise ConfigError.single(where, "", f"N must be in 1..{MAX_SEQUENCE_LENGTH}, got {length}")
        return cls(match.group("name"), match.group("item"), length, match.group("label"))


def counted(item: str, label: str | None) -> str:
    """SQL: does an impression count in the history (item present, label set)?"""
    return f"{item} IS NOT NULL" + (f" AND coalesce(CAST({label} AS BOOLEAN), false)" if label else "")


def position_sql(item: str, label: str | None) -> str:
    """SQL of k, over a window `__w` (PARTITION BY user ORDER BY time ... EXCLUDE GROUP): the counted impressions
    of the user strictly before this one's time."""
    return f"coalesce(sum(CASE WHEN {counted(item, label)} THEN 1 ELSE 0 END) OVER __w, 0)"


POSITION_WINDOW = ("WINDOW __w AS (PARTITION BY {user} ORDER BY {time} RANGE BETWEEN UNBOUNDED PRECEDING AND "
                   "CURRENT ROW EXCLUDE GROUP)")


def blocks_sql(history: History, events: str, item: str, label: str | None) -> str:
    """A query of (__user, __block, __items): each user's counted items in (time, table order), N a block.

    Args:
      events: a relation with the columns __row (table order), u (user), t (time), and the item and label columns
        (named by `item`, `label`).
    """
    n = history.length
    return (f"SELECT u AS __user, (__pos - 1) // {n} AS __block, list(__item ORDER BY __pos) AS __items FROM ("
            f"SELECT u, {item} AS __item, row_number() OVER (PARTITION BY u ORDER BY t, __row) AS __pos FROM {events} "
            f"WHERE u IS NOT NULL AND t IS NOT NULL AND {counted(item, label)}) GROUP BY ALL")


def history_value_sql(history: History, k: str, low: str, high: str) -> str:
    """SQL of the history list from k and the two joined blocks (aliases `low`, `high`; see `block_keys`)."""
    n = history.length
    base = f"((greatest({k} - {n}, 0) // {n}) * {n})"
    items = (f"(CASE WHEN {low}.__block = {high}.__block THEN {high}.__items "
             f"ELSE list_concat({low}.__items, {high}.__items) END)")
    return (f"(CASE WHEN {k} = 0 THEN NULL ELSE list_slice({items}, greatest({k} - {n} + 1, 1) - {base}, "
            f"{k} - {base}) END)")


def block_keys(history: History, k: str) -> tuple[str, str]:
    """SQL of the blocks holding positions k-N+1 (low) and k (high)."""
    n = history.length
    return f"(greatest({k} - {n}, 0) // {n})", f"(({k} - 1) // {n})"
