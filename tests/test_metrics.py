"""librarm.judging.metrics: the bench summary (unparsed verdicts count as wrong; macro F1 as sklearn computes
it), the problem-prior baseline (near chance on a balanced bench, finds a difficulty shortcut), AUROC
and the accuracy-best threshold."""
import numpy as np
import pytest
from conftest import item

from librarm.judging.metrics import auroc, best_threshold, problem_prior_predictions, summarize


def test_summary_counts_unparsed_as_wrong():
    items = [item(1, 1), item(0, 0), item(1, None), item(0, 1, subset="b"), item(1, 1, subset="b")]
    m = summarize(items)
    assert m["subset_accuracy"] == {"a": pytest.approx(2 / 3, abs=1e-6), "b": 0.5}
    assert m["libra_score"] == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-6)
    assert m["unparsed_rate"] == 0.2 and m["accuracy_parsed_only"] == 0.75
    assert m["confusion"]["label_1"] == {"pred_1": 2, "pred_0": 0, "none": 1}
    assert m["n_items"] == 5 and m["n_problems"] == 2


def test_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.where(rng.random(300) < 0.7, y, 1 - y)
    m = summarize([item(int(a), int(b)) for a, b in zip(y, p)])
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-6)


def balanced_bench(n_problems=120, per_problem=4, shortcut=False, seed=0):
    """Items balanced per subset x generator (as the bench is): every problem has two correct and
    two incorrect responses, unless `shortcut`, where long questions are mostly answered wrong."""
    rng = np.random.default_rng(seed)
    items = []
    for j in range(n_problems):
        q = "Compute " + "+".join(str(d) for d in rng.integers(1, 9, 2 + j % 3)) + "."
        for i in range(per_problem):
            label = (int(len(q) < 14) if rng.random() < 0.9 else 1 - int(len(q) < 14)) if shortcut else i % 2
            items.append(item(label, None, subset=f"s{j % 3}", model=f"g{(i // 2) % 2}", q=q))
    return items


def test_problem_prior_sits_near_chance_on_a_balanced_bench():
    """The old leave-one-out rate predicted AGAINST the label inside balanced problems (24% on the
    bench); the held-out fit must sit near 50%."""
    items = balanced_bench()
    preds = problem_prior_predictions(items, seed=0)
    acc = np.mean([p == it["label"] for p, it in zip(preds, items)])
    assert 0.4 <= acc <= 0.6
    assert preds == problem_prior_predictions(items, seed=0)


def test_problem_prior_finds_a_difficulty_shortcut():
    items = balanced_bench(shortcut=True)
    preds = problem_prior_predictions(items, seed=0)
    assert np.mean([p == it["label"] for p, it in zip(preds, items)]) > 0.8


def test_threshold_always_splits_the_scores():
    # the accuracy-best cut on a near-constant scorer used to fall below every score (all "correct")
    scores, labels = [0.50, 0.50, 0.51, 0.50, 0.52], [1, 1, 0, 1, 0]
    t = best_threshold(scores, labels)
    assert min(scores) < t <= max(scores)
    assert best_threshold([0.3, 0.3], [0, 1]) == 0.3


def test_auroc_and_threshold():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1], [1, 1]) is None
    t = best_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert 0.2 < t < 0.8


def test_a_non_string_generator_is_one_clear_error():
    bad = [dict(item(1, 1), index=3, model={"name": "g"})]
    with pytest.raises(ValueError, match=r"item 3: field 'model': expected a string, got dict"):
        summarize(bad)


def test_ambiguous_and_unterminated_verdicts_count_as_unparsed():
    """Every status without a verdict (judge.STATUSES but `parsed`) has pred None: unparsed, wrong."""
    from librarm.judging.judge import STATUSES, parse_verdict

    outs = {"parsed": "<think>x</think>\\boxed{correct}", "ambiguous": "<think>a</think>b</think>\\boxed{correct}",
            "unterminated": "<think>\\boxed{correct}", "no_verdict": "<think>x</think>hmm"}
    items = [dict(item(1, parse_verdict(t).value), status=s) for s, t in outs.items()]
    assert {parse_verdict(t).status for t in outs.values()} == set(outs) and set(outs) <= set(STATUSES)
    m = summarize(items)
    assert m["unparsed_rate"] == 0.75 and m["accuracy"] == 0.25 and m["accuracy_parsed_only"] == 1.0
