"""librarm.stages.downstream: built-in labels (gold, noisy gold, random) and label accuracy, pair
construction (ties, no pairs, all-correct groups, per-problem cap), the pair budget and the gold
curve (a short labeler never moves another's run), the pool split, avg@k, policy evaluation with a
pseudo sampler, and the policy and downstream summaries (seed average, the paired gain)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import build_pairs_into, resp

from librarm.run.config import load_params
from librarm.run.io import read_json, read_jsonl, write_json, write_jsonl
from librarm.run.labelers import dpo_step_pairs
from librarm.run.settings import call
from librarm.stages.downstream import (
    avg_at_k,
    build_pairs,
    builtin_labels,
    label_accuracy,
    split_pool,
    summarize_downstream,
    summarize_policy,
    take_budget,
)
from librarm.stats import per_problem_accuracy


# ----------------------------------------------------------------------------- labels
def test_noisy_gold_rates_match_their_name_and_are_seeded():
    rng = np.random.default_rng(0)
    gold = list(rng.integers(0, 2, 20000))
    sids = [f"s{i}" for i in range(len(gold))]
    for name, p in (("gold_p60", 0.6), ("gold_p70", 0.7), ("gold_p80", 0.8), ("gold_p90", 0.9)):
        labels = builtin_labels(name, gold, sids, seed=1)
        assert label_accuracy(labels, gold) == pytest.approx(p, abs=0.012)
        assert labels == builtin_labels(name, gold, sids, seed=1)          # seeded
        assert labels != builtin_labels(name, gold, sids, seed=2)
    assert builtin_labels("gold", gold, sids, 1) == gold
    rand = builtin_labels("random", gold, sids, 1)
    assert label_accuracy(rand, gold) == pytest.approx(0.5, abs=0.015)
    assert sum(rand) / len(rand) == pytest.approx(0.5, abs=0.015)
    # a response's noisy label depends only on (seed, labeler, response): subsets agree
    assert builtin_labels("gold_p70", gold[:100], sids[:100], 1) == builtin_labels("gold_p70", gold, sids, 1)[:100]


def test_label_accuracy_counts_missing_verdicts_as_wrong():
    assert label_accuracy([1, None, 0, 0], [1, 1, 0, 1]) == 0.5
    assert label_accuracy([], []) is None


# ----------------------------------------------------------------------------- pairs
def test_pairs_chosen_judged_correct_rejected_judged_incorrect_each_response_once():
    recs = [resp("p1", i, c) for i, c in enumerate([True, True, True, False, False])]
    labels = [1, 1, 1, 0, 0]
    pairs, st = build_pairs(recs, labels, labeler="gold", seed=0, per_problem=5)
    assert len(pairs) == 2 and st["pairs"] == 2                       # only two rejected responses
    assert len({p["rejected_sample_id"] for p in pairs}) == 2
    assert len({p["chosen_sample_id"] for p in pairs}) == 2
    assert all(p["chosen_gold"] == 1 and p["rejected_gold"] == 0 for p in pairs)
    assert st["pair_accuracy"] == 1.0
    capped, _ = build_pairs(recs, labels, labeler="gold", seed=0, per_problem=1)
    assert len(capped) == 1


def test_pairs_follow_the_labeler_not_the_gold():
    recs = [resp("p1", 0, True), resp("p1", 1, False)]
    pairs, st = build_pairs(recs, [0, 1], labeler="bad", seed=0, per_problem=2)     # inverted labels
    assert pairs[0]["chosen_sample_id"] == recs[1]["sample_id"]
    assert st["pair_accuracy"] == 0.0


def test_no_pairs_all_correct_all_incorrect_and_no_verdicts_are_counted():
    recs = ([resp("a", i, True) for i in range(3)] + [resp("b", i, False) for i in range(3)]
            + [resp("c", i, True) for i in range(2)])
    labels = [1, 1, 1, 0, 0, 0, None, None]
    pairs, st = build_pairs(recs, labels, labeler="x", seed=0, per_problem=2)
    assert pairs == []
    assert st["skipped_problems"] == {"all_correct": 1, "all_incorrect": 1, "no_verdicts": 1, "only_ties": 0}
    assert st["unjudged_responses"] == 2 and st["pair_accuracy"] is None


def test_tied_texts_are_never_a_pair():
    same = "<think>7</think>\n\\boxed{7}"
    recs = [resp("t", 0, True, same), resp("t", 1, True, same)]
    pairs, st = build_pairs(recs, [1, 0], labeler="x", seed=0, per_problem=2)      # judged differently, same text
    assert pairs == [] and st["skipped_problems"]["only_ties"] == 1 and st["tied_candidates"] == 1
    recs.append(resp("t", 2, False))
    pairs, st = build_pairs(recs, [1, 0, 0], labeler="x", seed=0, per_problem=2)
    assert len(pairs) == 1 and pairs[0]["rejected_sample_id"] == recs[2]["sample_id"]


def test_pairs_are_deterministic_and_seed_dependent():
    recs = [resp(f"p{j}", i, i % 3 == 0) for j in range(20) for i in range(6)]
    labels = [int(r["reason"] == "correct") for r in recs]
    a, _ = build_pairs(recs, labels, labeler="gold", seed=0, per_problem=1)
    b, _ = build_pairs(recs, labels, labeler="gold", seed=0, per_problem=1)
    c, _ = build_pairs(recs, labels, labeler="gold", seed=5, per_problem=1)
    assert a == b and a != c


def test_take_budget_is_per_labeler_and_nested():
    mk = lambda n, tag: [{"pair_id": f"{tag}{i}"} for i in range(n)]  # noqa: E731
    a = take_budget(mk(10, "a"), 4, seed=0, labeler="a")
    assert len(a) == 4 and all(p in mk(10, "a") for p in a)
    assert a == take_budget(mk(10, "a"), 4, seed=0, labeler="a")
    assert take_budget(mk(3, "b"), 4, seed=0, labeler="b") == mk(3, "b")        # short: all it has
    # smaller budgets are subsets of larger ones (the gold curve is nested)
    small = {p["pair_id"] for p in take_budget(mk(10, "a"), 2, seed=0, labeler="a")}
    assert small <= {p["pair_id"] for p in a}


def test_build_pairs_stage_writes_budget_curve_and_raw(tmp_path):
    params = load_params("params.yaml")
    params["pairs"].update(labelers=["base", "gold", "gold_p70", "random"], budget=25, gold_curve=[10])
    recs = [resp(f"p{j}", i, (i + j) % 3 == 0) for j in range(30) for i in range(6)]
    write_jsonl(tmp_path / "verified.jsonl", recs)
    # the base judge says "incorrect" to each problem's first response only, "correct" to the rest
    write_jsonl(tmp_path / "base.jsonl", [{"sample_id": r["sample_id"], "pred": int(not r["sample_id"].endswith("|0")),
                                           "status": "parsed"} for r in recs])
    stats = build_pairs_into(params, tmp_path / "verified.jsonl", {"base": tmp_path / "base.jsonl"}, tmp_path / "out")
    lab = stats["labelers"]
    assert lab["base"]["pairs_raw"] == 30 and lab["base"]["pair_accuracy"] < 1.0
    assert lab["gold"]["label_accuracy"] == 1.0 and lab["gold"]["pair_accuracy"] == 1.0
    sizes = {n: len(read_jsonl(tmp_path / "out" / f"{n}.jsonl").records) for n in params["pairs"]["labelers"]}
    assert sizes == {n: min(25, lab[n]["pairs_raw"]) for n in sizes}
    assert stats["short_labelers"] == [n for n in sizes if lab[n]["pairs_raw"] < 25]
    assert stats["gold_curve"]["10"]["pairs_trained"] == 10
    assert len(read_jsonl(tmp_path / "out" / "curve" / "gold-10.jsonl").records) == 10
    assert len(read_jsonl(tmp_path / "out" / "raw" / "gold.jsonl").records) == lab["gold"]["pairs_raw"]
    # a judge's label file missing responses is an error naming the file
    write_jsonl(tmp_path / "base.jsonl", [{"sample_id": recs[0]["sample_id"], "pred": 1, "status": "parsed"}])
    with pytest.raises(ValueError, match="base.jsonl: no label for"):
        build_pairs_into(params, tmp_path / "verified.jsonl", {"base": tmp_path / "base.jsonl"}, tmp_path / "out")


def test_a_short_labeler_changes_no_other_labelers_pairs(tmp_path):
    """The fresh-clone failure of equalize-to-the-smallest: a near-constant judge that makes 37
    pairs in one run and 0 in another must not change any other labeler's training set (so, DPO
    being deterministic, not its policy either: tests/test_determinism.py runs DPO on it)."""
    params = load_params("params.yaml")
    params["pairs"].update(labelers=["scalar", "gold", "gold_p70", "random"], budget=40, gold_curve=[20])
    recs = [resp(f"p{j}", i, (i + j) % 3 == 0) for j in range(60) for i in range(6)]
    write_jsonl(tmp_path / "verified.jsonl", recs)
    outs = {}
    for forced in (0, 37):
        # the scalar judge calls everything correct except the first response of `forced` problems
        labels = [{"sample_id": r["sample_id"], "status": "parsed",
                   "pred": 0 if r["sample_id"].endswith("|0") and int(r["problem_id"][1:]) < forced else 1} for r in recs]
        write_jsonl(tmp_path / "scalar.jsonl", labels)
        out = tmp_path / f"out{forced}"
        stats = build_pairs_into(params, tmp_path / "verified.jsonl", {"scalar": tmp_path / "scalar.jsonl"}, out)
        outs[forced] = (out, stats)
    assert outs[0][1]["labelers"]["scalar"]["pairs_trained"] == 0
    assert outs[37][1]["labelers"]["scalar"]["pairs_trained"] == 37
    assert outs[37][1]["short_labelers"] == ["scalar"]
    for name in ("gold", "gold_p70", "random", "curve/gold-20"):
        assert (outs[0][0] / f"{name}.jsonl").read_bytes() == (outs[37][0] / f"{name}.jsonl").read_bytes(), name
        steps = {dpo_step_pairs(name, len(read_jsonl(o / f"{name}.jsonl").records), 40) for o, _ in outs.values()}
        assert steps == {40}


def test_split_pool_is_disjoint_and_stable():
    probs = [{"id": f"q{i}"} for i in range(50)]
    train, val = split_pool(probs, 1, 0.2)
    assert len(val) == 10 and not {p["id"] for p in train} & {p["id"] for p in val}
    assert split_pool(probs, 1, 0.2) == (train, val)


# ----------------------------------------------------------------------------- avg@k
def graded(spec: dict[str, dict[str, list[int]]]) -> list[dict]:
    return [{"subset": s, "problem_id": p, "correct": bool(c)} for s, probs in spec.items()
            for p, cs in probs.items() for c in cs]


def test_avg_at_k_by_hand():
    g = graded({"a": {"p1": [1, 1, 0, 0], "p2": [1, 1, 1, 1]}, "b": {"q1": [0, 0, 0, 0]}})
    pp = per_problem_accuracy(g)
    assert pp == {"a": {"p1": 0.5, "p2": 1.0}, "b": {"q1": 0.0}}
    assert avg_at_k(pp) == {"a": 0.75, "b": 0.0, "all": 0.375}     # `all` weighs subsets equally


# ----------------------------------------------------------------------------- policy evaluation and summaries
def test_policy_eval_on_tiny_model_writes_avg_at_k_and_intervals(tmp_path, params):
    from librarm.engines.pseudo import PseudoSampler
    from librarm.stages.downstream import run_policy_eval

    probs = [{"id": f"e{i}", "set": "hard", "role": "eval", "problem": f"Compute {i}+1.", "answer": str(i + 1)} for i in range(8)]
    write_jsonl(tmp_path / "hard.jsonl", probs)
    out = tmp_path / "out"
    m = call(run_policy_eval, {**params, "evaluate_policy": {**params["evaluate_policy"], "k": 3}}, "none", "none",
             {"hard": tmp_path / "hard.jsonl"}, out / "samples.jsonl", out / "eval.json", threads=1,
             sampler=PseudoSampler("reference"))
    assert m["avg_at_k"] == {"hard": 1.0, "all": 1.0} and m["ci95"]["hard"] == [1.0, 1.0]
    m = call(run_policy_eval, {**params, "evaluate_policy": {**params["evaluate_policy"], "k": 2}}, "none", "none",
             {"hard": tmp_path / "hard.jsonl"}, out / "samples.jsonl", out / "eval.json", threads=1,
             sampler=PseudoSampler("reference_wrong"))
    assert m["avg_at_k"]["all"] == 0.0
    assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == 16


def _policy_run(root, name, per_problem_spec, seeds=("seed-0",)):
    for s in seeds:
        d = root / name / s
        g = [dict(r) for r in graded(per_problem_spec)]
        write_jsonl(d / "samples.jsonl", g)
        write_json(d / "eval.json", {"avg_at_k": avg_at_k(per_problem_accuracy(g))})
    return {s: (root / name / s / "eval.json", root / name / s / "samples.jsonl") for s in seeds}


def test_policy_and_downstream_summaries(tmp_path):
    params = load_params("params.yaml")
    params["report"]["permutations"] = 500
    write_json(tmp_path / "pairs.json", {"labelers": {"gold": {"pairs_trained": 9, "pairs_raw": 12, "label_accuracy": 1.0,
                                                               "pair_accuracy_trained": 1.0},
                                                      "rl": {"pairs_trained": 9, "pairs_raw": 10, "label_accuracy": 0.8,
                                                             "pair_accuracy_trained": 0.7}}})
    probs = [f"p{i}" for i in range(40)]
    none = {"s": {p: [0, 0] for p in probs}}
    gold = {"s": {p: [1, 1] if i < 20 else [0, 0] for i, p in enumerate(probs)}}
    rl = {"s": {p: [1, 0] if i < 20 else [0, 0] for i, p in enumerate(probs)}}
    paths = {}
    for name, spec in (("none", none), ("gold", gold), ("rl", rl)):
        runs = _policy_run(tmp_path, name, spec, ("base",) if name == "none" else ("seed-0",))
        m = call(summarize_policy, params, name, runs, tmp_path / "pairs.json", tmp_path / name / "metrics.json",
                 tmp_path / name / "per_problem.json")
        paths[name] = (tmp_path / name / "metrics.json", tmp_path / name / "per_problem.json")
        if name == "none":
            assert m["pairs"] == 0 and m["label_accuracy"] is None
    gm = read_json(tmp_path / "gold" / "metrics.json")
    assert gm["avg_at_k"]["all"] == 0.5 and gm["pairs"] == 9 and gm["label_accuracy"] == 1.0
    s = call(summarize_downstream, params, paths, tmp_path / "summary.json")
    assert s["policies"]["gold"]["gain"]["all"] == 0.5
    assert s["policies"]["rl"]["gain"]["all"] == 0.25
    assert s["policies"]["rl"]["gold_gain_recovered"] == 0.5
    lo, hi = s["policies"]["rl"]["gain_ci95"]["all"]
    assert lo < 0.25 < hi and lo > 0
    assert s["policies"]["gold"]["gain_p_value"] < 0.01


def test_seed_average_and_sd(tmp_path):
    params = load_params("params.yaml")
    probs = [f"p{i}" for i in range(10)]
    runs = {}
    for s, k in (("seed-0", 2), ("seed-1", 4)):
        spec = {"s": {p: [1, 1] if i < k else [0, 0] for i, p in enumerate(probs)}}
        runs.update(_policy_run(tmp_path, "gold", spec, (s,)))
    m = call(summarize_policy, params, "gold", runs, None, tmp_path / "gold" / "metrics.json",
             tmp_path / "gold" / "per_problem.json")
    assert m["seeds"] == {"seed-0": {"s": 0.2, "all": 0.2}, "seed-1": {"s": 0.4, "all": 0.4}}
    assert m["avg_at_k"]["all"] == pytest.approx(0.3)
    assert m["sd_over_seeds"]["all"] == pytest.approx(float(np.std([0.2, 0.4], ddof=1)), abs=1e-4)
