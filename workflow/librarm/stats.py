"""Statistics in one place: seeded bootstrap intervals (problems resampled with all their items,
stratified by subset), paired tests (cluster sign-flip permutation, sign-flip over problems,
McNemar for reference), correlation with its bootstrap interval and permutation p-value, and how
a resampling p-value is printed. Every estimator is seeded and deterministic."""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from librarm.judging.metrics import item_counts, vec_accuracy, vec_macro_f1
from librarm.run.labelers import NONE_POLICY


# ----------------------------------------------------------------------------- p-values
def format_p(p: float | None, resamples: int) -> str:
    """A resampling p-value as text: "< 1/B" (as a number) when no resample reached the observed
    value, since the test cannot resolve anything smaller."""
    if p is None:
        return "n/a"
    if p * (resamples + 1) <= 1.0 + 1e-3:        # at the floor (p is stored rounded)
        return f"< {1.0 / resamples:.2g}"
    return f"{p:.4f}"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def sign_flip_p(diffs: np.ndarray, permutations: int, seed: int) -> float:
    """Two-sided paired permutation test of mean(diffs) = 0: flip each problem's sign at random."""
    if len(diffs) == 0 or not np.any(diffs):
        return 1.0
    rng = np.random.default_rng(seed)
    obs = abs(diffs.mean())
    signs = rng.choice([-1.0, 1.0], size=(permutations, len(diffs)))
    null = np.abs((signs * diffs).mean(axis=1))
    return round(float((1 + np.sum(null >= obs - 1e-12)) / (permutations + 1)), 5)


def cluster_sign_flip_p(clusters_by_subset: Sequence[np.ndarray], resamples: int, seed: int) -> float:
    """Two-sided paired permutation test of "A and B are exchangeable": each problem's pair of
    correct counts is swapped (its difference's sign flipped) as one unit, so the items of a problem
    stay together. The statistic is the Libra-score difference (mean over subsets of the per-subset
    accuracy difference). p = (1 + #{|null| >= |observed|}) / (1 + B)."""
    rng = np.random.default_rng(seed)
    obs, null = 0.0, np.zeros(resamples)
    for mat in clusters_by_subset:               # rows: problems; columns n, correct A, correct B
        d = mat[:, 1] - mat[:, 2]
        n = mat[:, 0].sum()
        obs += d.sum() / n
        signs = rng.choice([-1.0, 1.0], size=(resamples, len(d)))
        null += (signs * d).sum(axis=1) / n
    k = len(clusters_by_subset)
    obs, null = abs(obs / k), np.abs(null / k)
    return float((1 + np.sum(null >= obs - 1e-12)) / (resamples + 1))


# ----------------------------------------------------------------------------- bootstrap intervals
def interval(draws: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap draws."""
    return [round(float(np.percentile(draws, 2.5)), 6), round(float(np.percentile(draws, 97.5)), 6)]


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided bootstrap p: twice the share of draws on the smaller side of zero (at most 1)."""
    return float(min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0))))


def draw_summary(point: float, draws: np.ndarray) -> dict[str, Any]:
    """An estimate with its bootstrap draws: mean, 95% interval, two-sided bootstrap p."""
    return {"mean": round(point, 6), "ci95": interval(draws), "p_bootstrap": round(bootstrap_p(draws), 6)}


