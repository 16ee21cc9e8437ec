"""The service's Prometheus metrics (prometheus-client), on a registry of its own."""
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SCORING_STAGES = ("parse", "user", "fetch", "embed", "score", "strategy", "serialize")  # `Scorer.score`'s
STAGES = ("read",) + SCORING_STAGES  # read: the request body, from the framework
# seconds; fine steps below 10 ms, where a pre-rank request should land
BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Request latency, per-stage latency, candidates scored and not, cache hits, errors by kind, the served
    version and the age of its item vectors."""

    def __init__(self, cache_hit_rate: Callable[[], float], model_version: Callable[[], float],
                 vectors_reference: Callable[[], float]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("prerank_request_seconds", "Latency of /score requests answered 200", buckets=BUCKETS,
                                 registry=r)
        self.stage = Histogram("prerank_stage_seconds", "Time of each stage of a /score request", ["stage"],
                               buckets=BUCKETS, registry=r)
        self.stages = {s: self.stage.labels(s) for s in STAGES}  # each stage's child, looked up once
        self.candidates = Counter("prerank_candidates_scored", "Candidates scored", registry=r)
        self.unscored = Counter("prerank_candidates_unscored", "Candidates not scored, by reason", ["reason"],
                                registry=r)
        self.cache_hits = Counter("prerank_cache_hits", "Candidates found in the hot cache", registry=r)
        self.cache_misses = Counter("prerank_cache_misses", "Candidates not in the hot cache", registry=r)
        Gauge("prerank_cache_hit_rate", "Hot cache hits / lookups of the served version since it was loaded",
              registry=r).set_function(cache_hit_rate)
        self.errors = Counter("prerank_errors", "Requests refused or failed, by kind", ["kind"], registry=r)
        Gauge("prerank_model_version", "The served export version (-1: none yet)", registry=r).set_function(model_version)
        Gauge("prerank_item_vectors_reference_timestamp_seconds", "The reference time the served item vectors "
              "were computed for (Unix seconds; 0: not recorded)", registry=r).set_function(vectors_reference)
        self.swaps = Counter("prerank_version_swaps", "Export versions swapped in", registry=r)
