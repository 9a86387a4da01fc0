"""librarm.stats: McNemar (reference only), the paired problem-clustered bootstrap and the cluster
sign-flip permutation test for two judges on the same items, p-value display, problem-level
bootstrap intervals of the bench metrics and of per-problem means, the sign-flip test, Pearson's r
with its exact permutation p, and the gain correlation."""
import numpy as np
import pytest
from conftest import item

from librarm.judging.metrics import summarize
from librarm.stats import (
    bootstrap_intervals,
    bootstrap_means,
    format_p,
    gain_correlation,
    hierarchical_bootstrap,
    hierarchical_draws,
    mcnemar_exact,
    paired_comparison,
    pearson,
    permutation_p,
    sign_flip_p,
)


# ----------------------------------------------------------------------------- paired comparison of two judges
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


# ----------------------------------------------------------------------------- bootstrap intervals
def _correlated(n_problems=60, per_problem=10, seed=0):
    """Items of one problem share its difficulty: the judge is right on all or none of them."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_problems):
        right = rng.random() < 0.6
        for k in range(per_problem):
            label = k % 2
            items.append(item(label, label if right else 1 - label, subset="ab"[p % 2], q=f"q{p}"))
    return items


def test_problem_level_interval_wider_than_item_level():
    items = _correlated()
    clustered = bootstrap_intervals(items, resamples=2000, seed=1, cluster=True)["libra_score"]
    naive = bootstrap_intervals(items, resamples=2000, seed=1, cluster=False)["libra_score"]
    assert clustered[1] - clustered[0] > 1.5 * (naive[1] - naive[0])
    est = summarize(items)["libra_score"]
    assert clustered[0] <= est <= clustered[1]


def test_bootstrap_seeded_and_has_all_keys():
    items = _correlated(seed=2)
    a = bootstrap_intervals(items, resamples=2000, seed=5)
    assert a == bootstrap_intervals(items, resamples=2000, seed=5)
    assert {"libra_score", "accuracy", "macro_f1", "subset_accuracy.a", "subset_accuracy.b"} <= set(a)


def test_bootstrap_intervals_cover_the_mean_and_collapse_when_constant():
    rng = np.random.default_rng(0)
    pp = {"a": {f"p{i}": float(rng.random() < 0.4) for i in range(200)}, "b": {f"q{i}": 0.5 for i in range(50)}}
    ci = bootstrap_means(pp, 1000, seed=0)
    mean_a = np.mean(list(pp["a"].values()))
    assert ci["a"][0] < mean_a < ci["a"][1] and ci["a"][1] - ci["a"][0] < 0.2
    assert ci["b"] == [0.5, 0.5]
    assert ci == bootstrap_means(pp, 1000, seed=0)


# ----------------------------------------------------------------------------- sign-flip test
def test_sign_flip_p():
    assert sign_flip_p(np.zeros(10), 1000, 0) == 1.0
    assert sign_flip_p(np.full(30, 0.5), 2000, 0) < 0.001
    rng = np.random.default_rng(1)
    assert sign_flip_p(rng.normal(0, 1, 200), 2000, 0) > 0.01


# ----------------------------------------------------------------------------- correlation
def test_pearson_and_exact_permutation_p():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert pearson([1, 2], [1, 2]) is None
    # 4 points: only the identity and the reversal reach |r| = 1 among 24 orderings
    assert permutation_p([1, 2, 3, 4], [1, 2, 3, 4], 10000, 0) == pytest.approx(2 / 24, abs=1e-4)


def test_gain_correlation_on_planted_relation():
    rng = np.random.default_rng(0)
    probs = {f"p{i}": 0.3 for i in range(100)}
    pp = {"none": {"s": probs}}
    x = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.8, "e": 0.9}
    for name, v in x.items():
        pp[name] = {"s": {p: min(1.0, 0.3 + (v - 0.5) + rng.normal(0, 0.05)) for p in probs}}
    c = gain_correlation(x, pp, list(x), resamples=300, permutations=1000, seed=0)
    assert c["r"] > 0.95 and c["ci95"][0] > 0.8 and c["p_permutation"] <= 0.0167        # the smallest p of 5 points: 2/120
    assert c["labelers"] == list(x) and len(c["gain"]) == 5


def test_spearman_ranks_ties_and_its_interval_in_the_gain_correlation():
    from librarm.stats import gain_correlation, ranks, spearman

    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)      # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    probs = [f"p{i}" for i in range(20)]
    per_problem = {"none": {"s": {p: 0.2 for p in probs}}}
    x = {}
    for k, n in enumerate(["a", "b", "c", "d"]):
        per_problem[n] = {"s": {p: 0.2 + 0.1 * k + (0.05 if i % 2 else -0.05) for i, p in enumerate(probs)}}
        x[n] = 0.5 + 0.1 * k ** 2                     # monotone in the gain, not linear
    c = gain_correlation(x, per_problem, list(x), resamples=200, permutations=1000, seed=0)
    assert c["spearman"] == pytest.approx(1.0) and c["r"] < 1.0
    assert c["spearman_ci95"][0] <= 1.0 <= c["spearman_ci95"][1] + 1e-9
    assert c["spearman_p_permutation"] == pytest.approx(2 / 24, abs=1e-4)       # 4 points: 2 of 24 orderings as extreme


# ----------------------------------------------------------------------------- seeds, then problems
def test_hierarchical_bootstrap_with_one_seed_is_the_problem_bootstrap():
    rng = np.random.default_rng(0)
    vals = {"a": rng.random(200), "b": rng.random(150)}
    h = hierarchical_bootstrap({s: v[None, :] for s, v in vals.items()}, resamples=2000, seed=1)
    flat = bootstrap_means({s: {str(i): x for i, x in enumerate(v)} for s, v in vals.items()}, 2000, 1)
    assert h["mean"] == pytest.approx(np.mean([v.mean() for v in vals.values()]), abs=1e-6)
    assert h["ci95"] == pytest.approx(flat["all"], abs=0.004)
    assert h["seeds"] == [1]


def test_hierarchical_bootstrap_widens_with_between_seed_spread():
    """Three seeds whose problem-level noise is small but whose means differ by 0.3: the interval
    must cover most of the seed spread, far wider than any one seed's problem bootstrap."""
    rng = np.random.default_rng(0)
    x = rng.random((3, 300)) * 0.2 + np.array([[0.0], [0.3], [0.6]])
    h = hierarchical_bootstrap({"a": x}, resamples=2000, seed=1)
    one = hierarchical_bootstrap({"a": x[:1]}, resamples=2000, seed=1)
    assert h["mean"] == pytest.approx(x.mean(), abs=1e-6)
    assert h["ci95"][1] - h["ci95"][0] > 0.3 > 5 * (one["ci95"][1] - one["ci95"][0])
    assert h["seeds"] == [3]


