"""Offline metrics against brute-force definitions and hand-worked cases."""
import itertools
import math

import numpy as np
import pytest

from trainer.evaluation.metrics import (Consistency, _joint_key, auc, consistency, gauc, logloss, pairwise_agreement,
                                        recall_at_k)


def brute_auc(labels, scores, weights=None):
    weights = np.ones(len(labels)) if weights is None else weights
    num = den = 0.0
    for i in range(len(labels)):
        for j in range(len(labels)):
            if labels[i] and not labels[j]:
                w = weights[i] * weights[j]
                den += w
                num += w * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
    return num / den if den else math.nan


def brute_gauc(labels, scores, groups):
    num = den = 0.0
    for g in set(groups.tolist()):
        idx = groups == g
        a = brute_auc(labels[idx], scores[idx])
        if not math.isnan(a):
            num += a * idx.sum()
            den += idx.sum()
    return num / den if den else math.nan


def brute_agreement(teacher, student, groups):
    num = den = 0.0
    for i, j in itertools.combinations(range(len(teacher)), 2):
        if groups[i] != groups[j] or teacher[i] == teacher[j]:
            continue
        den += 1
        same = np.sign(teacher[i] - teacher[j]) * np.sign(student[i] - student[j])
        num += 1.0 if same > 0 else 0.5 if same == 0 else 0.0
    return num / den if den else math.nan


def brute_recall(teacher, student, groups, k, k_student):
    values = []
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        if len(idx) <= max(k, k_student):
            continue
        top_t = set(sorted(idx, key=lambda i: (-teacher[i], i))[:k])
        top_s = set(sorted(idx, key=lambda i: (-student[i], i))[:k_student])
        values.append(len(top_t & top_s) / k)
    return float(np.mean(values)) if values else math.nan


def random_case(seed, n=60, levels=6, n_groups=5):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    teacher = rng.integers(0, levels, n).astype(np.float64)  # few levels: many ties
    student = rng.integers(0, levels, n).astype(np.float64)
    groups = rng.integers(0, n_groups, n)
    return rng, labels, teacher, student, groups


@pytest.mark.parametrize("seed", range(8))
def test_auc_and_gauc_match_brute_force_with_ties(seed):
    rng, labels, scores, _, groups = random_case(seed)
    weights = rng.random(len(labels)) + 0.1
    assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores))
    assert auc(labels, scores, weights) == pytest.approx(brute_auc(labels, scores, weights))
    assert gauc(labels, scores, groups) == pytest.approx(brute_gauc(labels, scores, groups))


@pytest.mark.parametrize("seed", range(8))
def test_pairwise_agreement_and_recall_match_brute_force_with_ties(seed):
    _, _, teacher, student, groups = random_case(seed, n=80, n_groups=4)
    assert pairwise_agreement(teacher, student, groups) == pytest.approx(brute_agreement(teacher, student, groups))
    for k, k_student in [(1, 1), (2, 5), (5, 10), (10, 3)]:
        assert recall_at_k(teacher, student, groups, k, k_student) == pytest.approx(
            brute_recall(teacher, student, groups, k, k_student), nan_ok=True)


def test_pairwise_agreement_matches_brute_force_on_one_large_group():
    _, _, teacher, student, _ = random_case(99, n=300, levels=40)
    groups = np.zeros(300, dtype=np.int64)
    assert pairwise_agreement(teacher, student, groups) == pytest.approx(brute_agreement(teacher, student, groups))


def test_auc_hand_cases():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert auc(np.array([1, 0]), np.array([0.9, 0.1])) == 1.0
    assert auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    # weight 3 on the negative scored above the positive: 1 good pair (w 1) vs 1 bad pair (w 3)
    assert auc(np.array([1, 0, 0]), np.array([0.5, 0.1, 0.9]), np.array([1.0, 1.0, 3.0])) == pytest.approx(0.25)


def test_nan_when_one_class_or_no_pairs():
    assert math.isnan(auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(auc(np.array([]), np.array([])))
    assert math.isnan(gauc(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]), np.array(["a", "b", "b"])))
    assert math.isnan(pairwise_agreement(np.array([1.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]), np.array([0, 0, 1])))
    assert math.isnan(recall_at_k(np.arange(4.0), np.arange(4.0), np.array([0, 0, 1, 1]), k=2, k_student=2))


def test_logloss():
    assert logloss(np.array([1, 0]), np.array([0.8, 0.3])) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert logloss(np.array([1, 0]), np.array([0.0, 1.0]), eps=1e-7) == pytest.approx(-math.log(1e-7))
    assert logloss(np.array([1.0]), np.array([1.0])) == pytest.approx(0.0, abs=1e-6)


