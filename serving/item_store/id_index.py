"""A vectorised map from item ids (int64 or strings) to rows: an open-addressing hash table held in numpy
arrays, so a request's thousands of ids are found in a few array passes instead of one dict lookup each.

Each pass gathers the table at the ids' current probe positions and compares whole arrays; an id whose
position holds another key steps to the next position (linear probing) for the next pass, and an id that
meets an empty position is absent. The table is never more than half full, so a pass or two settles
almost every id. Removed keys leave tombstones (probes walk past them, inserts reuse them); the table is
rebuilt, grown or shrunk, once live keys plus tombstones would fill more than half of it.

int64 ids are hashed by Fibonacci hashing (multiply by 2^64 / golden ratio, keep the top bits); string ids
by FNV-1a over their UTF-32 code units (numpy unicode arrays), then the same. Equal ids always meet, as
keys are compared whole after hashing.
"""
from __future__ import annotations

import numpy as np

EMPTY, FULL, GONE = 0, 1, 2  # the state of a table position
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIN_SIZE = 16


def _table_size(keys: int) -> int:
    """A power of two holding `keys` at most a quarter full (room to insert as many again before a rebuild)."""
    return max(_MIN_SIZE, 1 << int(4 * keys).bit_length())


class IdIndex:
    """id -> int64 value (a row, a slot) for distinct ids of one dtype ("int64" or "string").

    `find` answers a whole array of ids; `insert` adds ids not present; `remove` drops present ones.
    """

    def __init__(self, id_dtype: str, expected: int = 0):
        if id_dtype not in ("int64", "string"):
            raise ValueError(f"id_dtype must be int64 or string, got {id_dtype!r}")
        self.id_dtype = id_dtype
        self.count = 0  # live keys
        self.tombstones = 0
        self._allocate(_table_size(expected))

    @classmethod
    def of(cls, ids: np.ndarray, id_dtype: str) -> "IdIndex":
        """The index of distinct `ids`: ids[i] -> i."""
        index = cls(id_dtype, len(ids))
        index.insert(ids, np.arange(len(ids), dtype=np.int64))
        return index

    def __len__(self) -> int:
        return self.count

    def _allocate(self, size: int) -> None:
        self.size, self.mask = size, size - 1
        self.shift = np.uint64(64 - (size.bit_length() - 1))
        self.state = np.zeros(size, np.uint8)
        self.keys = np.zeros(size, np.int64 if self.id_dtype == "int64" else "<U1")
        self.values = np.zeros(size, np.int64)

    def as_keys(self, ids) -> np.ndarray:
        """`ids` as this index's key array (int64 or numpy unicode)."""
        if self.id_dtype == "int64":
            if isinstance(ids, list):  # a request's ids: quicker than np.asarray
                return np.fromiter(ids, np.int64, count=len(ids))
            return np.asarray(ids, dtype=np.int64)
        array = np.asarray(ids)
        return array if array.dtype.kind == "U" else array.astype(str)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        """Each key's first probe position."""
        if self.id_dtype == "int64":
            mixed = keys.view(np.uint64)
        else:
            keys = np.ascontiguousarray(keys)
            units = keys.view(np.uint32).reshape(len(keys), keys.dtype.itemsize // 4)
            mixed = np.full(len(keys), _FNV_OFFSET)
            for column in units.T:  # a code unit 0 is padding (numpy strings end there): it leaves the hash as is
                mixed = np.where(column != 0, (mixed ^ column) * _FNV_PRIME, mixed)
        return ((mixed * _GOLDEN) >> self.shift).astype(np.int64)

    def positions(self, ids) -> np.ndarray:
        """The table position of each id, -1 where it is absent."""
        keys = self.as_keys(ids)
        out = np.full(len(keys), -1, np.int64)
        if not self.count or not len(keys):
            return out
        todo = np.arange(len(keys))
        at = self._home(keys)
        while todo.size:
            state = self.state[at]
            hit = (state == FULL) & (self.keys[at] == keys)
            out[todo[hit]] = at[hit]
            on = (state != EMPTY) & ~hit
            todo, keys, at = todo[on], keys[on], (at[on] + 1) & self.mask
        return out

    def find(self, ids) -> np.ndarray:
        """The value of each id, -1 where it is absent."""
        at = self.positions(ids)
        return np.where(at >= 0, self.values[at], -1)

    def insert(self, ids, values: np.ndarray) -> None:
        """Add distinct ids that are not in the index yet, with their values."""
        keys, values = self.as_keys(ids), np.asarray(values, np.int64)
        if not len(keys):
            return
        if 2 * (self.count + self.tombstones + len(keys)) > self.size:
            self._rebuild(self.count + len(keys))
        if keys.dtype.itemsize > self.keys.dtype.itemsize:  # longer strings than any held so far
            self.keys = self.keys.astype(keys.dtype)
        self._place(keys, values)

    def _place(self, keys: np.ndarray, values: np.ndarray) -> None:
        at = self._home(keys)
        while len(keys):
            free = np.flatnonzero(self.state[at] != FULL)
            placed = np.zeros(len(keys), bool)
            if free.size:
                _, first = np.unique(at[free], return_index=True)  # one key per free position and pass
                won = free[first]
                where = at[won]
                self.tombstones -= int(np.count_nonzero(self.state[where] == GONE))
                self.state[where] = FULL
                self.keys[where] = keys[won]
                self.values[where] = values[won]
                placed[won] = True
                self.count += len(won)
            rest = ~placed  # the others step on: their position is taken now
            keys, values, at = keys[rest], values[rest], (at[rest] + 1) & self.mask

    def remove(self, ids) -> None:
        """Drop ids (absent ones are ignored)."""
        at = self.positions(ids)
        at = at[at >= 0]
        self.state[at] = GONE
        self.count -= len(at)
        self.tombstones += len(at)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of every live key, in table order."""
        live = self.state == FULL
        return self.keys[live], self.values[live]

    def _rebuild(self, keys: int) -> None:
        ids, values = self.items()
        width = self.keys.dtype
        self._allocate(_table_size(keys))
        self.keys = self.keys.astype(width)
        self.count = self.tombstones = 0
        self._place(ids, values)
