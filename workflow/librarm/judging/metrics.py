"""Judge metrics on a labeled benchmark: per-subset accuracy, Libra score, macro-F1, confusion,
parse rates, per-generator accuracy, a problem-prior baseline and AUROC for scalar scores.
Intervals are in `stats`."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

# Per-item count vector; every metric is a function of these counts summed over a set of items.
# pred None (no verdict) counts as wrong everywhere except *_parsed_only.
_F = ("n", "correct", "tp", "fp", "fn", "tn", "parsed", "parsed_correct", "truncated")
_IDX = {f: i for i, f in enumerate(_F)}


def item_counts(label: int, pred: int | None, truncated: bool = False) -> np.ndarray:
    v = np.zeros(len(_F), dtype=np.int64)
    v[_IDX["n"]] = 1
    v[_IDX["truncated"]] = int(truncated)
    eff = pred if pred is not None else 1 - label          # no verdict: scored as the wrong class
    v[_IDX["correct"]] = int(eff == label)
    v[_IDX["tp"]] = int(label == 1 and eff == 1)
    v[_IDX["fp"]] = int(label == 0 and eff == 1)
    v[_IDX["fn"]] = int(label == 1 and eff == 0)
    v[_IDX["tn"]] = int(label == 0 and eff == 0)
    if pred is not None:
        v[_IDX["parsed"]] = 1
        v[_IDX["parsed_correct"]] = int(pred == label)
    return v


def _safe(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def accuracy(c: np.ndarray) -> float:
    return _safe(c[..., _IDX["correct"]], c[..., _IDX["n"]])


def macro_f1(c: np.ndarray) -> float:
    tp, fp, fn, tn = (c[..., _IDX[k]] for k in ("tp", "fp", "fn", "tn"))
    f1_pos = _safe(2 * tp, 2 * tp + fp + fn)
    f1_neg = _safe(2 * tn, 2 * tn + fn + fp)
    return (f1_pos + f1_neg) / 2


def vec_accuracy(c: np.ndarray) -> np.ndarray:
    n = c[..., _IDX["n"]]
    return np.divide(c[..., _IDX["correct"]], n, out=np.zeros(n.shape, dtype=float), where=n > 0)


def vec_macro_f1(c: np.ndarray) -> np.ndarray:
    tp, fp, fn, tn = (c[..., _IDX[k]].astype(float) for k in ("tp", "fp", "fn", "tn"))
    d1, d0 = 2 * tp + fp + fn, 2 * tn + fn + fp
    f1 = np.divide(2 * tp, d1, out=np.zeros_like(tp), where=d1 > 0)
    f0 = np.divide(2 * tn, d0, out=np.zeros_like(tn), where=d0 > 0)
    return (f1 + f0) / 2


def summarize(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """items: {label, pred (0/1/None), subset, model, question[, truncated]} -> metrics dict."""
    by_subset: dict[str, np.ndarray] = {}
    by_gen: dict[str, np.ndarray] = {}
    total = np.zeros(len(_F), dtype=np.int64)
    conf = {"label_1": {"pred_1": 0, "pred_0": 0, "none": 0}, "label_0": {"pred_1": 0, "pred_0": 0, "none": 0}}
    for it in items:
        for key in ("subset", "model"):       # read_bench checks these; a caller that did not gets one line
            if not isinstance(it[key], str):
                raise ValueError(f"item {it.get('index')!r}: field {key!r}: expected a string, "
                                 f"got {type(it[key]).__name__}")
        v = item_counts(it["label"], it["pred"], bool(it.get("truncated")))
        by_subset[it["subset"]] = by_subset.get(it["subset"], 0) + v
        by_gen[it["model"]] = by_gen.get(it["model"], 0) + v
        total += v
        conf[f"label_{it['label']}"]["none" if it["pred"] is None else f"pred_{it['pred']}"] += 1
    subset_acc = {s: round(accuracy(c), 6) for s, c in sorted(by_subset.items())}
    n = int(total[_IDX["n"]])
    return {
        "libra_score": round(float(np.mean(list(subset_acc.values()))), 6) if subset_acc else 0.0,
        "subset_accuracy": subset_acc,
        "accuracy": round(accuracy(total), 6),
        "macro_f1": round(macro_f1(total), 6),
        "confusion": conf,
        "accuracy_parsed_only": round(_safe(total[_IDX["parsed_correct"]], total[_IDX["parsed"]]), 6),
        "unparsed_rate": round(_safe(n - total[_IDX["parsed"]], n), 6),
        "truncated_rate": round(_safe(total[_IDX["truncated"]], n), 6),
        "generator_accuracy": {g: round(accuracy(c), 6) for g, c in sorted(by_gen.items())},
        "n_items": n,
        "n_problems": len({(it["subset"], it["question"]) for it in items}),
    }


def problem_features(item: Mapping[str, Any], subsets: Sequence[str], generators: Sequence[str]) -> list[float]:
    """What a judge could know without reading the response: the subset, the generator, and how
    long and how numeric the question is (a proxy for difficulty)."""
    q = item["question"]
    return ([float(item["subset"] == s) for s in subsets] + [float(item["model"] == g) for g in generators]
            + [float(np.log1p(len(q))), float(sum(ch.isdigit() for ch in q)), float(sum(ch in "+-*/^" for ch in q))])


def problem_prior_predictions(items: Sequence[Mapping[str, Any]], seed: int = 0, folds: int = 2) -> list[int]:
    """A shortcut baseline: predict each item's label from problem-level features only, with a
    logistic regression fit on OTHER problems (problems are split into `folds` by a seeded hash;
    each fold is predicted by the model fit on the rest). A judge that does not beat it has learned
    problem difficulty, not response correctness. On a bench balanced per subset and generator it
    sits near 50%. (A leave-one-out rate inside a problem's own items predicts AGAINST the label
    in balanced clusters, which is why it is not used.)"""
    from sklearn.linear_model import LogisticRegression

    from librarm.run.io import stable_hash

    if not items:
        return []
    subsets = sorted({it["subset"] for it in items})
    gens = sorted({it["model"] for it in items})
    x = np.array([problem_features(it, subsets, gens) for it in items])
    y = np.array([int(it["label"]) for it in items])
    fold = np.array([int(stable_hash(seed, "prior-fold", it["subset"], it["question"]), 16) % folds for it in items])
    preds = np.zeros(len(items), dtype=int)
    for f in range(folds):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        if not train.any() or len(set(y[train])) < 2:
            preds[test] = int(2 * y[train].sum() >= train.sum()) if train.any() else 1
            continue
        mu, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
        clf = LogisticRegression(max_iter=1000).fit((x[train] - mu) / sd, y[train])
        preds[test] = clf.predict((x[test] - mu) / sd)
    return [int(p) for p in preds]


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Rank-based AUROC (ties get half credit); None when one class is absent."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):                       # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def best_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The threshold (predict 1 when score >= t) with the highest accuracy among the midpoints
    between consecutive distinct scores, so it always splits the scores it was chosen on (a
    threshold outside their range would answer one class for everything). Ties go to the
    threshold nearest the median score. With a single distinct score there is nothing to split:
    that score is returned (everything is called correct)."""
    sc = np.asarray(scores, dtype=float)
    s = np.unique(sc)
    if len(s) < 2:
        return float(s[0]) if len(s) else 0.0
    cands = (s[:-1] + s[1:]) / 2
    y = np.asarray(labels)
    accs = np.array([float(np.mean((sc >= t).astype(int) == y)) for t in cands])
    best = np.flatnonzero(accs == accs.max())
    median = float(np.median(sc))
    return float(cands[best[np.argmin(np.abs(cands[best] - median))]])


