"""A judge scored on a verifier benchmark from k sampled verdicts per item: the first-sample and
majority views (accuracy, balanced accuracy, precision/recall/F1 with "correct" as the positive
class, accuracy on correct and on incorrect items and their harmonic mean, unparsed rate), each
with a problem-clustered bootstrap interval; calibration and AUROC of the share of samples that
say correct; per-category and invalid-item breakdowns; best-of-K and pairwise ranking for grouped
items; and a terminal table.

Record: {label 0/1, verdicts [k x (1 | 0 | None)], problem_id, categories {name: value}
[, invalid][, group, group_pos][, subset, model]}.

Unparsed verdicts never help: an item without a verdict is scored as the wrong class (the policy
of `metrics.item_counts`, read here through `stats.item_correct`), i.e. a false negative on a
correct item and a false positive on an incorrect one. So turning any verdict into None can only
lower (or keep) every score: accuracy, balanced accuracy, precision, recall, F1, both per-class
accuracies and their harmonic mean. A majority tie (as many 1s as 0s among the parsed samples)
is no verdict too. A rate whose denominator is empty (recall on a set without correct items,
precision with nothing called correct) is None, not 0. The mean-p view (calibration, AUROC)
is a property of the scores the judge did give: it covers items with at least one parsed verdict,
and reports how many (`n_scored`)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from librarm.judging.metrics import auroc, summarize
from librarm.stats import bootstrap_intervals, interval, item_correct

VIEWS = ("first", "majority")
METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "acc_correct", "acc_incorrect",
           "harmonic_mean", "unparsed_rate")
MISSING = "(missing)"                       # the category value of an item that does not name that category


# ----------------------------------------------------------------------------- verdicts of one item
def aggregate(verdicts: Sequence[int | None]) -> dict[str, Any]:
    """k sampled verdicts -> first, majority (None when nothing parsed or tied), p_correct (share of
    parsed verdicts that say correct; None when nothing parsed) and the parsed count."""
    if not len(verdicts):
        raise ValueError("verdicts: expected at least one verdict, got an empty list")
    bad = [v for v in verdicts if v not in (0, 1, None)]
    if bad:
        raise ValueError(f"verdicts: expected 1, 0 or None, got {bad[0]!r}")
    parsed = [int(v) for v in verdicts if v is not None]
    yes = sum(parsed)
    majority = None if 2 * yes == len(parsed) else int(2 * yes > len(parsed))
    first = None if verdicts[0] is None else int(verdicts[0])
    return {"first": first, "majority": majority, "p_correct": yes / len(parsed) if parsed else None,
            "parsed": len(parsed)}


# ----------------------------------------------------------------------------- binary metrics from counts
# Per-item counts: correct item, true positive, incorrect item, true negative, no verdict.
_FIELDS = ("pos", "tp", "neg", "tn", "unparsed")


def _counts(labels: Sequence[int], preds: Sequence[int | None]) -> np.ndarray:
    """items x _FIELDS; an unparsed prediction is never right (a miss on a correct item, a false
    alarm on an incorrect one)."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    rows = []
    for y, p in zip(labels, preds):
        if y not in (0, 1):
            raise ValueError(f"label: expected 0 or 1, got {y!r}")
        c = item_correct({"label": y, "pred": p})
        rows.append((y, y * c, 1 - y, (1 - y) * c, int(p is None)))
    return np.array(rows, dtype=np.int64).reshape(-1, len(_FIELDS))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = np.full(np.broadcast(a, b).shape, np.nan)
    return np.divide(a, b, out=out, where=b > 0)