def bootstrap_intervals(items: Sequence[Mapping[str, Any]], resamples: int = 2000, seed: int = 0,
                        cluster: bool = True, alpha: float = 0.05) -> dict[str, list[float]]:
    """Percentile intervals for libra_score, accuracy, macro_f1 and each subset's accuracy.

    Stratified by subset; within a subset, whole problems (all their items) are resampled when
    `cluster` is True, single items otherwise. Items of one problem are correlated, so the
    item-level interval is too narrow."""
    subsets = sorted({it["subset"] for it in items})
    rng = np.random.default_rng(seed)
    per_subset_draws = []
    for s in subsets:
        groups: dict[Any, np.ndarray] = {}
        for i, it in enumerate(items):
            if it["subset"] != s:
                continue
            key = it["question"] if cluster else i
            groups[key] = groups.get(key, 0) + item_counts(it["label"], it["pred"], bool(it.get("truncated")))
        mat = np.stack(list(groups.values()))                      # clusters x fields
        idx = rng.integers(0, len(mat), size=(resamples, len(mat)))
        per_subset_draws.append(mat[idx].sum(axis=1))              # resamples x fields
    draws = np.stack(per_subset_draws)                              # subsets x resamples x fields
    sub_acc = vec_accuracy(draws)                                   # subsets x resamples
    total = draws.sum(axis=0)
    stats = {"libra_score": sub_acc.mean(axis=0), "accuracy": vec_accuracy(total), "macro_f1": vec_macro_f1(total)}
    for k, s in enumerate(subsets):
        stats[f"subset_accuracy.{s}"] = sub_acc[k]
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {k: [round(float(np.percentile(v, lo)), 6), round(float(np.percentile(v, hi)), 6)] for k, v in stats.items()}


def bootstrap_means(per_problem: Mapping[str, Mapping[str, float]], resamples: int, seed: int) -> dict[str, list[float]]:
    """95% percentile intervals of avg@k, resampling problems within each subset (`all`: the mean
    over subsets of the resampled means). Feed per-problem differences to get a paired interval."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    subset_draws = []
    for s in sorted(per_problem):
        vals = np.array(list(per_problem[s].values()), dtype=float)
        idx = rng.integers(0, len(vals), size=(resamples, len(vals)))
        draws = vals[idx].mean(axis=1)
        subset_draws.append(draws)
        out[s] = [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)]
    if subset_draws:
        allm = np.mean(subset_draws, axis=0)
        out["all"] = [round(float(np.percentile(allm, 2.5)), 4), round(float(np.percentile(allm, 97.5)), 4)]
    return out


def per_problem_accuracy(graded: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """subset -> problem_id -> share of its samples graded correct."""
    acc: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in graded:
        acc[r["subset"]][r["problem_id"]].append(int(r["correct"]))
    return {s: {p: sum(v) / len(v) for p, v in probs.items()} for s, probs in acc.items()}


# ----------------------------------------------------------------------------- paired judge comparison
def item_correct(pred: Mapping[str, Any]) -> int:
    return int(pred["pred"] is not None and pred["pred"] == pred["label"])


def paired_comparison(preds_a: Sequence[Mapping[str, Any]], preds_b: Sequence[Mapping[str, Any]],
                      resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Difference A - B in Libra score (mean of subset accuracies), joined by item index, with a
    percentile interval from a bootstrap that resamples problems within subsets (the same draws
    for both judges), a bootstrap p-value, a cluster sign-flip permutation p-value (the test to
    read), and McNemar's item-level test (reference only: it ignores problem clustering)."""
    b_by_index = {p["index"]: p for p in preds_b}
    if set(b_by_index) != {p["index"] for p in preds_a}:
        raise ValueError("the two prediction files do not cover the same items")
    subsets = sorted({p["subset"] for p in preds_a})
    rng = np.random.default_rng(seed)
    diffs_sub, point, cluster_mats = [], [], []
    b_only = c_only = 0
    for s in subsets:
        clusters: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])   # n, correct A, correct B
        for pa in preds_a:
            if pa["subset"] != s:
                continue
            pb = b_by_index[pa["index"]]
            ca, cb = item_correct(pa), item_correct(pb)
            b_only += ca and not cb
            c_only += cb and not ca
            row = clusters[pa["question"]]
            row[0] += 1
            row[1] += ca
            row[2] += cb
        mat = np.array(list(clusters.values()), dtype=float)
        cluster_mats.append(mat)
        point.append((mat[:, 1].sum() - mat[:, 2].sum()) / mat[:, 0].sum())
        idx = rng.integers(0, len(mat), size=(resamples, len(mat)))
        draw = mat[idx].sum(axis=1)
        diffs_sub.append((draw[:, 1] - draw[:, 2]) / draw[:, 0])
    diffs = np.mean(diffs_sub, axis=0)
    diff = float(np.mean(point))
    return {"diff": round(diff, 6), "ci95": interval(diffs), "p_bootstrap": round(bootstrap_p(diffs), 6),
            "p_permutation": round(cluster_sign_flip_p(cluster_mats, resamples, seed), 6), "resamples": resamples,
            "mcnemar": {"a_only": int(b_only), "b_only": int(c_only),
                                                          "p": round(mcnemar_exact(int(b_only), int(c_only)), 6)},
            "n_items": len(preds_a)}


