"""The hot cache: an in-process LRU of item records (vector + attributes), limited in items.

Catalogs are long-tailed: a few thousand items fill most candidate lists, so most of a request's vectors
are found here without a store round trip. One cache belongs to one served export (its fingerprint), so
vectors of two exports never mix. Records live in one float32 array [capacity, width]; a dict maps an id
to its slot; each slot remembers the request (tick) that last used it. Lookups and the recency update
are vectorised per request; when new records need room, the least recently used slots (the oldest ticks)
are evicted, found with one `argpartition`. Recency is per request: items used by the same request are
equally recent. Not thread-safe: the service calls it from its event loop only.
"""
from itertools import repeat

import numpy as np


class HotCache:
    """LRU cache of `capacity` records of `width` float32 values (0 disables it: every lookup misses)."""

    def __init__(self, capacity: int, width: int):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0 items, got {capacity}")
        self.capacity, self.width = capacity, width
        self.records = np.zeros((capacity, width), np.float32)
        self.last_used = np.zeros(capacity, np.int64)
        self.slot_ids: list = [None] * capacity
        self.index: dict = {}
        self.tick = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.index)

    @property
    def bytes(self) -> int:
        return self.records.nbytes

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def get(self, ids: list) -> tuple[np.ndarray, np.ndarray]:
        """(records [n, width] of the ids found (zeros elsewhere), found [n]); counts hits and misses."""
        n = len(ids)
        if not self.capacity:
            self.misses += n
            return np.zeros((n, self.width), np.float32), np.zeros(n, bool)
        slots = np.fromiter(map(self.index.get, ids, repeat(-1)), np.int64, count=n)
        found = slots >= 0
        self.tick += 1
        used = slots[found]
        self.last_used[used] = self.tick
        hits = int(found.sum())
        self.hits += hits
        self.misses += n - hits
        out = np.zeros((n, self.width), np.float32)
        out[found] = self.records[used]
        return out, found

    def put(self, ids: list, records: np.ndarray) -> None:
        """Insert records of ids not cached yet (the newest `capacity` of them), evicting the least recently
        used."""
        if not self.capacity or not len(ids):
            return
        fresh = [(i, r) for i, r in zip(ids, range(len(ids))) if i not in self.index]
        fresh = fresh[-self.capacity:]
        if not fresh:
            return
        self.tick += 1
        free = self.capacity - len(self.index)
        if len(fresh) <= free:
            slots = np.arange(len(self.index), len(self.index) + len(fresh))
        else:
            taken = np.arange(len(self.index), self.capacity)
            evict = len(fresh) - free
            order = np.argpartition(self.last_used[:len(self.index)], evict - 1)[:evict] if len(self.index) else \
                np.zeros(0, np.int64)
            for slot in order.tolist():
                del self.index[self.slot_ids[slot]]
            slots = np.concatenate([taken, order])
        rows = np.fromiter((r for _, r in fresh), np.int64, count=len(fresh))
        self.records[slots] = records[rows]
        self.last_used[slots] = self.tick
        for (item, _), slot in zip(fresh, slots.tolist()):
            self.index[item] = slot
            self.slot_ids[slot] = item
