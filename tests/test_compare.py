"""Comparing judges on the same items: the paired, problem-clustered bootstrap, the cluster
sign-flip permutation test, McNemar (reference only), p-value display, seen vs held-out."""
import pytest

from librarm.compare import seen_heldout_accuracy
from librarm.stats import format_p, mcnemar_exact, paired_comparison


def test_mcnemar_exact():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2 ** 10)
    assert mcnemar_exact(5, 5) == 1.0


def _preds(correct_a, correct_b, n=80):
    a, b = [], []
    for i in range(n):
        base = {"index": i, "subset": "xy"[i % 2], "model": "g", "question": f"q{i // 4}", "label": i % 2,
                "truncated": False}
        a.append({**base, "pred": base["label"] if correct_a(i) else 1 - base["label"]})
        b.append({**base, "pred": base["label"] if correct_b(i) else 1 - base["label"]})
    return a, b


def test_paired_comparison_detects_a_real_difference_and_not_a_null_one():
    a, b = _preds(lambda i: i % 10 != 0, lambda i: i % 3 == 0)
    c = paired_comparison(a, b, 2000, 0)
    assert c["diff"] > 0.3 and c["ci95"][0] > 0 and c["p_bootstrap"] < 0.05 and c["mcnemar"]["p"] < 0.05
    same = paired_comparison(a, a, 2000, 0)                 # negative twin: identical judges
    assert same["diff"] == 0 and same["mcnemar"]["p"] == 1.0 and same["p_bootstrap"] == 1.0


def test_seen_heldout():
    preds = [{"model": "g1", "pred": 1, "label": 1}, {"model": "g2", "pred": 0, "label": 1}]
    assert seen_heldout_accuracy(preds, ["g2"]) == {"seen": 1.0, "held_out": 0.0}


def test_cluster_permutation_respects_problem_clustering():
    """All of A's advantage sits in 4 problems of 20 items each: McNemar (items independent) calls
    it overwhelming, while a test that swaps judges per problem sees 4 problems and cannot."""
    a, b = [], []
    for i in range(400):
        pid = i // 20
        base = {"index": i, "subset": "s", "model": "g", "question": f"q{pid}", "label": 1, "truncated": False}
        a.append({**base, "pred": 1})
        b.append({**base, "pred": 0 if pid < 4 else 1})
    c = paired_comparison(a, b, 2000, 0)
    assert c["mcnemar"]["p"] < 1e-6
    assert c["p_permutation"] > 0.05


def test_cluster_permutation_floor_is_printed_as_less_than_one_over_b():
    a, b = _preds(lambda i: True, lambda i: i % 4 == 0, n=400)
    c = paired_comparison(a, b, 2000, 0)
    assert c["p_permutation"] == pytest.approx(1 / 2001, rel=1e-3)
    assert format_p(c["p_permutation"], 2000) == "< 0.0005"
    assert format_p(c["p_bootstrap"], 2000) == "< 0.0005"       # bootstrap p 0: no resample crossed zero
    assert format_p(0.0312, 2000) == "0.0312"
    assert paired_comparison(a, a, 2000, 0)["p_permutation"] == 1.0