def test_hierarchical_bootstrap_ratio_weights_problems_by_item_count():
    numer = {"a": np.array([[2.0, 0.0]])}         # problem 0: 2 of 2 items right; problem 1: 0 of 8
    denom = {"a": np.array([2.0, 8.0])}
    assert hierarchical_bootstrap(numer, denom, resamples=200, seed=0)["mean"] == pytest.approx(0.2)


def test_hierarchical_bootstrap_nested_levels_and_p_value():
    """Judge seeds x DPO seeds x problems: a clear positive gain has p 0 and an interval above 0; a
    zero-mean one has an interval around 0."""
    rng = np.random.default_rng(3)
    gain = rng.normal(0.1, 0.05, size=(3, 3, 120))
    h = hierarchical_bootstrap({"s": gain}, resamples=1000, seed=0)
    assert h["seeds"] == [3, 3] and h["ci95"][0] > 0 and h["p_bootstrap"] == 0
    null = hierarchical_bootstrap({"s": gain - gain.mean()}, resamples=1000, seed=0)
    assert null["ci95"][0] < 0 < null["ci95"][1] and null["p_bootstrap"] > 0.5


def test_hierarchical_bootstrap_rejects_bad_shapes():
    with pytest.raises(ValueError, match="seed axes"):
        hierarchical_bootstrap({"a": np.ones(5)})
    with pytest.raises(ValueError, match="denom"):
        hierarchical_bootstrap({"a": np.ones((2, 5))}, {"a": np.ones(4)})


def test_hierarchical_draws_share_problems_across_seed_counts_and_seeds_across_subsets():
    """Same seed: the same problem draws whatever the seed counts (x and y of one correlation draw
    line up); a seed is resampled as one model across subsets."""
    rng = np.random.default_rng(5)
    one = {"a": rng.random((1, 50)), "b": rng.random((1, 40))}
    three = {s: np.repeat(v, 3, axis=0) for s, v in one.items()}
    assert np.allclose(hierarchical_draws(one, resamples=300, seed=2)[1],
                       hierarchical_draws(three, resamples=300, seed=2)[1])
    # seed k is worth k in both subsets: each draw's subset means agree, so the mean over subsets is one of
    # the seed means averaged, never a mix of seed k in one subset and seed j in the other
    x = {s: np.broadcast_to(np.arange(3.0)[:, None], (3, 30)) for s in ("a", "b")}
    draws = hierarchical_draws(x, resamples=300, seed=0)[1]
    assert set(np.round(draws * 3, 6)) <= {float(k) for k in range(7)}
    with pytest.raises(ValueError, match="same seed axes"):
        hierarchical_draws({"a": np.ones((2, 5)), "b": np.ones((3, 5))})
