"""Item vectors in Redis (`--store redis://host:port/db`): the same content as the file store, one key per item.

Keys (PREFIX = "prerank:items")::

    PREFIX:<fingerprint>:meta      hash: model_version, fingerprint, dim, id_dtype, attributes (JSON),
                                   reference_time, export_dir, id_column, metadata (JSON), status
                                   ("writing" | "complete"), next_offset, count, created
    PREFIX:<fingerprint>:i:<id>    the item's record: float32 little-endian [dim + k], its vector then
                                   its k attributes
    PREFIX:complete                sorted set: fingerprint -> when its vectors were completed

Vectors are keyed by the export fingerprint (`serving.savedmodel.layout.export_fingerprint`), so one
export's vectors are never read as another's. A version is readable only once it is in PREFIX:complete,
which `finish` adds last: readers never see a half-written version. Each chunk is written in one
MULTI/EXEC transaction with the meta's next_offset, so a killed write resumes at a chunk boundary. The
service reads a request's candidates with one MGET (one round trip).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np

try:  # the Redis client comes with the `serve` extra; a training-only install writes file stores only
    import redis
    import redis.asyncio
except ImportError:  # pragma: no cover - exercised on a lean install
    redis = None

from serving.item_store.reader import version_key
from serving.item_store.values import (as_attributes, as_ids, as_vectors, check_attribute_names, check_dim,
                                       check_finite, check_fingerprint, check_id_dtype, check_version,
                                       first_duplicate, jsonable, normalize_export_dir)
from trainer.errors import ConfigError, DataError, ExportError

PREFIX = "prerank:items"
COMPLETE = f"{PREFIX}:complete"
TIMEOUT_SECONDS = 2.0  # connect and read timeout: an unreachable server fails a call, never hangs it


class StoreUnavailable(ExportError):
    """The item store cannot be reached (Redis down or unreachable); the call may succeed later."""


def is_redis(store: str) -> bool:
    return str(store).startswith("redis://")


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisAddress:
    """redis://host[:port][/db]; a ConfigError naming the URL and what was expected otherwise (or the
    Redis client's absence)."""
    if redis is None:
        raise ConfigError.single("--store", "", f"{url!r}: the Redis client is not installed; install prerank with "
                                 "its serve extra (pip install -e '.[serve]')")
    expected = "expected redis://HOST[:PORT][/DB], e.g. redis://127.0.0.1:6379/0"
    try:
        parsed = urlparse(url)
        port = parsed.port or 6379
    except ValueError as e:
        raise ConfigError.single("--store", "", f"{url!r}: {e}; {expected}") from None
    path = parsed.path.strip("/")
    if parsed.scheme != "redis" or not parsed.hostname or (path and not path.isdigit()) or parsed.query:
        raise ConfigError.single("--store", "", f"{url!r}: {expected}")
    return RedisAddress(parsed.hostname, port, int(path or 0))


def meta_key(fingerprint: str) -> str:
    return f"{PREFIX}:{fingerprint}:meta"


def item_key(fingerprint: str, item_id: Any) -> str:
    return f"{PREFIX}:{fingerprint}:i:{item_id}"


def client(address: RedisAddress) -> redis.Redis:
    return redis.Redis(host=address.host, port=address.port, db=address.db, socket_timeout=TIMEOUT_SECONDS,
                       socket_connect_timeout=TIMEOUT_SECONDS)


def unavailable(address: RedisAddress, error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"item store {address.url} unreachable ({type(error).__name__}: {error})")


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def read_meta(conn: redis.Redis, address: RedisAddress, fingerprint: str) -> dict[str, Any] | None:
    """The meta hash of a fingerprint's vectors, typed; None if there is none."""
    try:
        raw = conn.hgetall(meta_key(fingerprint))
    except redis.RedisError as e:
        raise unavailable(address, e) from None
    return decode_meta(raw) if raw else None