def _rates(c: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of summed counts [..., _FIELDS] (one total or a stack of bootstrap draws); NaN
    where a denominator is empty."""
    pos, tp, neg, tn, unparsed = (c[..., i].astype(float) for i in range(len(_FIELDS)))
    fp, fn = neg - tn, pos - tp
    tpr, tnr = _div(tp, pos), _div(tn, neg)
    harmonic = np.where((tpr == 0) | (tnr == 0), 0.0, _div(2 * tpr * tnr, tpr + tnr))
    harmonic = np.where(np.isnan(tpr) | np.isnan(tnr), np.nan, harmonic)
    return {"accuracy": _div(tp + tn, pos + neg), "balanced_accuracy": (tpr + tnr) / 2,
            "precision": _div(tp, tp + fp), "recall": tpr, "f1": _div(2 * tp, 2 * tp + fp + fn),
            "acc_correct": tpr, "acc_incorrect": tnr, "harmonic_mean": harmonic,
            "unparsed_rate": _div(unparsed, pos + neg)}


def _point(value: np.ndarray) -> float | None:
    v = float(value)
    return None if np.isnan(v) else round(v, 6)


def _from_counts(counts: np.ndarray) -> dict[str, Any]:
    total = counts.sum(axis=0)
    rates = _rates(total)
    return {**{m: _point(rates[m]) for m in METRICS}, "n": int(total[0] + total[2]),
            "n_correct": int(total[0]), "n_incorrect": int(total[2])}


def binary_metrics(labels: Sequence[int], preds: Sequence[int | None]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, precision/recall/F1 (correct = positive), accuracy on correct
    items (TPR) and on incorrect items (TNR), their harmonic mean (0 when either is 0; ProcessBench's
    F1), unparsed rate and counts. None (unparsed) counts as the wrong class; None for a metric
    means its denominator is empty."""
    return _from_counts(_counts(labels, preds))


# ----------------------------------------------------------------------------- problem-clustered bootstrap
def _cluster_sums(per_problem: np.ndarray, resamples: int, seed: int, chunk: int = 256) -> np.ndarray:
    """resamples x fields: the counts summed over problems drawn with replacement (as many as there
    are), every item of a drawn problem counted together. Seeded; chunked to bound memory."""
    rng = np.random.default_rng(seed)
    n = len(per_problem)
    out = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        weights = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)
        out.append(weights @ per_problem)
    return np.concatenate(out) if out else np.zeros((0, per_problem.shape[1]))


def _ci(draws: np.ndarray) -> list[float] | None:
    d = draws[~np.isnan(draws)]
    return interval(d) if len(d) else None


