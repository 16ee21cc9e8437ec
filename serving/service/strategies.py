"""Cutting scored candidates to the K the fine ranker gets: top-K, a score threshold, or score tiers.

Every strategy returns row indices into the scored candidates, in the order the response lists them.
"""
import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest scores, best first (ties: the earlier candidate first)."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.lexsort((np.arange(len(scores)), -scores))


def threshold(scores: np.ndarray, k: int, min_score: float) -> np.ndarray:
    """Candidates scoring at least `min_score`, best first, at most k."""
    order = top_k(scores, k)
    return order[scores[order] >= min_score]


def tiers(scores: np.ndarray, k: int, bands: list[float], attribute: np.ndarray) -> np.ndarray:
    """Score bands from the top (band 0: scores >= bands[0]; band i: [bands[i], bands[i-1]); the last band the
    rest); within a band the higher `attribute` first (NaN, unknown, last; then the higher score); bands are
    taken whole from the top until k candidates, the last one cut in its own order."""
    bounds = np.asarray(sorted(bands, reverse=True), np.float64)
    band = np.searchsorted(-bounds, -scores.astype(np.float64), side="left")  # 0 = the top band
    known = ~np.isnan(attribute)
    value = np.where(known, attribute, 0.0)
    # lexsort: the last key is primary: band ascending, then attribute known first, attribute and score descending
    order = np.lexsort((np.arange(len(scores)), -scores, -value, ~known, band))
    return order[:k]
