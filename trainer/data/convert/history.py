"""Behaviour sequences derived from the impressions log itself, point-in-time correct.

`NAME=ITEM[:LABEL]:N`: for each impression, the last N values of column ITEM
in the same user's impressions strictly before its time (all of them, or only
those whose LABEL is set: non-zero, true), oldest first. Impressions with
the same time see none of each other: a row never sees its own event, one at
its own time, or a later one.

How (all in the engine, out of core): the impressions are grouped by (user,
time); each group lists its items in table order; a window over a user's
groups, in time order, gathers the previous N groups' lists (for LABEL, only
groups with a labelled item take part) and keeps the last N items; each
impression then takes the list of the latest group strictly before its time
(an ASOF join on user and time). A user's first impressions get empty lists.
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


def history_sql(history: History, events: str, user: str, time: str, item: str, label: str | None) -> str:
    """A query of (user, time, list) rows: the list of `history` as of just after `time`, for each user's time at
    which it changes. An impression at time t takes the row of its user with the largest time < t.

    Args:
      history: the history column.
      events: a relation with the columns `__row` (table order), and those named by user, time, item and label.
      user, time, item, label: their SQL (quoted column names of `events`); label None: every row counts.
    """
    n = history.length
    where = f"WHERE {user} IS NOT NULL AND {time} IS NOT NULL AND {item} IS NOT NULL" + (
        f" AND CAST({label} AS BOOLEAN)" if label else "")
    return (f"SELECT __user, __time, list_slice(flatten(list(__items) OVER (PARTITION BY __user ORDER BY __time "
            f"ROWS BETWEEN {n - 1} PRECEDING AND CURRENT ROW)), -{n}, -1) AS __history FROM ("
            f"SELECT {user} AS __user, {time} AS __time, list({item} ORDER BY __row) AS __items "
            f"FROM {events} {where} GROUP BY ALL)")
