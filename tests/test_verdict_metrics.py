"""librarm.judging.verdict_metrics: a judge's k verdicts per item scored on a verifier benchmark
(ties and unparsed verdicts are no verdict and never help), calibration, best-of-K and pairwise
ranking with ties split, problem-clustered intervals, per-category and invalid breakdowns."""
import itertools

import numpy as np
import pytest

from librarm.judging.verdict_metrics import (
    METRICS,
    aggregate,
    best_of_k,
    binary_metrics,
    calibration,
    format_table,
    metrics_with_ci,
    pairwise_first,
    score_verdicts,
    unparsed_warning,
)


def rec(label, verdicts, pid, **extra):
    return {"label": label, "verdicts": verdicts, "problem_id": pid, "categories": extra.pop("categories", {}),
            **extra}


def test_aggregate_tie_is_no_verdict_and_none_is_skipped():
    assert aggregate([1, 0]) == {"first": 1, "majority": None, "p_correct": 0.5, "parsed": 2}
    assert aggregate([None, 1, 0, None]) == {"first": None, "majority": None, "p_correct": 0.5, "parsed": 2}
    assert aggregate([None, 0, 0, 1]) == {"first": None, "majority": 0, "p_correct": pytest.approx(1 / 3),
                                          "parsed": 3}
    assert aggregate([None, None])["majority"] is None and aggregate([None])["p_correct"] is None
    assert aggregate([0])["majority"] == 0
    with pytest.raises(ValueError):
        aggregate([])
    with pytest.raises(ValueError):
        aggregate([2])


def test_always_correct_judge_on_a_balanced_set():
    m = binary_metrics([1, 1, 0, 0], [1, 1, 1, 1])
    assert m["accuracy"] == 0.5 and m["balanced_accuracy"] == 0.5
    assert m["f1"] == pytest.approx(2 / 3, abs=1e-6) and m["precision"] == 0.5 and m["recall"] == 1.0
    assert m["acc_correct"] == 1.0 and m["acc_incorrect"] == 0.0 and m["harmonic_mean"] == 0.0
    assert (m["n"], m["n_correct"], m["n_incorrect"], m["unparsed_rate"]) == (4, 2, 2, 0.0)


def test_metrics_match_sklearn_when_everything_parses():
    from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    m = binary_metrics(y.tolist(), p.tolist())
    assert m["f1"] == pytest.approx(f1_score(y, p), abs=1e-6)
    assert m["precision"] == pytest.approx(precision_score(y, p), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-6)


def test_unparsed_never_improves_any_metric():
    labels = [1, 1, 1, 0, 0, 0]
    for preds in itertools.product([0, 1], repeat=len(labels)):
        base = binary_metrics(labels, list(preds))
        for i in range(len(labels)):
            m = binary_metrics(labels, [None if j == i else p for j, p in enumerate(preds)])
            for k in METRICS:
                if k == "unparsed_rate":
                    assert m[k] > base[k]
                elif base[k] is not None:
                    assert m[k] is None or m[k] <= base[k] + 1e-12, (preds, i, k)
    # on a correct item it is a miss, on an incorrect one a false alarm
    assert binary_metrics([1, 0], [None, None])["accuracy"] == 0.0
    assert binary_metrics([1, 0], [1, None])["precision"] == 0.5


def test_empty_class_gives_none_not_zero():
    m = binary_metrics([1, 1], [1, 0])
    assert m["acc_incorrect"] is None and m["balanced_accuracy"] is None and m["harmonic_mean"] is None
    assert m["accuracy"] == 0.5 and m["recall"] == 0.5


