"""librarm.stages.replicates (the seeds stage): seed-aware Libra scores, differences, gains, orderings and
correlation on planted data shaped like a seeds-preset run; and report.replicates' config errors."""
import copy
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from librarm.cli import main
from librarm.run import paths as P
from librarm.run.config import ConfigError, load_params, validate_params
from librarm.run.io import read_json, write_json, write_jsonl
from librarm.run.labelers import NONE_POLICY, labeler_kind, policy_runs
from librarm.run.settings import DpoSettings, PairsSettings, call
from librarm.stages.replicates import build_seeds_report, judge_groups, seeds_markdown, verdict

BENCH_SUBSETS = ("tiny_l5", "tiny_aime24", "tiny_aime25")
EVAL_SUBSETS = ("tiny_aime24", "tiny_aime25")


def _params(**report):
    p = load_params(REPO / "params.yaml", ["seeds"])
    p["report"]["resamples"] = 400
    p["report"]["permutations"] = 200
    p["report"].update(report)
    return p


def _judge_accuracy(judge: str, k: int) -> float:
    """Planted bench accuracy: rl above sft by 10 points on every seed; the rest at 60%."""
    group = judge.rsplit("_s", 1)[0] if judge[-3:-1] == "_s" else judge
    return {"rl": 0.85, "sft": 0.75, "base": 0.6}.get(group, 0.6)


def _gain(name: str, k: int, d: int, spread: float) -> float:
    """Planted downstream gain: gold +40, noisy gold 8 points per 10 points of p, judges +10..+20,
    random 0; rl's judge seeds spread by `spread` around +20."""
    if name == "gold":
        return 0.40
    if name.startswith("gold_p"):
        return 0.40 * (int(name[6:]) - 50) / 50
    if name == "random":
        return 0.0
    if name.startswith("rl") and not name.startswith("rl_"):
        return 0.20 + spread * (k - 1)
    return 0.10


def _write_run(tmp_path, params, spread: float = 0.0):
    rng = np.random.default_rng(0)
    groups = call(judge_groups, params)
    preds = {}
    for g, members in groups.items():
        for k, m in enumerate(members):
            rows, i = [], 0
            for s in BENCH_SUBSETS:
                for q in range(40):
                    for item in range(3):
                        label = int(item % 2)
                        right = rng.random() < _judge_accuracy(m, k)
                        rows.append({"subset": s, "index": i, "question": f"{s}-q{q}", "label": label,
                                     "pred": label if right else 1 - label})
                        i += 1
            preds[m] = tmp_path / P.EVAL_PREDICTIONS.format(judge=m)
            write_jsonl(preds[m], rows)
    pairs = PairsSettings.from_params(params)
    member_group = {m: g for g, ms in groups.items() for m in ms}
    samples, down = {}, {}
    base_acc = {s: rng.uniform(0.2, 0.5, size=60) for s in EVAL_SUBSETS}
    for policy in [NONE_POLICY, *pairs.labelers]:
        group = member_group.get(policy, policy)
        k = groups.get(group, [policy]).index(policy) if group in groups else 0
        samples[policy] = {}
        for d, run in enumerate(policy_runs(policy, DpoSettings.from_params(params).seeds)):
            gain = 0.0 if policy == NONE_POLICY else _gain(group, k, d, spread)
            rows = []
            for s in EVAL_SUBSETS:
                for q in range(60):
                    p = min(1.0, max(0.0, base_acc[s][q] + gain + rng.normal(0, 0.05)))
                    rows += [{"subset": s, "problem_id": f"{s}-{q}", "correct": bool(rng.random() < p)} for _ in range(4)]
            path = tmp_path / P.POLICY_RUN_SAMPLES.format(policy=policy, run=run)
            write_jsonl(path, rows)
            samples[policy][run] = path
        if policy != NONE_POLICY:
            acc = 0.5 + _gain(group, k, 0, spread)
            down[policy] = {"label_accuracy": acc, "pair_accuracy": acc, "short": policy == "scalar"}
    write_json(tmp_path / P.DOWNSTREAM_SUMMARY, {"policies": down})
    return preds, samples, tmp_path / P.DOWNSTREAM_SUMMARY


def _report(tmp_path, params, spread=0.0):
    preds, samples, down = _write_run(tmp_path, params, spread)
    doc = call(build_seeds_report, params, preds, samples, down, tmp_path / "seeds.json", tmp_path / "seeds.md")
    assert read_json(tmp_path / "seeds.json") == doc
    # the Markdown is a function of the JSON file (whose keys are sorted): rows keep their order
    assert seeds_markdown(read_json(tmp_path / "seeds.json")) == (tmp_path / "seeds.md").read_text()
    return doc, (tmp_path / "seeds.md").read_text()


def test_the_seeds_preset_validates_and_pairs_its_replicates():
    params = _params()
    validate_params(params)
    groups = call(judge_groups, params)
    assert groups["rl"] == ["rl", "rl_s1", "rl_s2"] and groups["teacher"] == ["teacher"]
    assert all(len(groups[g]) == 3 for g in ("sft", "nothink", "rl", "rl_from_base", "rl_no_length_penalty", "sft_more"))
    assert DpoSettings.from_params(params).seeds == (0, 1, 2)


