"""Judges compared beyond the headline: accuracy on generators seen in judge training vs held
out, and a shortcut probe that predicts the label from surface features only (response length,
generator, format). The paired tests live in `stats`."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from librarm.stats import item_correct


def seen_heldout_accuracy(preds: Sequence[Mapping[str, Any]], heldout: Sequence[str]) -> dict[str, float | None]:
    groups: dict[str, list[int]] = {"seen": [], "held_out": []}
    for p in preds:
        groups["held_out" if p["model"] in set(heldout) else "seen"].append(item_correct(p))
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