def test_brier_and_reliability_bins_by_hand():
    c = calibration([1, 0, 1, 1, 0], [1.0, 0.0, 0.6, 0.6, None], bins=2)
    assert c["n"] == 4
    assert c["brier"] == pytest.approx((0 + 0 + 0.16 + 0.16) / 4, abs=1e-6)
    assert c["bins"] == [{"bin_low": 0.0, "bin_high": 0.5, "n": 1, "mean_p": 0.0, "share_correct": 0.0},
                         {"bin_low": 0.5, "bin_high": 1.0, "n": 3, "mean_p": pytest.approx(2.2 / 3, abs=1e-6),
                          "share_correct": 1.0}]
    assert c["ece"] == pytest.approx(3 / 4 * (1 - 2.2 / 3), abs=1e-6)
    # a share like 0.7 lands in its own bin despite floating point (0.7 * 10 = 7.000000000000001)
    assert [b["bin_low"] for b in calibration([1, 1, 0], [0.7, 0.3, 0.2])["bins"]] == [0.2, 0.3, 0.7]
    assert calibration([1], [None]) == {"n": 0, "brier": None, "ece": None, "bins": []}


def test_best_of_k_splits_ties():
    items = [{"group": "a", "label": 1}, {"group": "a", "label": 0}, {"group": "a", "label": 0},
             {"group": "b", "label": 0}, {"group": "b", "label": 0}, {"label": 1}]   # no group: ignored
    # a: two tied top responses (one correct) -> 0.5; b: nothing correct -> 0
    r = best_of_k(items, [0.8, 0.8, 0.2, 1.0, None, 1.0])
    assert r == {"best_of_k": 0.25, "groups": 2, "oracle": 0.5, "random": pytest.approx(1 / 6, abs=1e-6)}
    # None ranks lowest; all None is a random pick
    assert best_of_k(items[:3], [None, 0.0, None])["best_of_k"] == 0.0
    assert best_of_k(items[:3], [None, None, None])["best_of_k"] == pytest.approx(1 / 3, abs=1e-6)


def test_pairwise_first_strict_with_ties_split():
    def grp(g, scores):
        return [{"group": g, "group_pos": i, "label": int(i == 0)} for i in range(len(scores))], scores

    cases = [grp("win", [0.9, 0.5, 0.1, None]), grp("tie", [0.5, 0.5, 0.1, 0.1]), grp("loss", [0.4, 0.5, 0.1, 0.1]),
             grp("none", [None, None, None, None])]
    items = [it for c in cases for it in c[0]]
    scores = [s for c in cases for s in c[1]]
    assert pairwise_first(items, scores) == {"pairwise_first": pytest.approx((1 + 0.5 + 0 + 0.25) / 4), "groups": 4}
    with pytest.raises(ValueError):
        pairwise_first([{"group": "x", "group_pos": 1, "label": 0}], [0.1])


