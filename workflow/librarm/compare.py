"""Comparing judges on the same bench items: a paired, problem-clustered bootstrap of the
difference in Libra score with a cluster sign-flip permutation test (McNemar's exact test on
item correctness is kept for reference; it treats the items of one problem as independent); accuracy on generators
seen in judge training vs held out; and a shortcut probe that predicts the label from surface
features only (response length, generator, format)."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np


def _correct(p: Mapping[str, Any]) -> int:
    return int(p["pred"] is not None and p["pred"] == p["label"])


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def format_p(p: float | None, resamples: int) -> str:
    """A resampling p-value as text: "< 1/B" (as a number) when no resample reached the observed
    value, since the test cannot resolve anything smaller."""
    if p is None:
        return "n/a"
    if p * (resamples + 1) <= 1.0 + 1e-3:        # at the floor (p is stored rounded)
        return f"< {1.0 / resamples:.2g}"
    return f"{p:.4f}"


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
            ca, cb = _correct(pa), _correct(pb)
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
    # bootstrap p-value: how often the resampled difference falls on the other side of zero
    p_boot = float(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
    return {"diff": round(diff, 6), "ci95": [round(float(np.percentile(diffs, 2.5)), 6),
                                              round(float(np.percentile(diffs, 97.5)), 6)],
            "p_bootstrap": round(p_boot, 6),
            "p_permutation": round(cluster_sign_flip_p(cluster_mats, resamples, seed), 6), "resamples": resamples,
            "mcnemar": {"a_only": int(b_only), "b_only": int(c_only),
                                                          "p": round(mcnemar_exact(int(b_only), int(c_only)), 6)},
            "n_items": len(preds_a)}


def seen_heldout_accuracy(preds: Sequence[Mapping[str, Any]], heldout: Sequence[str]) -> dict[str, float | None]:
    groups: dict[str, list[int]] = {"seen": [], "held_out": []}
    for p in preds:
        groups["held_out" if p["model"] in set(heldout) else "seen"].append(_correct(p))
    return {k: (round(sum(v) / len(v), 6) if v else None) for k, v in groups.items()}


def surface_features(item: Mapping[str, Any], generators: Sequence[str]) -> list[float]:
    resp = item.get("response_with_cot") or item["response"]
    feats = [math.log1p(len(resp)), math.log1p(len(item["response"])), float("\\boxed" in item["response"]),
             float("<think>" in resp), float(resp.count("\n"))]
    feats += [float(item.get("model") == g) for g in generators]
    return feats


def shortcut_probe(train_items: Sequence[Mapping[str, Any]], bench_items: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Logistic regression on surface features, fit on judge-training items, predicting bench
    labels. A judge that does not beat it may be reading style, not correctness."""
    from sklearn.linear_model import LogisticRegression

    gens = sorted({it["model"] for it in train_items} | {it["model"] for it in bench_items})
    x = np.array([surface_features(it, gens) for it in train_items])
    y = np.array([it["label"] for it in train_items])
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    pred = clf.predict(np.array([surface_features(it, gens) for it in bench_items]))
    return [{"index": it["index"], "subset": it["subset"], "model": it["model"], "label": it["label"],
             "question": it["question"], "pred": int(p), "status": "parsed", "truncated": False}
            for it, p in zip(bench_items, pred)]