def test_planted_orderings_hold_across_seeds(tmp_path):
    doc, md = _report(tmp_path, _params())
    claims = {c["claim"]: c for c in doc["claims"]}
    assert claims["gold is the best labeler"]["verdict"] == "holds"
    assert claims["the noisy-gold curve rises"]["verdict"] == "holds"
    assert claims["rl - sft > 0 (Libra score)"]["verdict"] == "holds"
    assert claims["rl - sft > 0 (downstream gain)"]["verdict"] == "holds"
    assert claims["rl recovers >= 50% of gold's gain"]["verdict"] == "not established"     # +20 of +40
    # nothink and the others gain +10 over random's 0
    assert claims["random is not above any trained judge"]["verdict"] == "holds"
    assert doc["gains"]["rl"]["seeds"] == [3, 3] and doc["gains"]["gold"]["seeds"] == [1, 3]
    assert doc["gains"]["gold"]["mean"] == pytest.approx(0.40, abs=0.05)
    assert doc["judges"]["rl"]["mean"] == pytest.approx(0.85, abs=0.03) and len(doc["judges"]["rl"]["per_seed"]) == 3
    assert doc["judge_differences"]["rl - sft"]["ci95"][0] > 0
    assert "scalar" in doc["short_labelers"] and "scalar" not in doc["correlation"]["labelers"]
    corr = doc["correlation"]["libra_score"]
    assert corr["pearson"] > 0.5 and corr["pearson_ci95"][0] <= corr["pearson"] <= corr["pearson_ci95"][1]
    assert "## Headline" in md and "| gold is the best labeler | **holds** |" in md


def test_between_seed_spread_leaves_a_positive_mean_not_established(tmp_path):
    """rl's three judge seeds gain +5, +20 and +35: the mean (+20) is above sft's +10 and each seed's
    problems alone would say so, but over seeds the difference is not established."""
    doc, _ = _report(tmp_path, _params(), spread=0.15)
    rl_sft = next(c for c in doc["claims"] if c["claim"] == "rl - sft > 0 (downstream gain)")["rows"][0]
    assert rl_sft["mean"] == pytest.approx(0.10, abs=0.03)
    assert rl_sft["verdict"] == "not established", rl_sft
    assert doc["gains"]["rl"]["sd_over_seeds"] == pytest.approx(0.15, abs=0.03)


def test_verdict_reads_the_interval():
    assert verdict([0.01, 0.2]) == "holds"
    assert verdict([-0.2, -0.01]) == "reversed"
    assert verdict([-0.1, 0.1]) == "not established"


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["report"]["replicates"].__setitem__("rl", ["rl", "rl_s9"]), "'rl_s9' is not in evaluate.judges"),
    (lambda p: p["report"]["replicates"].__setitem__("sft", ["sft", "sft_s1", "rl_s1"]), "'rl_s1' is also in group"),
    (lambda p: p["pairs"].__setitem__("labelers", [x for x in p["pairs"]["labelers"] if x != "rl_s2"]),
     "some members are pairs.labelers and some are not"),
    (lambda p: p["report"]["replicates"].__setitem__("sft", ["sft", "sft_s1"]), "cannot be paired"),
])
def test_bad_replicates_are_one_line_each(edit, message):
    params = copy.deepcopy(_params())
    edit(params)
    with pytest.raises(ConfigError, match=message):
        validate_params(params)


def test_labeler_groups_follow_the_judges():
    params = _params()
    groups = call(judge_groups, params)
    assert labeler_kind("rl", groups) == "judge" and labeler_kind("gold_p70", groups) == "noisy_gold"


def test_the_replicates_step_runs_from_the_command_line_with_the_rules_file_names(tmp_path, monkeypatch):
    """`librarm stage replicates` as the rule calls it: every judge's predictions and every policy run's
    samples by name; a missing samples file is one line naming it."""
    params = _params()
    preds, samples, down = _write_run(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    write_json("params.json", params)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    files = [str(Path(p).relative_to(tmp_path)) for runs in samples.values() for p in runs.values()]
    argv = ["stage", "replicates", "--config", "params.json",
            "--in", "predictions", *[str(Path(p).relative_to(tmp_path)) for p in preds.values()],
            "--in", "downstream", P.DOWNSTREAM_SUMMARY, "--out", "json", P.SEEDS_JSON, "--out", "markdown", P.SEEDS_MARKDOWN]
    assert main([*argv, "--in", "samples", *files]) == 0
    assert read_json(P.SEEDS_JSON)["gains"]["rl"]["seeds"] == [3, 3]
    assert main([*argv, "--in", "samples", *files[1:]]) != 0


# ----------------------------------------------------------------------------- the committed seeds report
DOCS_JSON = REPO / "docs" / "seeds_report.json"
DOCS_MD = REPO / "docs" / "seeds_report.md"
README_BLOCK = re.compile(r"<!-- results:begin -->\n(.*?)<!-- results:end -->", re.S)


def _tables(md: str) -> list[str]:
    """Every Markdown table of a text, as its block of lines."""
    return [m.group(0) for m in re.finditer(r"(?:^\|.*\|\n)+", md, re.M)]


def test_the_committed_seeds_report_is_what_the_stage_writes_from_its_json():
    """docs/seeds_report.md is the seeds run's seeds.md: regenerated from the committed seeds.json
    by the stage's own code, it is the same text."""
    assert seeds_markdown(read_json(DOCS_JSON)) == DOCS_MD.read_text()


def test_readme_headline_tables_are_the_seeds_report_s():
    """The README's seed-aware table (in its generated results block) is the committed report's
    headline table (every claim and its verdict), verbatim."""
    block = README_BLOCK.search((REPO / "README.md").read_text())
    assert block, "README.md lacks its <!-- results:begin/end --> block"
    readme_tables, report_tables = _tables(block.group(1)), _tables(DOCS_MD.read_text())
    assert report_tables[0] in readme_tables           # the headline: every claim and its verdict
