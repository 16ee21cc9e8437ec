"""Offline evaluation metrics, in numpy: AUC, log loss, GAUC and teacher/student consistency.

Every function takes 1-D arrays of equal length. `groups` holds one hashable id
per row (request, or user and date); pairs and top-k lists never cross groups.
All metrics are vectorised over groups, so 100k rows in 20k groups take
milliseconds.
"""
from dataclasses import dataclass

import numpy as np

DEFAULT_KS: tuple[tuple[int, int], ...] = ((10, 50), (50, 100))


def _arrays(**named: object) -> list[np.ndarray]:
    """Named inputs as 1-D arrays; ValueError unless all have one length and scores hold no NaN."""
    arrays = {name: np.asarray(value) for name, value in named.items()}
    for name, a in arrays.items():
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
        if a.dtype.kind == "f" and np.isnan(a).any():
            raise ValueError(f"{name} contains NaN")
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("length mismatch: " + ", ".join(f"{n}={k}" for n, k in lengths.items()))
    return list(arrays.values())


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense integer codes 0..n-1 of `values` (equal values share a code), and n."""
    uniques, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1), len(uniques)


def _run_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where a run of equal key tuples starts, for rows already sorted by those keys."""
    n = len(sorted_keys[0])
    change = np.zeros(n, dtype=bool)
    change[:1] = True
    for key in sorted_keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _group_auc(positive: np.ndarray, scores: np.ndarray, gid: np.ndarray, n_groups: int,
               weights: np.ndarray) -> np.ndarray:
    """AUC of each group (nan where a class is missing): positives against lower-scored negatives, ties 1/2."""
    order = np.lexsort((scores, gid))
    g, s = gid[order], scores[order]
    w = weights[order].astype(np.float64)
    pos_w = np.where(positive[order], w, 0.0)
    starts = _run_starts(g, s)  # blocks of tied scores within a group
    block_pos = np.add.reduceat(pos_w, starts)
    block_neg = np.add.reduceat(w - pos_w, starts)
    block_group = g[starts]
    neg_before = np.cumsum(block_neg) - block_neg  # negative weight in earlier blocks, over all groups
    first_block = np.flatnonzero(np.r_[True, block_group[1:] != block_group[:-1]])
    neg_below = neg_before - neg_before[first_block][np.searchsorted(block_group[first_block], block_group)]
    wins = np.bincount(block_group, block_pos * (neg_below + 0.5 * block_neg), minlength=n_groups)
    pairs = np.bincount(block_group, block_pos, minlength=n_groups) * np.bincount(
        block_group, block_neg, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ROC AUC (nonzero labels are positive), ties counted 1/2, optionally weighted; nan with one class."""
    if weights is None:
        labels, scores = _arrays(labels=labels, scores=scores)
        weights = np.ones(len(labels))
    else:
        labels, scores, weights = _arrays(labels=labels, scores=scores, weights=weights)
    if len(labels) == 0:
        return float("nan")
    return float(_group_auc(labels != 0, scores, np.zeros(len(labels), dtype=np.int64), 1, weights)[0])


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]; nan on empty input."""
    labels, probs = _arrays(labels=labels, probs=probs)
    if len(labels) == 0:
        return float("nan")
    p = np.clip(probs.astype(np.float64), eps, 1.0 - eps)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-group AUC averaged with group-size weights over groups holding both classes; else nan."""
    labels, scores, groups = _arrays(labels=labels, scores=scores, groups=groups)
    if len(labels) == 0:
        return float("nan")
    gid, n_groups = _codes(groups)
    per_group = _group_auc(labels != 0, scores, gid, n_groups, np.ones(len(labels)))
    sizes = np.bincount(gid, minlength=n_groups).astype(np.float64)
    valid = ~np.isnan(per_group)
    if not valid.any():
        return float("nan")
    return float(np.sum(per_group[valid] * sizes[valid]) / np.sum(sizes[valid]))


def _joint_key(*codes: np.ndarray) -> np.ndarray:
    """One int64 key per row that orders rows as the tuple of their non-negative integer `codes` does, first
    code first: one sort of integers instead of a lexicographic sort (`np.lexsort`) of several arrays. A key
    that would pass 2**62 is re-coded densely before the next code joins it."""
    key = codes[0].astype(np.int64)
    span = int(key.max(initial=0)) + 1
    for code in codes[1:]:
        width = int(code.max(initial=0)) + 1
        if span * width >= 1 << 62:
            key, span = _codes(key)
        key = key.astype(np.int64) * width + code
        span *= width
    return key


def _tied_pairs(*keys: np.ndarray) -> int:
    """Number of unordered pairs of rows that agree on every key (dense codes)."""
    _, counts = np.unique(_joint_key(*keys), return_counts=True)
    counts = counts.astype(np.int64)
    return int(np.sum(counts * (counts - 1) // 2))


def _inversions(gid: np.ndarray, ranks: np.ndarray) -> int:
    """Pairs i < j within a group with ranks[i] > ranks[j]; rows sorted by `gid`.

    Bottom-up merge counting, vectorised over groups: at the level with block size b
    every pair whose positions first fall into sibling blocks (left, right) is counted
    by one searchsorted over the left blocks' sorted (segment, rank) keys.
    """
    n = len(ranks)
    if n < 2:
        return 0
    group_start = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
    sizes = np.diff(np.r_[group_start, n])
    pos = np.arange(n) - np.repeat(group_start, sizes)  # position within the group
    span = int(ranks.max()) + 1
    total, block = 0, 1
    while block < sizes.max():
        pair_block = pos // (2 * block)
        segment = np.cumsum(np.r_[True, (gid[1:] != gid[:-1]) | (pair_block[1:] != pair_block[:-1])])
        keys = segment.astype(np.int64) * span + ranks
        left = (pos // block) % 2 == 0
        left_keys = np.sort(keys[left])
        right_seg, right_keys = segment[~left].astype(np.int64), keys[~left]
        above = np.searchsorted(left_keys, (right_seg + 1) * span) - np.searchsorted(left_keys, right_keys, "right")
        total += int(above.sum())
        block *= 2
    return total


def pairwise_agreement(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray) -> float:
    """Share of same-group pairs with differing teacher scores that the student orders alike (ties 1/2).

    Pooled over all such pairs; nan if there are none. O(n log n log m) for groups of size up to m.
    """
    teacher, student, groups = _arrays(teacher=teacher, student=student, groups=groups)
    if len(teacher) == 0:
        return float("nan")
    gid, _ = _codes(groups)
    t, _ = _codes(teacher)
    s, _ = _codes(student)
    sizes = np.bincount(gid).astype(np.int64)
    teacher_differs = int(np.sum(sizes * (sizes - 1) // 2)) - _tied_pairs(gid, t)
    if teacher_differs == 0:
        return float("nan")
    student_ties = _tied_pairs(gid, s) - _tied_pairs(gid, t, s)  # student tied, teacher not
    order = np.argsort(_joint_key(gid, t, s), kind="stable")  # by group, teacher, then student: within teacher
    # ties students ascend, so inversions = discordant pairs
    discordant = _inversions(gid[order], s[order])
    return (teacher_differs - discordant - 0.5 * student_ties) / teacher_differs


def _rank_in_group(scores: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """0-based rank of each row within its group, highest score first, ties broken by row index."""
    n = len(scores)
    descending, _ = _codes(-scores.astype(np.float64))
    order = np.argsort(_joint_key(gid, descending), kind="stable")  # stable: ties in row order
    sorted_gid = gid[order]
    starts = _run_starts(sorted_gid)
    within = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = within
    return ranks


def _recall(t_rank: np.ndarray, s_rank: np.ndarray, gid: np.ndarray, n_groups: int, k: int, k_student: int) -> float:
    if k < 1 or k_student < 1:
        raise ValueError(f"k and k_student must be >= 1, got k={k}, k_student={k_student}")
    sizes = np.bincount(gid, minlength=n_groups)
    hits = np.bincount(gid, (t_rank < k) & (s_rank < k_student), minlength=n_groups)
    eligible = sizes > max(k, k_student)  # smaller groups fit in the student's top list whole: trivially 1
    return float(np.mean(hits[eligible] / k)) if eligible.any() else float("nan")


def recall_at_k(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray, k: int, k_student: int) -> float:
    """Mean over groups with more than max(k, k_student) items of the share of the teacher's top k in the
    student's top k_student (a smaller group would fit in the student's list whole).

    Top lists sort by score, highest first; tied scores are ordered by row index (earlier rows first).
    Returns nan when no group is large enough.
    """
    teacher, student, groups = _arrays(teacher=teacher, student=student, groups=groups)
    gid, n_groups = _codes(groups)
    return _recall(_rank_in_group(teacher, gid), _rank_in_group(student, gid), gid, n_groups, k, k_student)


@dataclass(frozen=True)
class Consistency:
    """How well the student reproduces the teacher's ordering within groups."""

    pairwise_agreement: float
    recall: dict[str, float]  # "recall@{k}_in_{k_student}" -> value
    groups: int


def consistency(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray,
                ks: tuple[tuple[int, int], ...] = DEFAULT_KS) -> Consistency:
    """Pairwise agreement and recall@k-in-k_student for every (k, k_student) in `ks`."""
    teacher, student, groups = _arrays(teacher=teacher, student=student, groups=groups)
    gid, n_groups = _codes(groups)
    t_rank, s_rank = _rank_in_group(teacher, gid), _rank_in_group(student, gid)
    recall = {f"recall@{k}_in_{ks_}": _recall(t_rank, s_rank, gid, n_groups, k, ks_) for k, ks_ in ks}
    return Consistency(pairwise_agreement(teacher, student, groups), recall, n_groups)