# ----------------------------------------------------------------------------- correlation
def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def ranks(v: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank (what Spearman's rho correlates)."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    out = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    return pearson(ranks(x), ranks(y))


def permutation_p(x: Sequence[float], y: Sequence[float], permutations: int, seed: int) -> float | None:
    """Two-sided p of Pearson r under shuffled y: exact over all orderings when there are few points."""
    r = pearson(x, y)
    if r is None:
        return None
    y = list(y)
    if math.factorial(len(y)) <= permutations:
        null = [pearson(x, p) for p in itertools.permutations(y)]
    else:
        rng = np.random.default_rng(seed)
        null = [pearson(x, rng.permutation(y)) for _ in range(permutations)]
    null = [abs(v) for v in null if v is not None]
    return round(sum(v >= abs(r) - 1e-12 for v in null) / len(null), 5)


def gain_correlation(x: Mapping[str, float], per_problem: Mapping[str, Mapping[str, Mapping[str, float]]],
                     names: Sequence[str], resamples: int, permutations: int, seed: int,
                     base_policy: str = NONE_POLICY) -> dict:
    """Pearson r and Spearman rho between a judge measure x and the downstream gain over `none`
    (avg@k, mean over subsets) across the fitted labelers; the intervals resample the eval problems
    (the gains' noise), the p-values permute the gains among the labelers."""
    names = [n for n in names if n in per_problem and x.get(n) is not None]
    base = per_problem[base_policy]
    subsets = sorted(base)
    ids = {s: sorted(base[s]) for s in subsets}

    def gains(idx):
        out = []
        for n in names:
            out.append(np.mean([np.mean([per_problem[n][s][ids[s][i]] - base[s][ids[s][i]] for i in idx[s]])
                                for s in subsets]))
        return out

    full = {s: np.arange(len(ids[s])) for s in subsets}
    g = gains(full)
    xs = [x[n] for n in names]
    r = pearson(xs, g)
    rng = np.random.default_rng(seed)
    rho = spearman(xs, g)
    draws, rho_draws = [], []
    if r is not None:
        for _ in range(resamples):
            idx = {s: rng.integers(0, len(ids[s]), len(ids[s])) for s in subsets}
            resampled = gains(idx)
            v = pearson(xs, resampled)
            if v is not None:
                draws.append(v)
            v = spearman(xs, resampled)
            if v is not None:
                rho_draws.append(v)
    slope, intercept = (float(v) for v in np.polyfit(xs, g, 1)) if r is not None else (None, None)
    return {"labelers": names, "x": xs, "gain": [round(v, 4) for v in g], "r": round(r, 4) if r is not None else None,
            "ci95": [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)]
            if draws else None,
            "p_permutation": permutation_p(xs, g, permutations, seed), "slope": slope, "intercept": intercept,
            "spearman": round(rho, 4) if rho is not None else None,
            "spearman_ci95": [round(float(np.percentile(rho_draws, 2.5)), 4), round(float(np.percentile(rho_draws, 97.5)), 4)]
            if rho_draws else None,
            "spearman_p_permutation": permutation_p(ranks(xs), ranks(g), permutations, seed) if rho is not None else None}


# ----------------------------------------------------------------------------- seeds, then problems
def draw_seed_indices(levels: Sequence[int], resamples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Nested resamples of seed levels (e.g. [judge seeds, DPO seeds]): level k's indices have shape
    [resamples, S1, ..., Sk], so every drawn unit of a level draws its own units of the next."""
    out, shape = [], [resamples]
    for n in levels:
        shape = [*shape, int(n)]
        out.append(rng.integers(0, int(n), size=shape))
    return out


def _nested_seed_means(x: np.ndarray, seed_idx: Sequence[np.ndarray]) -> np.ndarray:
    """[S1, ..., Sk, P] -> [resamples, P]: the seeds of every level taken as seed_idx draws them,
    then averaged."""
    resamples = seed_idx[0].shape[0]
    cur = np.broadcast_to(x, (resamples, *x.shape))
    for axis, idx in enumerate(seed_idx, start=1):
        cur = np.take_along_axis(cur, idx.reshape(*idx.shape, *[1] * (cur.ndim - axis - 1)), axis=axis)
    return cur.reshape(resamples, -1, x.shape[-1]).mean(axis=1)


def hierarchical_draws(numer: Mapping[str, np.ndarray], denom: Mapping[str, np.ndarray] | None = None,
                       resamples: int = 2000, seed: int = 0,
                       seed_idx: Sequence[np.ndarray] | None = None) -> tuple[float, np.ndarray]:
    """The point estimate and `resamples` bootstrap draws of a mean over subsets of ratio estimates
    sum(numer) / sum(denom) over problems. Each draw resamples the seeds (every level of numer's
    leading axes, nested; the same seeds for every subset, since a seed's model answers them all),
    then the problems within each subset.

    numer[subset]: [S1, ..., Sk, P] per seed and problem (a judge's correct count on the problem's
    items, a policy's avg@k, or a paired difference of either); denom[subset]: [P] (the problem's
    item count), or None for a plain mean. The problem draws depend only on (seed, subset sizes),
    so calls with the same seed draw the same problems whatever their seed counts; seed_idx
    (draw_seed_indices) shares the seed draws too, e.g. a judge's x and its policy's y in one
    correlation draw."""
    shapes = {np.asarray(v).shape[:-1] for v in numer.values()}
    if len(shapes) != 1 or not next(iter(shapes)):
        raise ValueError(f"numer needs the same seed axes in every subset and a problem axis, got "
                         f"{ {s: np.asarray(v).shape for s, v in numer.items()} }")
    levels = next(iter(shapes))
    if seed_idx is None:
        seed_idx = draw_seed_indices(levels, resamples, np.random.default_rng([seed, 2]))
    problem_rng = np.random.default_rng([seed, 1])
    point, draws = [], []
    for s in sorted(numer):
        x = np.asarray(numer[s], dtype=float)
        d = np.ones(x.shape[-1]) if denom is None else np.asarray(denom[s], dtype=float)
        if d.shape != (x.shape[-1],):
            raise ValueError(f"{s}: denom has shape {d.shape}, numer has {x.shape[-1]} problems")
        point.append(x.reshape(-1, x.shape[-1]).mean(axis=0).sum() / d.sum())
        idx = problem_rng.integers(0, x.shape[-1], size=(resamples, x.shape[-1]))
        per_problem = _nested_seed_means(x, seed_idx)                         # resamples x P
        draws.append(np.take_along_axis(per_problem, idx, axis=1).sum(axis=1) / d[idx].sum(axis=1))
    return float(np.mean(point)), np.mean(draws, axis=0)


def hierarchical_bootstrap(numer: Mapping[str, np.ndarray], denom: Mapping[str, np.ndarray] | None = None,
                           resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """hierarchical_draws summarised: the estimate, its 95% percentile interval (between-seed
    variance included) and the bootstrap's two-sided p (share of draws on the other side of 0).
    With one seed at every level this is the problem bootstrap."""
    point, draw = hierarchical_draws(numer, denom, resamples, seed)
    return {**draw_summary(point, draw), "seeds": list(np.asarray(next(iter(numer.values()))).shape[:-1]),
            "resamples": resamples}
