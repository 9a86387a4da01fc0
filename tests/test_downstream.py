"""Downstream logic: labelers (gold, noisy gold, random), pair construction (ties, no pairs,
all-correct groups, per-problem cap), the pair budget and the gold curve (a short labeler never
moves another's run), avg@k and its intervals, the paired gain
summary, and the config checks of the downstream sections."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from librarm.config import ConfigError, load_params, validate_params
from librarm.downstream import (
    avg_at_k,
    build_pairs,
    builtin_labels,
    label_accuracy,
    per_problem_accuracy,
    run_build_pairs,
    split_pool,
    summarize_downstream,
    summarize_policy,
    take_budget,
)
from librarm.io import read_json, read_jsonl, write_json, write_jsonl
from librarm.labelers import (
    curve_policies,
    downstream_policies,
    dpo_step_pairs,
    keep_probability,
    labeler_kind,
    policy_parts,
)
from librarm.stats import bootstrap_means, sign_flip_p


def resp(pid: str, idx: int, correct: bool, text: str | None = None) -> dict:
    ans = "7" if correct else f"{idx + 8}"
    return {"sample_id": f"policy|{pid}|{idx}", "problem_id": pid, "subset": "pool", "generator": "policy",
            "question": f"Compute {pid}.", "response": f"\\boxed{{{ans}}}",
            "response_with_cot": text or f"<think>step {idx}</think>\n\\boxed{{{ans}}}",
            "reason": "correct" if correct else "wrong_answer"}


# ----------------------------------------------------------------------------- labelers
def test_labeler_kinds_and_errors():
    judges = {"rl": {}, "base": {}}
    assert labeler_kind("rl", judges) == "judge"
    assert labeler_kind("gold", judges) == "gold"
    assert labeler_kind("gold_p70", judges) == "noisy_gold"
    assert labeler_kind("random", judges) == "random"
    with pytest.raises(ValueError, match="not a key of 'judges'"):
        labeler_kind("sft", judges)
    assert keep_probability("gold_p60") == pytest.approx(0.6)
    with pytest.raises(ValueError):
        keep_probability("gold")


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


def test_policy_names_and_steps():
    cfg = {"labelers": ["rl", "gold"], "gold_curve": [50, 100], "raw_labelers": ["gold"]}
    assert downstream_policies(cfg) == ["rl", "gold", "curve/gold-50", "curve/gold-100", "raw/gold"]
    assert downstream_policies({**cfg, "labelers": ["rl"], "raw_labelers": []}) == ["rl"]
    assert policy_parts("none") == ("none", None, None)
    assert policy_parts("curve/gold-50") == ("curve", "gold", 50)
    assert policy_parts("raw/rl") == ("raw", "rl", None)
    assert policy_parts("rl") == ("budget", "rl", None)
    # a short labeler and a curve point take the budget's steps; a raw run its own count
    assert dpo_step_pairs("scalar", 37, 400) == dpo_step_pairs("curve/gold-50", 50, 400) == 400
    assert dpo_step_pairs("raw/gold", 612, 400) == 612


def build_pairs_into(params, verified, labels, out):
    """run_build_pairs with the DAG's layout under out: <labeler>.jsonl, raw/<labeler>.jsonl,
    curve/gold-<n>.jsonl, stats.json."""
    labelers = params["pairs"]["labelers"]
    return run_build_pairs(params, verified, labels, {n: out / f"{n}.jsonl" for n in labelers},
                           {n: out / "raw" / f"{n}.jsonl" for n in labelers},
                           {c: out / f"{c}.jsonl" for c in curve_policies(params["pairs"])}, out / "stats.json")


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


def test_bootstrap_intervals_cover_the_mean_and_collapse_when_constant():
    rng = np.random.default_rng(0)
    pp = {"a": {f"p{i}": float(rng.random() < 0.4) for i in range(200)}, "b": {f"q{i}": 0.5 for i in range(50)}}
    ci = bootstrap_means(pp, 1000, seed=0)
    mean_a = np.mean(list(pp["a"].values()))
    assert ci["a"][0] < mean_a < ci["a"][1] and ci["a"][1] - ci["a"][0] < 0.2
    assert ci["b"] == [0.5, 0.5]
    assert ci == bootstrap_means(pp, 1000, seed=0)


def test_sign_flip_p():
    assert sign_flip_p(np.zeros(10), 1000, 0) == 1.0
    assert sign_flip_p(np.full(30, 0.5), 2000, 0) < 0.001
    rng = np.random.default_rng(1)
    assert sign_flip_p(rng.normal(0, 1, 200), 2000, 0) > 0.01


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
        m = summarize_policy(params, name, runs, tmp_path / "pairs.json", tmp_path / name / "metrics.json",
                             tmp_path / name / "per_problem.json")
        paths[name] = (tmp_path / name / "metrics.json", tmp_path / name / "per_problem.json")
        if name == "none":
            assert m["pairs"] == 0 and m["label_accuracy"] is None
    gm = read_json(tmp_path / "gold" / "metrics.json")
    assert gm["avg_at_k"]["all"] == 0.5 and gm["pairs"] == 9 and gm["label_accuracy"] == 1.0
    s = summarize_downstream(params, paths, tmp_path / "summary.json")
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
    m = summarize_policy(params, "gold", runs, None, tmp_path / "gold" / "metrics.json",
                         tmp_path / "gold" / "per_problem.json")
    assert m["seeds"] == {"seed-0": {"s": 0.2, "all": 0.2}, "seed-1": {"s": 0.4, "all": 0.4}}
    assert m["avg_at_k"]["all"] == pytest.approx(0.3)
    assert m["sd_over_seeds"]["all"] == pytest.approx(float(np.std([0.2, 0.4], ddof=1)), abs=1e-4)


# ----------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("edit,message", [
    (lambda p: p["pairs"].update(labelers=["rl", "gold_p7x"]), "pairs.labelers.1"),
    (lambda p: p["pairs"].update(labelers=["rl", "gold_p0"]), "pairs.labelers.1"),
    (lambda p: p["pairs"].update(raw_labelers=["sft"], labelers=["rl"]), "pairs.raw_labelers"),
    (lambda p: p["pairs"].update(pool="judge_pool"), "pairs.pool"),
    (lambda p: p["pairs"].update(policy="nope"), "pairs.policy"),
    (lambda p: p["evaluate_policy"].update(subsets=["dpo_pool"]), "evaluate_policy.subsets"),
    (lambda p: p["report"].update(fit_labelers=["gold"]), "report.fit_labelers"),
    (lambda p: p.pop("dpo"), "dpo: required"),
])
def test_downstream_config_errors_name_the_key(edit, message):
    params = copy.deepcopy(load_params("params.yaml"))
    edit(params)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_params(params)


def test_schema_rejects_bad_dpo_values():
    params = copy.deepcopy(load_params("params.yaml"))
    params["dpo"]["seeds"] = []
    with pytest.raises(ConfigError, match="dpo"):
        validate_params(params)