def metrics_with_ci(labels: Sequence[int], preds: Sequence[int | None], problems: Sequence[Hashable],
                    resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """binary_metrics plus "ci95": {metric: [low, high]}, the 2.5/97.5 percentiles of a bootstrap
    that resamples problems (all items of a drawn problem together); None where no draw defines it."""
    counts = _counts(labels, preds)
    out = _from_counts(counts)
    if not len(counts):
        return {**out, "n_problems": 0, "ci95": {m: None for m in METRICS}}
    keys = {p: i for i, p in enumerate(dict.fromkeys(problems))}
    per_problem = np.zeros((len(keys), len(_FIELDS)), dtype=np.int64)
    np.add.at(per_problem, [keys[p] for p in problems], counts)
    draws = _rates(_cluster_sums(per_problem, resamples, seed))
    return {**out, "n_problems": len(keys), "ci95": {m: _ci(draws[m]) for m in METRICS}}


# ----------------------------------------------------------------------------- calibration
def calibration(labels: Sequence[int], p_correct: Sequence[float | None], bins: int = 10) -> dict[str, Any]:
    """Brier score and expected calibration error over the items with a p_correct, and the
    reliability table: equal-width bins on [0, 1] (the last one closed), non-empty bins only."""
    pairs = [(y, p) for y, p in zip(labels, p_correct) if p is not None]
    if not pairs:
        return {"n": 0, "brier": None, "ece": None, "bins": []}
    y = np.array([a for a, _ in pairs], dtype=float)
    p = np.array([b for _, b in pairs], dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p_correct: expected values in [0, 1]")
    which = np.clip(np.floor(p * bins + 1e-9).astype(int), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        mean_p, share = float(p[mask].mean()), float(y[mask].mean())
        ece += mask.sum() / len(p) * abs(mean_p - share)
        table.append({"bin_low": round(b / bins, 6), "bin_high": round((b + 1) / bins, 6), "n": int(mask.sum()),
                      "mean_p": round(mean_p, 6), "share_correct": round(share, 6)})
    return {"n": len(p), "brier": round(float(np.mean((p - y) ** 2)), 6), "ece": round(float(ece), 6), "bins": table}


# ----------------------------------------------------------------------------- grouped responses
def _groups(items: Sequence[Mapping[str, Any]], scores: Sequence[float | None]) -> dict[Any, list[tuple]]:
    """group -> [(group_pos, label, rank score)], None scores ranking below every score."""
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    out: dict[Any, list[tuple]] = defaultdict(list)
    for it, s in zip(items, scores):
        if it.get("group") is not None:
            out[it["group"]].append((it.get("group_pos"), int(it["label"]), -np.inf if s is None else float(s)))
    return dict(out)


def _share(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 6) if len(values) else None


def best_of_k(items: Sequence[Mapping[str, Any]], scores: Sequence[float | None]) -> dict[str, Any]:
    """Per group, the judge picks its top-scored response; m responses tied at the top count as
    the mean correctness of those m. Also the oracle (any correct response) and random pick."""
    picked, oracle, rand = [], [], []
    for members in _groups(items, scores).values():
        top = max(s for _, _, s in members)
        picked.append(np.mean([y for _, y, s in members if s == top]))
        oracle.append(float(any(y for _, y, _ in members)))
        rand.append(np.mean([y for _, y, _ in members]))
    return {"best_of_k": _share(picked), "groups": len(picked), "oracle": _share(oracle), "random": _share(rand)}


def pairwise_first(items: Sequence[Mapping[str, Any]], scores: Sequence[float | None]) -> dict[str, Any]:
    """reward-bench-2 style groups (the chosen response is group_pos 0, label 1): the share of
    groups where it scores strictly above every other response; a tie with m - 1 others counts 1/m."""
    wins = []
    for g, members in _groups(items, scores).items():
        chosen = [m for m in members if m[0] == 0]
        if len(chosen) != 1 or chosen[0][1] != 1:
            raise ValueError(f"group {g!r}: expected one chosen response (group_pos 0, label 1)")
        s0 = chosen[0][2]
        others = [s for pos, _, s in members if pos != 0]
        wins.append(0.0 if any(s > s0 for s in others) else 1.0 / (1 + sum(s == s0 for s in others)))
    return {"pairwise_first": _share(wins), "groups": len(wins)}


def _is_pairwise(items: Sequence[Mapping[str, Any]]) -> bool:
    """Every group holds one chosen response (group_pos 0, label 1) and only rejected ones besides."""
    groups = _groups(items, [None] * len(items))
    return bool(groups) and all(
        len(ms) > 1 and sorted((pos == 0, y) for pos, y, _ in ms) == [(False, 0)] * (len(ms) - 1) + [(True, 1)]
        for ms in groups.values())


# ----------------------------------------------------------------------------- the full summary
def _prepare(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict], int]:
    """Each record's aggregated verdicts (with label, problem_id) and the common k."""
    rows, ks = [], set()
    for i, r in enumerate(records):
        for key in ("label", "verdicts", "problem_id"):
            if key not in r:
                raise ValueError(f"record {i}: missing field {key!r}")
        try:
            agg = aggregate(r["verdicts"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"record {i}: {e}") from None
        rows.append({**agg, "label": r["label"], "problem_id": r["problem_id"]})
        ks.add(len(r["verdicts"]))
    if len(ks) > 1:
        raise ValueError(f"records hold different numbers of verdicts {sorted(ks)}: score each k apart")
    return rows, ks.pop() if ks else 0


def _view(rows: Sequence[Mapping[str, Any]], view: str, resamples: int, seed: int) -> dict[str, Any]:
    return metrics_with_ci([r["label"] for r in rows], [r[view] for r in rows], [r["problem_id"] for r in rows],
                           resamples, seed)


def _mean_p(rows: Sequence[Mapping[str, Any]], k: int) -> dict[str, Any]:
    scored = [r for r in rows if r["p_correct"] is not None]
    labels, ps = [r["label"] for r in scored], [r["p_correct"] for r in scored]
    out: dict[str, Any] = {"n_scored": len(scored), "auroc": None}
    if scored:
        a = auroc(ps, labels)
        out["auroc"] = None if a is None else round(a, 6)
    if k > 1:
        out["calibration"] = calibration(labels, ps)
    return out


def _per_category(records, rows, view: str, resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """category name -> value -> metrics of the items with that value (MISSING: items without the
    name), so each category's counts sum to n."""
    names = sorted({n for r in records for n in (r.get("categories") or {})})
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        by_value: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            cats = r.get("categories") or {}
            by_value[str(cats[name]) if name in cats else MISSING].append(i)
        out[name] = {v: _view([rows[i] for i in idx], view, resamples, seed) for v, idx in sorted(by_value.items())}
    return out


def _libra(records, rows, view: str, resamples: int, seed: int) -> dict[str, Any] | None:
    """The pipeline's Libra summary (mean of subset accuracies, per-generator accuracy, its
    subset-stratified problem bootstrap) when every record has the Libra schema's subset and model."""
    if not records or not all(isinstance(r.get("subset"), str) and isinstance(r.get("model"), str) for r in records):
        return None
    preds = [{"label": row["label"], "pred": row[view], "subset": r["subset"], "model": r["model"],
              "question": str(r["problem_id"])} for r, row in zip(records, rows)]
    s = summarize(preds)
    return {**{k: s[k] for k in ("libra_score", "subset_accuracy", "generator_accuracy", "n_problems")},
            "ci95": bootstrap_intervals(preds, resamples=resamples, seed=seed, cluster=True)}


def score_verdicts(records: Sequence[Mapping[str, Any]], resamples: int = 2000, seed: int = 0,
                   categories: bool = True) -> dict[str, Any]:
    """The full summary of a judge's k verdicts per item (see the module docstring). "primary" names
    the view the breakdowns use: majority when k > 1, else first. Deterministic given seed."""
    rows, k = _prepare(records)
    primary = "majority" if k > 1 else "first"
    n_verdicts = sum(len(r["verdicts"]) for r in records)
    out: dict[str, Any] = {
        "n": len(rows), "k": k, "primary": primary, "resamples": resamples, "seed": seed,
        "unparsed_verdict_rate": round(1 - sum(r["parsed"] for r in rows) / n_verdicts, 6) if n_verdicts else None,
        "tie_rate": _share([float(r["parsed"] > 0 and r["majority"] is None) for r in rows]),
        **{v: _view(rows, v, resamples, seed) for v in VIEWS}, "mean_p": _mean_p(rows, k)}
    if categories:
        out["per_category"] = _per_category(records, rows, primary, resamples, seed)
    invalid = [row for r, row in zip(records, rows) if r.get("invalid")]
    if invalid:
        out["invalid"] = _view(invalid, primary, resamples, seed)
    if any(r.get("group") is not None for r in records):
        scores = [r["p_correct"] for r in rows]
        out["best_of_k"] = best_of_k(records, scores)
        if _is_pairwise(records):
            out["pairwise"] = pairwise_first(records, scores)
    libra = _libra(records, rows, primary, resamples, seed)
    if libra is not None:
        out["libra"] = libra
    return out


# ----------------------------------------------------------------------------- text
def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _row(name: str, m: Mapping[str, Any]) -> list[str]:
    ci = m["ci95"].get("accuracy")
    acc = _pct(m["accuracy"]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
    return [name, str(m["n"]), acc, _pct(m["balanced_accuracy"]), _pct(m["f1"]), _pct(m["harmonic_mean"]),
            _pct(m["unparsed_rate"])]


def format_table(summary: Mapping[str, Any]) -> str:
    """The overall row(s) (both views when k > 1), then one row per category value and the invalid
    items, in percent: n, accuracy [95% CI], balanced accuracy, F1, harmonic mean, unparsed."""
    views = VIEWS if summary["k"] > 1 else ("first",)
    rows = [["", "n", "accuracy [95% CI]", "bal.acc", "F1", "harmonic", "unparsed%"]]
    rows += [_row(f"all ({v})", summary[v]) for v in views]
    for name, values in summary.get("per_category", {}).items():
        rows += [_row(f"{name}={value}", m) for value, m in values.items()]
    if "invalid" in summary:
        rows.append(_row("invalid", summary["invalid"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return "\n".join(lines) + "\n"


def unparsed_warning(summary: Mapping[str, Any], threshold: float = 0.2) -> str | None:
    """One line when more than `threshold` of the verdicts were not parsed, else None."""
    rate = summary.get("unparsed_verdict_rate")
    if rate is None:
        rate = summary[summary.get("primary", "first")]["unparsed_rate"]
    if rate is None or rate <= threshold:
        return None
    return (f"warning: {100 * rate:.1f}% of the judge's verdicts were not parsed (over {100 * threshold:.0f}%): "
            "these scores mostly measure parsing; check the judge's prompt template, its verdict format and "
            "max_new_tokens")