def decode_meta(raw: dict) -> dict[str, Any]:
    meta = {_text(k): _text(v) for k, v in raw.items()}
    for key in ("model_version", "dim", "next_offset", "count"):
        if meta.get(key) is not None:
            meta[key] = int(meta[key])
    for key in ("attributes", "metadata", "reference_time"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


def complete_fingerprints(store: str) -> list[str]:
    """The fingerprints whose vectors are complete in the Redis store, oldest first."""
    address = parse_url(store)
    try:
        return [_text(f) for f in client(address).zrange(COMPLETE, 0, -1)]
    except redis.RedisError as e:
        raise unavailable(address, e) from None


class RedisStoreWriter:
    """Writes the vectors of one export into Redis, resumably: the interface of `writer.StoreWriter`."""

    def __init__(self, url: str, model_version: int, *, fingerprint: str, dim: int, id_dtype: str,
                 export_dir: str, id_column: str = "item_id", metadata: dict[str, Any] | None = None,
                 attributes: Sequence[str] = (), reference_time: str | None = None):
        """Arguments as `writer.StoreWriter`'s, with `url` (redis://host:port/db) for the store directory."""
        self.address = parse_url(url)
        self.conn = client(self.address)
        self.model_version = check_version(model_version)
        self.fingerprint = check_fingerprint(fingerprint)
        self.settings = {
            "model_version": self.model_version, "fingerprint": self.fingerprint, "dim": check_dim(dim),
            "id_dtype": check_id_dtype(id_dtype), "export_dir": normalize_export_dir(export_dir),
            "id_column": str(id_column), "metadata": jsonable(metadata),
            "attributes": check_attribute_names(attributes), "reference_time": reference_time}
        try:
            self._open()
        except redis.RedisError as e:
            raise unavailable(self.address, e) from None

    @property
    def key(self) -> str:
        return version_key(self.model_version, self.fingerprint)

    @property
    def where(self) -> str:
        return f"{self.address.url} ({self.key})"

    def _open(self) -> None:
        if self.conn.zscore(COMPLETE, self.fingerprint) is not None:
            raise ExportError(f"the vectors of model version {self.model_version} (fingerprint {self.fingerprint}) "
                              f"are already complete in {self.address.url}; a complete version is never "
                              "overwritten")
        meta = read_meta(self.conn, self.address, self.fingerprint)
        if meta is None:
            self.conn.hset(meta_key(self.fingerprint), mapping={**self._encoded(), "status": "writing",
                                                                 "next_offset": 0})
            self.next_offset = 0
            return
        diffs = [f"{k}: started with {meta.get(k)!r}, now {v!r}" for k, v in self.settings.items() if meta.get(k) != v]
        if diffs:
            raise ExportError(f"{self.where}: an interrupted write was started with other settings "
                              f"({'; '.join(diffs)}); resume it with the original settings")
        self.next_offset = int(meta["next_offset"])

    def _encoded(self) -> dict[str, str | int]:
        return {k: json.dumps(v) if k in ("attributes", "metadata", "reference_time") else v
                for k, v in self.settings.items()}

    @property
    def dim(self) -> int:
        return self.settings["dim"]

    @property
    def attribute_names(self) -> list[str]:
        return self.settings["attributes"]

    def write(self, ids: Sequence[Any] | np.ndarray, vectors: Any, *, offset: int | None = None,
              attributes: Any = None) -> int:
        """Validate and write one chunk (one transaction); returns the new ``next_offset``."""
        if offset is not None and offset != self.next_offset:
            raise ExportError(f"chunk starts at item {offset} but the write continues at item {self.next_offset}")
        start = self.next_offset
        where = f"{self.where}: items from {start}"
        ids = as_ids(ids, self.settings["id_dtype"], where)
        vectors = as_vectors(vectors, self.dim, len(ids), where)
        values = as_attributes(attributes, self.attribute_names, ids, start, where)
        if len(ids) == 0:
            return start
        check_finite(vectors, ids, start, where)
        duplicate = first_duplicate(ids)
        if duplicate is not None:
            raise DataError(f"{where}: duplicate item id {duplicate!r} within this chunk; one vector per id")
        records = np.ascontiguousarray(np.concatenate([vectors, values], axis=1), dtype="<f4")
        try:
            pipe = self.conn.pipeline(transaction=True)
            for item_id, record in zip(ids.tolist(), records):
                pipe.set(item_key(self.fingerprint, item_id), record.tobytes(), nx=True)
            pipe.hset(meta_key(self.fingerprint), "next_offset", start + len(ids))
            written = pipe.execute()[:-1]
        except redis.RedisError as e:
            raise unavailable(self.address, e) from None
        if not all(written):
            repeated = ids[[not w for w in written]][0].item()
            raise DataError(f"{where}: duplicate item id {repeated!r}: already written in an earlier chunk")
        self.next_offset = start + len(ids)
        return self.next_offset

    def finish(self) -> str:
        """Mark the version complete (readers see it from now on); returns where it is."""
        if self.next_offset == 0:
            raise ExportError(f"no items were written for {self.where}; nothing to finish")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            pipe = self.conn.pipeline(transaction=True)
            pipe.hset(meta_key(self.fingerprint), mapping={"status": "complete", "count": self.next_offset,
                                                            "created": created})
            pipe.zadd(COMPLETE, {self.fingerprint: time.time()})
            pipe.execute()
        except redis.RedisError as e:
            raise unavailable(self.address, e) from None
        return f"{self.address.url} ({self.key})"


def remove_old_redis_versions(store: str, keep: int) -> list[str]:
    """The retention rule in Redis: keep the `keep` most recently completed fingerprints, delete the others'
    keys (the meta first, so no reader opens one half deleted); returns the removed version keys."""
    if keep < 1:
        raise ExportError(f"keep must be at least 1 (the newest version), got {keep}")
    address = parse_url(store)
    conn = client(address)
    removed = []
    try:
        doomed = [_text(f) for f in conn.zrange(COMPLETE, 0, -keep - 1)]
        for fingerprint in doomed:
            meta = read_meta(conn, address, fingerprint) or {}
            conn.zrem(COMPLETE, fingerprint)
            conn.delete(meta_key(fingerprint))
            batch = []
            for key in conn.scan_iter(match=f"{PREFIX}:{fingerprint}:i:*", count=10_000):
                batch.append(key)
                if len(batch) >= 10_000:
                    conn.unlink(*batch)
                    batch = []
            if batch:
                conn.unlink(*batch)
            removed.append(version_key(meta.get("model_version", 0), fingerprint))
    except redis.RedisError as e:
        raise unavailable(address, e) from None
    return removed


def decode_records(values: list[bytes | None], width: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors [n, dim], attributes [n, width - dim], found [n]) from MGET's answers (None: no such item)."""
    found = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    out = np.zeros((len(values), width), np.float32)
    if found.any():
        present = b"".join(v for v in values if v is not None)
        out[found] = np.frombuffer(present, dtype="<f4").reshape(-1, width)
    return out[:, :dim], out[:, dim:], found


class AsyncRedisVectors:
    """The complete vectors of one export in Redis, read with one MGET per call (redis.asyncio): what the
    scoring service fetches candidates with. Open with `AsyncRedisVectors.open`."""

    def __init__(self, address: RedisAddress, meta: dict[str, Any]):
        self.address = address
        self.meta = meta
        self.fingerprint = meta["fingerprint"]
        self.model_version = meta["model_version"]
        self.dim = meta["dim"]
        self.attribute_names = list(meta.get("attributes") or [])
        self.reference_time = meta.get("reference_time")
        self.count = meta.get("count")
        self.id_dtype = meta["id_dtype"]
        self.width = self.dim + len(self.attribute_names)
        self.prefix = f"{PREFIX}:{self.fingerprint}:i:"
        self.conn = redis.asyncio.Redis(host=address.host, port=address.port, db=address.db,
                                        socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)

    @property
    def where(self) -> str:
        return f"{self.address.url} ({version_key(self.model_version, self.fingerprint)})"

    @classmethod
    def open(cls, store: str, fingerprint: str) -> "AsyncRedisVectors":
        """The vectors of the export with `fingerprint`; an ExportError if they are not complete there,
        StoreUnavailable if the server cannot be reached."""
        address = parse_url(store)
        conn = client(address)
        meta = read_meta(conn, address, fingerprint)
        try:
            complete = conn.zscore(COMPLETE, fingerprint) is not None
        except redis.RedisError as e:
            raise unavailable(address, e) from None
        finally:
            conn.close()
        if meta is None or not complete:
            state = "being written" if meta else "absent"
            raise ExportError(f"{address.url}: no complete vectors of the export with fingerprint {fingerprint} "
                              f"({state}); run `prerank embed-items EXPORT --store {address.url}`")
        return cls(address, meta)

    async def fetch(self, ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, attributes, found) of `ids` in one round trip; StoreUnavailable if Redis is down."""
        prefix = self.prefix
        try:
            values = await self.conn.mget([prefix + str(i) for i in (ids.tolist() if isinstance(ids, np.ndarray)
                                                                      else ids)])
        except (redis.RedisError, OSError) as e:
            raise unavailable(self.address, e) from None
        return decode_records(values, self.width, self.dim)

    async def ping(self) -> None:
        try:
            await self.conn.ping()
        except (redis.RedisError, OSError) as e:
            raise unavailable(self.address, e) from None

    async def close(self) -> None:
        await self.conn.aclose()
