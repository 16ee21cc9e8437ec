"""The FastAPI app of `prerank serve`: POST /score, GET /health, GET /ready, GET /metrics, and /openapi.json.

/score answers 200 with the kept candidates; 400 for malformed JSON or a value the model refuses (a
negative id, say), 413 for a body over the cap, 422 for a request that breaks the schema (a missing or
mistyped feature, an empty or oversized candidate list, an unknown strategy, K <= 0: the field named),
503 while no version is ready or when the item store is unreachable (it recovers by itself). Every answer
but 200 is {"error": "...", "fields": [...]}. Each 200 carries a Server-Timing header with the time of each
stage (read (the body), parse, user, fetch, embed, score, strategy, serialize; ms), also in /metrics.
"""
import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError

from serving.item_store.redis_store import StoreUnavailable
from serving.item_store.values import first_duplicate
from serving.service.metrics import SCORING_STAGES, Metrics
from serving.service.model import ServedModel
from serving.service.schema import (STRATEGIES, ErrorResponse, ScoreResponse, Strategy, Threshold, Tiers, TopK,
                                    request_model)
from serving.service.strategies import threshold, tiers, top_k
from serving.service.versions import Versions
from trainer.errors import ConfigError, DataError

ACCESS = logging.getLogger("prerank.access")
EVENTS = logging.getLogger("prerank.service")


@dataclass(frozen=True)
class ServiceConfig:
    """The service's knobs (`prerank serve`'s options)."""

    export: str  # an export base (versions watched) or one version directory
    store: str  # item store: a directory or redis://host:port/db
    onnx_base: str | None = None  # ONNX exports by version (ONNX_BASE/<version>), for the user tower
    cache_items: int = 100_000  # hot cache size per served version, in items (0: off)
    k: int = 200  # default K
    strategy: str = "top_k"  # default strategy: a name, or a strategy's JSON (`parse_strategy`)
    max_candidates: int = 10_000  # candidates (and item_features rows) per request
    max_body_bytes: int = 4 << 20  # request body cap
    poll_seconds: float = 2.0  # how often the export base is checked for a new version


class Refused(Exception):
    """A request answered with an error status."""

    def __init__(self, status: int, kind: str, error: str, fields: list[dict] | None = None):
        super().__init__(error)
        self.status, self.kind, self.error, self.fields = status, kind, error, fields


def _fields(error: ValidationError) -> list[dict]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"], "type": e["type"]}
            for e in error.errors(include_url=False, include_input=False)]