def test_gauc_weights_groups_by_size_and_skips_single_class_groups():
    labels = np.array([1, 0, 0, 0,   1, 0,   1, 1])  # noqa: E241
    scores = np.array([0.9, 0.1, 0.2, 0.95,  0.1, 0.9,  0.3, 0.4])
    groups = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
    # a: AUC 2/3 over 4 rows, b: AUC 0 over 2 rows, c: one class, skipped
    assert gauc(labels, scores, groups) == pytest.approx((2 / 3 * 4 + 0 * 2) / 6)


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="length mismatch: labels=3, scores=2"):
        auc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="length mismatch"):
        auc(np.array([0, 1]), np.array([0.1, 0.2]), weights=np.ones(3))
    with pytest.raises(ValueError, match="length mismatch"):
        logloss(np.array([0, 1]), np.array([0.1]))
    with pytest.raises(ValueError, match="groups=1"):
        gauc(np.array([0, 1]), np.array([0.1, 0.2]), np.array([0]))
    with pytest.raises(ValueError, match="length mismatch"):
        pairwise_agreement(np.ones(3), np.ones(2), np.zeros(3))
    with pytest.raises(ValueError, match="length mismatch"):
        recall_at_k(np.ones(3), np.ones(3), np.zeros(2), 1, 1)
    with pytest.raises(ValueError, match="scores contains NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_pairwise_agreement_identical_reversed_and_tied():
    rng = np.random.default_rng(1)
    teacher = rng.random(50)
    groups = rng.integers(0, 5, 50)
    assert pairwise_agreement(teacher, teacher, groups) == 1.0
    assert pairwise_agreement(teacher, 3 * teacher + 1, groups) == 1.0  # only the order matters
    assert pairwise_agreement(teacher, -teacher, groups) == 0.0
    assert pairwise_agreement(teacher, np.zeros(50), groups) == 0.5


def test_pairwise_agreement_ignores_pairs_across_groups():
    teacher = np.array([1.0, 2.0, 3.0, 4.0])
    student = np.array([3.0, 4.0, 1.0, 2.0])  # within u1 and u2 the student agrees; across them it does not
    assert pairwise_agreement(teacher, student, np.array(["u1", "u1", "u2", "u2"])) == 1.0
    assert pairwise_agreement(teacher, student, np.array(["u1", "u1", "u1", "u1"])) == pytest.approx(2 / 6)


def test_recall_hand_made_groups():
    teacher = np.array([5, 4, 3, 2, 1, 9, 8, 7, 1, 1.0])
    student = np.array([1, 2, 3, 4, 5, 9, 1, 8, 0, 0.0])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    # group 0: teacher top-2 = {0, 1}; student top-3 = {4, 3, 2} -> 0
    # group 1: three rows, the student's top-3 would hold all of them: skipped (trivially 1)
    # group 2: two rows: skipped
    assert recall_at_k(teacher, student, groups, k=2, k_student=3) == pytest.approx(0.0)
    # group 1 with k_student=2: student top-2 = {5, 7} -> 1/2; group 0 still 0
    assert recall_at_k(teacher, student, groups, k=2, k_student=2) == pytest.approx(0.25)
    # ties break by row index: in group 2 with k=1, teacher's top-1 is row 8, student's top-1 is row 8
    assert recall_at_k(teacher[8:], student[8:], groups[8:], k=1, k_student=1) == 1.0
    with pytest.raises(ValueError, match="k and k_student must be >= 1"):
        recall_at_k(teacher, student, groups, k=0, k_student=3)


def test_consistency_collects_agreement_and_recalls():
    _, _, teacher, student, groups = random_case(3, n=80, n_groups=4)
    result = consistency(teacher, student, groups, ks=((2, 5), (5, 10)))
    assert isinstance(result, Consistency)
    assert result.groups == 4
    assert result.pairwise_agreement == pytest.approx(pairwise_agreement(teacher, student, groups))
    assert set(result.recall) == {"recall@2_in_5", "recall@5_in_10"}
    assert result.recall["recall@5_in_10"] == pytest.approx(recall_at_k(teacher, student, groups, 5, 10))
    assert set(consistency(teacher, student, groups).recall) == {"recall@10_in_50", "recall@50_in_100"}


def test_an_evaluation_result_is_strict_json_with_undefined_metrics_explained():
    import json

    from trainer.evaluation.evaluate import strict_result
    from trainer.evaluation.summary import metrics_table
    result = strict_result({"teacher": {"click": {"auc": math.nan, "logloss": 0.5}},
                            "student": {"task": "click", "auc": 0.7, "gauc": math.nan, "logloss": 0.6},
                            "consistency": {"by_k": [{"sampled": 0, "groups": 3, "pairwise_agreement": 0.8,
                                                      "recall@10_in_30": math.nan}]}})
    json.dumps(result, allow_nan=False)  # strict: raises on a NaN
    assert result["teacher"]["click"]["auc"] is None and result["consistency"]["by_k"][0]["recall@10_in_30"] is None
    assert result["undefined"] == {"teacher/click/auc": "the rows hold one class only",
                                   "student/gauc": "no group holds both classes",
                                   "consistency/by_k/sampled0/recall@10_in_30": "no group larger than 30 candidates"}
    table = metrics_table(result)
    assert "auc n/a  logloss 0.5000" in table
    assert "n/a consistency/by_k/sampled0/recall@10_in_30: no group larger than 30 candidates" in table


def test_joint_key_sorts_as_a_lexicographic_sort_of_its_codes_even_past_int64_products():
    rng = np.random.default_rng(0)
    small = [rng.integers(0, 4, 500) for _ in range(3)]  # many equal tuples: the stable order must match too
    wide = [rng.integers(0, 3_000_000, 20_000) for _ in range(3)]  # 3e6 ** 3 > 2**62: re-coded on the way
    for codes in (small, wide):
        np.testing.assert_array_equal(np.argsort(_joint_key(*codes), kind="stable"), np.lexsort(codes[::-1]))
