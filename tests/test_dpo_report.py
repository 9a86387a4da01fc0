"""DPO on tiny models (real TRL run: the loss falls, the prompt is the sampler's, the best
validation checkpoint is kept), policy evaluation, and the report built from a small fixture run
(every number in summary.md equals its metrics file; a tampered source is caught)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from librarm.io import read_json, write_json, write_jsonl
from librarm import paths as P
from librarm.labelers import all_policies
from librarm.report import build_report, check_report
from librarm.stats import gain_correlation, pearson, permutation_p


# ----------------------------------------------------------------------------- DPO
def _arith_pairs(n: int) -> tuple[list[dict], list[dict]]:
    pairs, val = [], []
    for i in range(n):
        a, b = i % 9 + 1, (i * 7) % 9
        q = f"Compute {a}+{b}."
        pairs.append({"pair_id": f"p{i}", "problem_id": f"q{i}", "question": q,
                      "chosen": f"<think>{a}+{b}={a + b}</think>\n\\boxed{{{a + b}}}",
                      "rejected": f"<think>{a}+{b}={a + b + 1}</think>\n\\boxed{{{a + b + 1}}}"})
    for i in range(6):
        val.append({"id": f"v{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)})
    return pairs, val


@pytest.fixture
def dpo_params(params):
    p = copy.deepcopy(params)
    p["dpo"].update(learning_rate=0.003, beta=0.1, epochs=4, batch_size=8, val_every=5, val_k=1)
    p["evaluate_policy"]["max_new_tokens"] = 24
    return p


def test_dpo_rows_use_the_samplers_prompt_and_keep_the_thinking(tmp_path, dpo_params):
    from tiny_fixtures import make_random_lm

    from librarm.dpo import dpo_rows
    from librarm.sampling import (
        HFSampler,
        SampleRequest,
        SamplingConfig,
        problem_messages,
    )

    model_dir = make_random_lm(tmp_path / "rand", hidden=16)
    pairs, _ = _arith_pairs(2)
    sampler = HFSampler(str(model_dir), SamplingConfig(max_new_tokens=2))
    rows = dpo_rows(pairs, sampler.tok, dpo_params)
    want = sampler.encode_prompts([SampleRequest(problem_messages({"problem": pairs[0]["question"]}, None), 0)])[0]
    assert sampler.tok(rows[0]["prompt"], add_special_tokens=False)["input_ids"] == want
    assert rows[0]["chosen"].startswith("<think>") and rows[0]["chosen"] == pairs[0]["chosen"]


def test_short_dpo_run_lowers_the_loss_and_keeps_the_best_val_checkpoint(tmp_path, dpo_params):
    from tiny_fixtures import make_random_lm

    from librarm.dpo import DPOSettings, run_dpo

    model_dir = make_random_lm(tmp_path / "rand", hidden=32, layers=1)
    pairs, val = _arith_pairs(48)
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "val.jsonl", val)
    log = run_dpo(dpo_params, tmp_path / "pairs.jsonl", tmp_path / "val.jsonl", str(model_dir), tmp_path / "out",
                  name="t", seed=0, threads=1, resume_root=tmp_path / "resume")
    assert log["steps"] == DPOSettings.from_params(dpo_params["dpo"], 0).steps(48) == 24
    losses = [h["loss"] for h in log["loss_curve"]]
    assert losses[0] == pytest.approx(np.log(2), abs=0.02)        # policy == reference at step 1
    assert np.mean(losses[-4:]) < 0.7 * losses[0]                 # falls by a set margin (0.69 -> ~0.39 seen)
    assert [v["step"] for v in log["val_curve"]] == [0, 5, 10, 15, 20, 24]   # step 0: the untrained policy
    best = max(log["val_curve"], key=lambda v: v["val_avg_at_k"])
    assert log["selected_val_avg_at_k"] == best["val_avg_at_k"]
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "tokenizer_config.json").exists()


def test_dpo_settings_are_checked(dpo_params):
    from librarm.dpo import DPOSettings

    with pytest.raises(ValueError, match="beta"):
        DPOSettings.from_params({**dpo_params["dpo"], "beta": 0}, 0)
    assert DPOSettings.from_params({**dpo_params["dpo"], "epochs": 1.5, "batch_size": 10}, 0).steps(21) == 4


def test_policy_eval_on_tiny_model_writes_avg_at_k_and_intervals(tmp_path, params):
    from librarm.downstream import run_policy_eval
    from librarm.sampling import PseudoSampler

    probs = [{"id": f"e{i}", "set": "hard", "role": "eval", "problem": f"Compute {i}+1.", "answer": str(i + 1)} for i in range(8)]
    write_jsonl(tmp_path / "hard.jsonl", probs)
    out = tmp_path / "out"
    m = run_policy_eval({**params, "evaluate_policy": {**params["evaluate_policy"], "k": 3}}, "none", "none",
                        {"hard": tmp_path / "hard.jsonl"}, out / "samples.jsonl", out / "eval.json", threads=1,
                        sampler=PseudoSampler("reference"))
    assert m["avg_at_k"] == {"hard": 1.0, "all": 1.0} and m["ci95"]["hard"] == [1.0, 1.0]
    m = run_policy_eval({**params, "evaluate_policy": {**params["evaluate_policy"], "k": 2}}, "none", "none",
                        {"hard": tmp_path / "hard.jsonl"}, out / "samples.jsonl", out / "eval.json", threads=1,
                        sampler=PseudoSampler("reference_wrong"))
    assert m["avg_at_k"]["all"] == 0.0
    assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == 16


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


# ----------------------------------------------------------------------------- report from a fixture run
def _fixture_run(root, params):
    r = root / "results"
    write_json(r / "verify/stats.json", {"accuracy": {"gen_a": {"s1": 0.4, "s2": 0.3}}, "generator_accuracy": {"gen_a": 0.35}})
    write_json(r / "bench/stats.json", {"subsets": {"s1": {"correct": 5, "incorrect": 5, "n": 10, "problems": 7}}})
    judges = {}
    for j, acc in (("base", 0.6), ("rl", 0.8), ("sft", 0.75)):
        m = {"libra_score": acc, "libra_score_ci95": [acc - 0.05, acc + 0.05], "macro_f1": acc - 0.01,
             "subset_accuracy": {"s1": acc, "s2": acc - 0.1}, "seen_heldout": {"seen": acc, "held_out": acc - 0.02}}
        judges[j] = m
        write_json(r / f"eval/{j}/metrics.json", {**m, "ci95": {"subset_accuracy.s1": [acc - 0.1, acc + 0.1]},
                                                   "confusion": {"label_0": {"pred_0": 4, "pred_1": 1, "none": 0},
                                                                 "label_1": {"pred_0": 1, "pred_1": 3, "none": 1}}})
    write_json(r / "eval/summary.json", {"judges": judges, "comparisons": {
        "rl vs base": {"diff": 0.2, "ci95": [0.1, 0.3], "p_bootstrap": 0.0, "p_permutation": 0.0005,
                       "resamples": 2000, "mcnemar_p": 0.001}}})
    write_json(r / "train/stats.json", {"judge_sft": {"kind": "sft", "global_step": 10, "seconds": 3.0, "tokens_per_s": 100.0,
                                                      "loss_curve": [{"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.5}],
                                                      "val_curve": [{"step": 10, "val_accuracy": 0.7}]},
                                        "judge_rl": {"kind": "rl", "global_step": 4, "seconds": 5.0, "tokens_per_s": 50.0,
                                                     "reward_curve": [{"step": 1, "reward": 0.5, "correctness": 0.5,
                                                                       "length": 90}],
                                                     "val_curve": [{"step": 4, "val_accuracy": 0.8}]}})
    write_json(r / "rs/stats.json", {"acceptance_rate": 0.7, "acceptance_by_label": {"0": 0.8, "1": 0.6},
                                     "items_none_accepted": 2, "judging_examples": 30, "reasoning_examples": 8})
    labelers = params["pairs"]["labelers"]
    write_json(r / "pairs/stats.json", {"labelers": {n: {"kind": "judge", "label_accuracy": 0.7, "pair_accuracy_trained": 0.6,
                                                         "pairs_raw": 20, "pairs_trained": 15,
                                                         "skipped_problems": {"all_correct": 1, "all_incorrect": 2}}
                                                     for n in labelers}})
    write_json(r / "dpo/stats.json", {f"{n}/seed-0": {"pairs": 15, "steps": 2, "selected_step": 2, "selected_val_avg_at_k": 0.4,
                                                      "seconds": 1.0, "tokens_per_s": 10.0,
                                                      "loss_curve": [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.6}]}
                                      for n in labelers})
    rng = np.random.default_rng(0)
    probs = [f"p{i}" for i in range(30)]
    base = {"s1": {p: 0.3 for p in probs}}
    policies = {"none": {"labeler": None, "avg_at_k": {"s1": 0.3, "all": 0.3}, "ci95": {"all": [0.25, 0.35]}}}
    write_json(r / "downstream/none/per_problem.json", base)
    for i, n in enumerate(labelers):
        g = 0.02 * i
        pp = {"s1": {p: 0.3 + g + rng.normal(0, 0.01) for p in probs}}
        write_json(r / f"downstream/{n}/per_problem.json", pp)
        policies[n] = {"labeler": n, "avg_at_k": {"s1": 0.3 + g, "all": 0.3 + g}, "ci95": {"all": [0.2, 0.4]},
                       "gain": {"s1": g, "all": g}, "gain_ci95": {"all": [g - 0.01, g + 0.01]}, "gain_p_value": 0.01,
                       "label_accuracy": 0.5 + 0.04 * i, "pairs": 15}
    write_json(r / "downstream/summary.json", {"k": 4, "subsets": ["s1"], "policies": policies})


@pytest.fixture
def fixture_report(tmp_path, params):
    """A report built from a small fixture run: (root, report folder, summary, params)."""
    p = copy.deepcopy(params)
    p["pairs"]["labelers"] = ["base", "rl", "sft", "gold", "random"]
    p["report"].update(fit_labelers=["base", "rl", "sft"], resamples=200, permutations=500)
    _fixture_run(tmp_path, p)
    out = tmp_path / "results/report"
    sources = {"verify": P.VERIFY_STATS, "bench": P.BENCH_STATS, "eval": P.EVAL_SUMMARY, "train": P.TRAIN_STATS,
               "rs": P.RS_STATS, "pairs": P.PAIRS_STATS, "dpo": P.DPO_STATS, "downstream": P.DOWNSTREAM_SUMMARY}
    summary = build_report(p, sources, {j: P.EVAL_METRICS.format(judge=j) for j in p["evaluate"]["judges"]},
                           {n: P.POLICY_PER_PROBLEM.format(policy=n) for n in all_policies(p["pairs"])},
                           metrics_path=out / "metrics.json", summary_path=out / "summary.json",
                           markdown_path=out / "summary.md", plots_dir=out, root=tmp_path)
    return tmp_path, out, summary, p


def test_report_from_fixture_run_matches_its_sources(fixture_report):
    root, out, summary, _ = fixture_report
    assert check_report(out, root=root) == []
    md = (out / "summary.md").read_text()
    for title in ("Generators", "Libra Bench composition", "Judges on Libra Bench", "Paired judge comparisons",
                  "Judge training", "Rejection sampling", "DPO pairs", "DPO training", "Downstream: policy pass@1",
                  "Downstream gain against judge quality"):
        assert f"### {title}" in md
    assert summary["correlation"]["libra_score"]["labelers"] == ["base", "rl", "sft"]
    for png in ("judge_accuracy.png", "confusion.png", "sft_loss.png", "grpo_reward.png", "dpo_loss.png",
                "gain_vs_libra_score.png", "gain_vs_label_accuracy.png"):
        assert (out / png).stat().st_size > 1000
        data = out / png.replace(".png", ".csv")
        curves = out / "curves" / png.replace(".png", "")
        assert data.exists() or any(curves.glob("*.csv")) or png.startswith("gain_vs"), png
    assert (out / "downstream_gain.csv").read_text().count("\n") == 1 + 5
    # negative twin: a source changed after the report was written is caught, with its cell named
    ev = read_json(root / "results/eval/summary.json")
    ev["judges"]["rl"]["libra_score"] = 0.81
    write_json(root / "results/eval/summary.json", ev)
    problems = check_report(out, root=root)
    assert len(problems) == 1 and "row 'rl'" in problems[0] and "Libra score" in problems[0]


def test_tampered_markdown_is_caught(fixture_report):
    root, out, _, _ = fixture_report
    md = out / "summary.md"
    md.write_text(md.read_text().replace("| 80.0 |", "| 81.0 |", 1))
    assert check_report(out, root=root)
    assert json.loads((out / "summary.json").read_text())["tables"]