def _bench(problems=30, per=8, seed=0, agree=True):
    """A judge right on all items of some problems and wrong on all of others (agree) or right
    at random (not agree); labels balanced within each problem."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(problems):
        right_problem = rng.random() < 0.6
        for i in range(per):
            label = i % 2
            right = right_problem if agree else rng.random() < 0.6
            out.append(rec(label, [label if right else 1 - label], f"p{p}"))
    return out


def test_interval_covers_the_point_and_is_seeded():
    records = _bench()
    a, b = score_verdicts(records, resamples=500, seed=3), score_verdicts(records, resamples=500, seed=3)
    assert a == b
    for k in METRICS:
        lo, hi = a["first"]["ci95"][k]
        assert lo <= a["first"][k] <= hi, k
    assert score_verdicts(records, resamples=500, seed=4)["first"]["ci95"] != a["first"]["ci95"]
    assert a["k"] == 1 and a["primary"] == "first" and "calibration" not in a["mean_p"]


def test_clustered_interval_is_wider_than_item_level():
    records = _bench(agree=True)
    labels = [r["label"] for r in records]
    preds = [r["verdicts"][0] for r in records]
    clustered = metrics_with_ci(labels, preds, [r["problem_id"] for r in records], resamples=1000)
    independent = metrics_with_ci(labels, preds, list(range(len(records))), resamples=1000)
    assert clustered["accuracy"] == independent["accuracy"]
    width = {name: m["ci95"]["accuracy"][1] - m["ci95"]["accuracy"][0]
             for name, m in (("clustered", clustered), ("independent", independent))}
    assert width["clustered"] > 2 * width["independent"]
    assert clustered["n_problems"] == 30 and independent["n_problems"] == len(records)


def test_k_samples_summary_categories_invalid_and_groups():
    rng = np.random.default_rng(0)
    records = []
    for i in range(40):
        label = i % 2
        verdicts = [int(v) if v < 2 else None for v in rng.integers(0, 3, 5)]
        cats = {"domain": ["math", "code"][i % 3 == 0]} if i % 5 else {}
        records.append(rec(label, verdicts, f"p{i // 4}", categories={**cats, "len": i % 4},
                           invalid=i % 7 == 0, group=f"g{i // 4}", group_pos=i % 4))
    s = score_verdicts(records, resamples=200)
    assert s["k"] == 5 and s["primary"] == "majority" and s["n"] == 40
    assert s["majority"]["n_problems"] == 10
    for name in ("domain", "len"):
        assert sum(m["n"] for m in s["per_category"][name].values()) == 40
    assert "(missing)" in s["per_category"]["domain"]
    inv = [r for r in records if r["invalid"]]
    expect = binary_metrics([r["label"] for r in inv], [aggregate(r["verdicts"])["majority"] for r in inv])
    assert {k: s["invalid"][k] for k in expect} == expect and s["invalid"]["n"] == len(inv)
    assert 0 <= s["mean_p"]["calibration"]["brier"] <= 1 and s["mean_p"]["auroc"] is not None
    assert s["best_of_k"]["groups"] == 10 and "pairwise" not in s      # two correct per group: not pairwise
    assert "libra" not in s and "invalid" not in score_verdicts(records[1:7], resamples=50)
    assert "per_category" not in score_verdicts(records, resamples=50, categories=False)


def test_pairwise_groups_and_libra_schema():
    records = []
    for g in range(6):
        for pos in range(4):
            label = int(pos == 0)
            records.append(rec(label, [label if (g + pos) % 3 else 1 - label], f"q{g}", group=g, group_pos=pos,
                               subset=["s1", "s2"][g % 2], model="m"))
    s = score_verdicts(records, resamples=100)
    assert s["pairwise"]["groups"] == 6 and 0 <= s["pairwise"]["pairwise_first"] <= 1
    assert s["libra"]["n_problems"] == 6 and set(s["libra"]["subset_accuracy"]) == {"s1", "s2"}
    assert s["libra"]["ci95"]["libra_score"][0] <= s["libra"]["libra_score"] <= s["libra"]["ci95"]["libra_score"][1]


def test_mixed_k_is_refused():
    with pytest.raises(ValueError, match="different numbers"):
        score_verdicts([rec(1, [1], "a"), rec(0, [0, 0], "b")])
    with pytest.raises(ValueError, match="record 0"):
        score_verdicts([rec(1, [], "a")])


def test_table_and_unparsed_warning():
    records = [rec(i % 2, [None, None, i % 2], f"p{i}", categories={"kind": "x" if i < 4 else "y"})
               for i in range(8)]
    s = score_verdicts(records, resamples=50)
    table = format_table(s)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["n", "accuracy"] and lines[1].startswith("all (first)")
    assert lines[2].startswith("all (majority)") and any(line.startswith("kind=y") for line in lines)
    assert len({len(line) for line in lines[:3]}) == 1           # aligned
    warn = unparsed_warning(s)
    assert warn is not None and "66.7%" in warn and "max_new_tokens" in warn and "\n" not in warn
    assert unparsed_warning(score_verdicts([rec(1, [1], "a"), rec(0, [0], "b")], resamples=10)) is None
