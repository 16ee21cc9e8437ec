"""Where the service's item vectors come from: the served export's vectors in the file store or in Redis,
through the hot cache.

Both stores are opened by the export's fingerprint, so the vectors read are the served export's and no
other's; a store without them is refused (`open_vectors`), and `vectors_ready` says why a version waits.
"""
from pathlib import Path

import numpy as np

from serving.item_store.reader import ItemVectorStore
from serving.item_store.redis_store import (AsyncRedisVectors, StoreUnavailable, complete_fingerprints, is_redis,
                                            parse_url)
from serving.service.cache import HotCache
from trainer.errors import ExportError


class FileVectors:
    """The served export's vectors in the file store (memory-mapped)."""

    def __init__(self, store_dir: str, fingerprint: str):
        self.store = ItemVectorStore.open(store_dir, fingerprint=fingerprint)
        self.fingerprint = fingerprint
        self.model_version = self.store.model_version
        self.dim = self.store.dim
        self.attribute_names = self.store.attribute_names
        self.reference_time = self.store.reference_time
        self.count = len(self.store)
        self.where = str(self.store.path)
        self.id_dtype = self.store.manifest["id_dtype"]

    async def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, attributes, found) of `ids` (int64 or unicode array)."""
        return self.store.fetch(ids)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def vectors_ready(store: str, fingerprint: str) -> str | None:
    """None if the store holds the complete vectors of `fingerprint`, else why not (in words)."""
    try:
        if is_redis(store):
            have = complete_fingerprints(store)
        else:
            have = ItemVectorStore.fingerprints(store)
    except StoreUnavailable as e:
        return str(e)
    if fingerprint in have:
        return None
    return (f"the item store {store} has no complete vectors of export fingerprint {fingerprint} (run `prerank "
            f"embed-items` with this export); it holds {', '.join(have) or 'none'}")


def open_vectors(store: str, fingerprint: str) -> FileVectors | AsyncRedisVectors:
    """The vectors of the export with `fingerprint` in `store` (a directory or redis://...)."""
    if is_redis(store):
        parse_url(store)
        return AsyncRedisVectors.open(store, fingerprint)
    if not Path(store).is_dir():
        raise ExportError(f"{store}: no such item store directory")
    return FileVectors(store, fingerprint)


class CachedVectors:
    """A store's vectors behind a hot cache: `lookup` answers from the cache, fetches the misses in one call
    and caches what it found."""

    def __init__(self, source: FileVectors | AsyncRedisVectors, capacity: int):
        self.source = source
        self.dim = source.dim
        self.width = source.dim + len(source.attribute_names)
        self.cache = HotCache(capacity, self.width, source.id_dtype)

    def as_ids(self, ids: list) -> np.ndarray:
        """A request's ids as the array `lookup` takes (int64, or numpy unicode for string ids)."""
        return self.cache.index.as_keys(ids)

    async def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors [n, d], attributes [n, k], found [n]) of `ids` (`as_ids`); StoreUnavailable if the store is
        down and some id is not cached."""
        records, found = self.cache.get(ids)
        if not found.all():
            missing = np.flatnonzero(~found)
            vectors, attributes, got = await self.source.fetch(ids[missing])
            rows = missing[got]
            records[rows, :self.dim] = vectors[got]
            records[rows, self.dim:] = attributes[got]
            found[rows] = True
            self.cache.put(ids[rows], records[rows])
        return records[:, :self.dim], records[:, self.dim:], found

    def remember(self, ids: list, vectors: np.ndarray) -> None:
        """Cache vectors computed from request features (their attributes unknown: NaN)."""
        unknown = np.full((len(ids), self.width - self.dim), np.nan, np.float32)
        self.cache.put(ids, np.concatenate([vectors.astype(np.float32), unknown], axis=1))