def _reference_seconds(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


class Scorer:
    """The request path of /score over the served version (`Versions.current`)."""

    def __init__(self, config: ServiceConfig, versions: Versions, metrics: Metrics):
        self.config, self.versions, self.metrics = config, versions, metrics
        self.models: dict[str, tuple] = {}  # fingerprint -> (ScoreRequest, ...) models of that spec
        self.default_strategy = parse_strategy(config.strategy)

    def request_model(self, model: ServedModel):
        key = model.fingerprint
        if key not in self.models:
            self.models[key] = request_model(model.user_columns, model.item_columns, model.id_column,
                                             self.config.max_candidates)
        return self.models[key][0]

    async def score(self, body: bytes) -> tuple[bytes, dict[str, float]]:
        t = [time.perf_counter()]
        model = self.versions.current
        if model is None:
            raise Refused(503, "not_ready", f"not ready: {readiness(self.versions)['reason']}")
        try:
            request = self.request_model(model).model_validate_json(body)
        except ValidationError as e:
            fields = _fields(e)
            if any(f["type"] == "json_invalid" for f in fields):
                raise Refused(400, "bad_json", f"malformed JSON: {fields[0]['problem']}", fields) from None
            raise Refused(422, "invalid_request", "; ".join(f"{f['field']}: {f['problem']}" for f in fields[:5]),
                          fields) from None
        ids = request.candidates
        try:
            keys = model.vectors.as_ids(ids)
        except OverflowError:
            at = next(i for i, v in enumerate(ids) if not -(2**63) <= v < 2**63)
            raise Refused(422, "invalid_request", f"candidates.{at}: id {ids[at]} does not fit in int64",
                          [{"field": f"candidates.{at}", "problem": "does not fit in int64"}]) from None
        ordered = np.sort(keys)
        if (ordered[1:] == ordered[:-1]).any():
            repeated = first_duplicate(keys)
            raise Refused(422, "invalid_request", f"candidates: id {repeated!r} appears more than once",
                          [{"field": "candidates", "problem": f"id {repeated!r} repeated"}])
        strategy = request.strategy or self.default_strategy
        k = request.k or self.config.k
        if isinstance(strategy, Tiers) and strategy.attribute not in model.vectors.source.attribute_names:
            have = ", ".join(model.vectors.source.attribute_names) or "none"
            raise Refused(422, "invalid_request", f"strategy.attribute: {strategy.attribute!r} is not an item "
                          f"attribute of the item store (it has: {have})",
                          [{"field": "strategy.attribute", "problem": "unknown attribute"}])
        t.append(time.perf_counter())
        try:
            u = model.user_vector(vars(request.user))  # the validated fields, no copy
        except DataError as e:
            raise Refused(400, "bad_value", f"user: {e}", [{"field": "user", "problem": str(e)}]) from None
        t.append(time.perf_counter())
        try:
            vectors, attributes, found = await model.vectors.lookup(keys)
        except StoreUnavailable as e:
            raise Refused(503, "store_unavailable", str(e)) from None
        t.append(time.perf_counter())
        if not found.all() and request.item_features:
            self._embed_missing(model, request, ids, vectors, found)
        t.append(time.perf_counter())
        if found.all():
            rows = np.arange(len(ids))
            logits = vectors @ u + np.float32(model.bias)
        else:
            rows = np.flatnonzero(found)
            logits = vectors[rows] @ u + np.float32(model.bias)
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        t.append(time.perf_counter())
        if isinstance(strategy, TopK):
            kept = top_k(scores, k)
        elif isinstance(strategy, Threshold):
            kept = threshold(scores, k, strategy.min_score)
        else:
            column = model.vectors.source.attribute_names.index(strategy.attribute)
            kept = tiers(scores, k, strategy.bands, attributes[rows, column])
        t.append(time.perf_counter())
        missing = np.flatnonzero(~found).tolist()
        reason = f"not in the item store of model version {model.version} and no item_features sent"
        response = {"ids": [ids[i] for i in rows[kept].tolist()], "scores": scores[kept].tolist(),
                    "model_version": model.version, "fingerprint": model.fingerprint, "strategy": strategy.name,
                    "k": k, "unscored": [{"id": ids[i], "reason": reason} for i in missing],
                    "candidates": len(ids), "scored": int(len(rows))}
        out = orjson.dumps(response)
        t.append(time.perf_counter())
        timings = {stage: t[i + 1] - t[i] for i, stage in enumerate(SCORING_STAGES)}
        cache = model.vectors.cache
        self.metrics.candidates.inc(len(rows))
        if missing:
            self.metrics.unscored.labels("missing_without_features").inc(len(missing))
        self.metrics.cache_hits.inc(cache.hits - getattr(cache, "reported_hits", 0))
        self.metrics.cache_misses.inc(cache.misses - getattr(cache, "reported_misses", 0))
        cache.reported_hits, cache.reported_misses = cache.hits, cache.misses
        return out, timings

    def _embed_missing(self, model: ServedModel, request, ids: list, vectors: np.ndarray, found: np.ndarray) -> None:
        """Vectors of missing candidates sent with their features, through the item tower; cached."""
        id_name = model.id_column.name
        given = {}
        for row in request.item_features:
            given.setdefault(getattr(row, id_name), row)
        missing = [i for i in np.flatnonzero(~found).tolist() if ids[i] in given]
        if not missing:
            return
        rows = [given[ids[i]].model_dump() for i in missing]
        try:
            embedded = model.embed_items(rows)
        except DataError as e:
            raise Refused(400, "bad_value", f"item_features: {e}", [{"field": "item_features", "problem": str(e)}]) \
                from None
        vectors[missing] = embedded
        found[missing] = True
        model.vectors.remember([ids[i] for i in missing], embedded)


def parse_strategy(text: str):
    """A server default strategy: a name ("top_k") or the JSON of a request's strategy
    ('{"name": "tiers", "bands": [0.6, 0.3], "attribute": "ctr_prior"}'); a ConfigError otherwise."""
    try:
        value = json.loads(text) if text.lstrip().startswith("{") else {"name": text}
        return TypeAdapter(Strategy).validate_python(value)
    except (ValueError, ValidationError) as e:
        raise ConfigError.single("--strategy", "", f"{text!r}: {e}; expected one of {', '.join(STRATEGIES)} or the "
                                 "JSON of a request's strategy") from None


def readiness(versions: Versions) -> dict[str, Any]:
    """What /ready reports: ready once a version and its item vectors are loaded."""
    model = versions.current
    out: dict[str, Any] = {"ready": model is not None}
    if model is not None:
        source = model.vectors.source
        out.update(model_version=model.version, fingerprint=model.fingerprint, export=model.export_dir,
                   user_vector=model.user_path, user_vector_note=model.onnx_note, item_vectors=source.where,
                   items=source.count, attributes=source.attribute_names, reference_time=source.reference_time,
                   cache={"capacity_items": model.vectors.cache.capacity, "items": len(model.vectors.cache),
                          "hit_rate": model.vectors.cache.hit_rate})
    if versions.pending:
        out["pending"] = versions.pending
    if versions.failed:
        out["failed"] = {str(v): e for v, (_, e) in versions.failed.items()}
    if model is None:
        out["reason"] = (versions.pending or {}).get("reason") or \
            "; ".join(e for _, e in versions.failed.values()) or "no export version loaded yet"
    return out


class AccessLog:
    """Pure ASGI middleware: one JSON line per request (method, path, status, ms, client) on prerank.access."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            if ACCESS.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                ACCESS.info(json.dumps({"time": round(time.time(), 3), "method": scope["method"],
                                        "path": scope["path"], "status": status[0],
                                        "ms": round((time.perf_counter() - start) * 1000, 3),
                                        "client": f"{client[0]}:{client[1]}"}))


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused (413) past `cap` bytes, whatever Content-Length says."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap:
        raise Refused(413, "body_too_large", f"request body of {int(length):,} bytes; the cap is {cap:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise Refused(413, "body_too_large", f"request body over the cap of {cap:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServiceConfig) -> FastAPI:
    """The service's app; its lifespan loads the newest ready version and watches the export base."""
    versions = Versions(config.export, config.store, config.cache_items, config.onnx_base, EVENTS.info)
    metrics = Metrics(lambda: versions.current.vectors.cache.hit_rate if versions.current else 0.0,
                      lambda: versions.current.version if versions.current else -1,
                      lambda: _reference_seconds(versions.current.vectors.source.reference_time)
                      if versions.current else 0.0)
    scorer = Scorer(config, versions, metrics)

    async def watch() -> None:
        while True:
            try:
                model = await asyncio.to_thread(versions.poll)
                if model is not None:
                    await asyncio.to_thread(scorer.request_model, model)  # its request schema, built once
                    old = versions.swap(model)
                    metrics.swaps.inc()
                    if old is not None:
                        asyncio.get_running_loop().call_later(30, lambda: asyncio.ensure_future(old.close()))
            except Exception as e:  # noqa: BLE001 -- the watcher must outlive any one failed poll
                EVENTS.exception(f"version poll failed: {e}")
            if versions.fixed and versions.current is not None:
                return
            await asyncio.sleep(config.poll_seconds)

    async def lifespan(app: FastAPI):
        task = asyncio.create_task(watch())
        yield
        task.cancel()
        if versions.current is not None:
            await versions.current.close()

    app = FastAPI(title="prerank scoring service", version="1", lifespan=lifespan,
                  description="Pre-rank scoring: one user's vector against thousands of candidates' precomputed "
                              "vectors, cut to the K the fine ranker gets.")
    app.state.versions, app.state.scorer, app.state.metrics, app.state.config = versions, scorer, metrics, config
    app.add_middleware(AccessLog)

    def refusal(e: Refused) -> JSONResponse:
        metrics.errors.labels(e.kind).inc()
        return JSONResponse({"error": e.error, "fields": e.fields}, status_code=e.status)

    @app.post("/score", response_model=ScoreResponse, responses={400: {"model": ErrorResponse},
              413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/ScoreRequest"}}}}})
    async def score(request: Request) -> Response:
        """Score one user's candidates; keep K by the strategy."""
        start = time.perf_counter()
        try:
            body = await read_body(request, config.max_body_bytes)
            read = time.perf_counter() - start
            out, timings = await scorer.score(body)
            timings = {"read": read, **timings}
        except Refused as e:
            return refusal(e)
        except Exception as e:  # noqa: BLE001 -- answered, counted and logged; the service keeps serving
            EVENTS.exception("internal error on /score")
            metrics.errors.labels("internal").inc()
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}", "fields": None},
                                status_code=500)
        metrics.latency.observe(time.perf_counter() - start)
        for stage, seconds in timings.items():
            metrics.stages[stage].observe(seconds)
        header = ", ".join(f"{s};dur={v * 1000:.3f}" for s, v in timings.items())
        return Response(out, media_type="application/json", headers={"server-timing": header})

    @app.get("/health")
    async def health() -> dict:
        """The process is up (not whether it can score: see /ready)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 once a version and its item vectors are loaded and the store answers; 503 with the reason."""
        state = readiness(versions)
        if state["ready"]:
            try:
                await versions.current.vectors.source.ping()
            except StoreUnavailable as e:
                state.update(ready=False, reason=str(e))
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            model = versions.current
            if model is not None:
                request = scorer.request_model(model)
                body = request.model_json_schema(ref_template="#/components/schemas/{model}")
                components = schema.setdefault("components", {}).setdefault("schemas", {})
                components.update(body.pop("$defs", {}))
                components["ScoreRequest"] = body
                app.openapi_schema = schema  # complete only once a version (its spec) is loaded
            return schema
        return app.openapi_schema

    app.openapi = openapi
    return app
