"""The hot cache: an in-process LRU of item records (vector + attributes), limited in items.

Catalogs are long-tailed: a few thousand items fill most candidate lists, so most of a request's vectors
are found here without a store round trip. One cache belongs to one served export (its fingerprint), so
vectors of two exports never mix. Records live in one float32 array [capacity, width]; an `IdIndex` (a
hash table in numpy arrays) maps ids to slots, so a request's ids are found in a few array passes, not one
dict lookup each; each slot remembers the request (tick) that last used it.

The bookkeeping is vectorised per request: recency is one assignment of the request's tick to the slots it
hit, and when new records need room, the least recently used slots (the oldest ticks) are evicted, found
with one `argpartition`. So recency is per request: items used by the same request are equally recent
(an exact per-id LRU would order them by their position in the request, which means nothing). Not
thread-safe: the service calls it from its event loop only.
"""
import numpy as np

from serving.item_store.id_index import IdIndex


class HotCache:
    """LRU cache of `capacity` records of `width` float32 values (0 disables it: every lookup misses), keyed
    by ids of `id_dtype` ("int64" or "string")."""

    def __init__(self, capacity: int, width: int, id_dtype: str = "int64"):
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0 items, got {capacity}")
        self.capacity, self.width = capacity, width
        self.records = np.zeros((capacity, width), np.float32)
        self.last_used = np.zeros(capacity, np.int64)
        self.index = IdIndex(id_dtype)  # id -> slot; grows with the items held (a compact table is a quicker one)
        self.slot_ids = np.zeros(capacity, np.int64 if id_dtype == "int64" else "<U1")  # slot -> id
        self.tick = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.index)

    def ids(self) -> np.ndarray:
        """The cached ids (in slot order)."""
        return self.slot_ids[:len(self.index)]

    @property
    def bytes(self) -> int:
        return self.records.nbytes

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def get(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(records [n, width] of the ids found (zeros elsewhere), found [n]) of `ids` (a list or an array);
        counts hits and misses."""
        n = len(ids)
        if not self.capacity:
            self.misses += n
            return np.zeros((n, self.width), np.float32), np.zeros(n, bool)
        slots = self.index.find(ids)
        found = slots >= 0
        hits = int(np.count_nonzero(found))
        self.hits += hits
        self.misses += n - hits
        self.tick += 1
        if hits == n:
            self.last_used[slots] = self.tick
            return self.records.take(slots, axis=0), found
        used = slots[found]
        self.last_used[used] = self.tick
        out = np.zeros((n, self.width), np.float32)
        out[found] = self.records.take(used, axis=0)
        return out, found

    def put(self, ids, records: np.ndarray) -> None:
        """Insert the records of ids not cached yet (the last `capacity` of them; of an id given twice, its
        last record), evicting the least recently used."""
        if not self.capacity or not len(ids):
            return
        keys = self.index.as_keys(ids)
        rows = np.flatnonzero(self.index.find(keys) < 0)
        if rows.size > 1:  # an id given twice: its last record
            _, last = np.unique(keys[rows][::-1], return_index=True)
            rows = np.sort(rows[::-1][last])
        rows = rows[-self.capacity:]
        if not rows.size:
            return
        self.tick += 1
        filled = len(self.index)
        free = self.capacity - filled
        if rows.size <= free:
            slots = np.arange(filled, filled + rows.size)
        else:
            evict = rows.size - free
            oldest = np.argpartition(self.last_used[:filled], evict - 1)[:evict] if filled else np.zeros(0, np.int64)
            self.index.remove(self.slot_ids[oldest])
            slots = np.concatenate([np.arange(filled, self.capacity), oldest])
        fresh = keys[rows]
        if fresh.dtype.itemsize > self.slot_ids.dtype.itemsize:  # longer string ids than any cached so far
            self.slot_ids = self.slot_ids.astype(fresh.dtype)
        self.records[slots] = records[rows]
        self.last_used[slots] = self.tick
        self.slot_ids[slots] = fresh
        self.index.insert(fresh, slots)
