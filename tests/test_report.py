"""librarm.stages.report built from a small fixture run: every number in summary.md equals its metrics
file, and a source changed after the report was written, or a tampered table, is caught."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from librarm.run import paths as P
from librarm.run.io import read_json, write_json
from librarm.run.labelers import all_policies
from librarm.run.settings import PairsSettings, call
from librarm.stages.report import build_report, check_report


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
    summary = call(build_report, p, sources, {j: P.EVAL_METRICS.format(judge=j) for j in p["evaluate"]["judges"]},
                           {n: P.POLICY_PER_PROBLEM.format(policy=n) for n in all_policies(PairsSettings.from_params(p))},
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
