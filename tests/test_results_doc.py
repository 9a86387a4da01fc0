"""Generated results: docs/results.md and the README's results block are what `librarm results-doc`
renders from docs/results.json; the drift check names every changed key; the committed JSON keeps
every figure the README used to type by hand."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from librarm import results_doc as R
from librarm.cli import main
from librarm.run import paths as P
from librarm.run.io import read_json, write_json

DOC = read_json(REPO / R.RESULTS_JSON)


# ----------------------------------------------------------------------------- the committed documents
def test_results_md_is_rendered_from_its_json():
    assert R.results_markdown(DOC) == (REPO / R.RESULTS_MD).read_text(encoding="utf-8")


def test_readme_results_block_is_rendered_from_the_json():
    block = R.README_BLOCK.search((REPO / R.README).read_text(encoding="utf-8"))
    assert block, "README.md lacks its <!-- results:begin --> ... <!-- results:end --> block"
    assert block.group(2) == R.readme_block(DOC, read_json(REPO / R.SEEDS_JSON))


def test_render_rewrites_a_stale_readme_block(tmp_path):
    (tmp_path / "docs").mkdir()
    for f in (R.RESULTS_JSON, R.SEEDS_JSON):
        shutil.copy(REPO / f, tmp_path / f)
    (tmp_path / "README.md").write_text("intro\n<!-- results:begin -->\nlibra 99.9\n<!-- results:end -->\nrest\n")
    R.render_documents(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "99.9" not in text and text.startswith("intro\n") and text.endswith("<!-- results:end -->\nrest\n")
    assert (tmp_path / R.RESULTS_MD).read_text() == R.results_markdown(DOC)


# Every kind of figure the README used to carry by hand (its lines 63-391 at 526cec5), by where it
# now lives: the report's tables in docs/results.json (title -> row labels that must be there), the
# headline keys, and the seeds report's sections.
JUDGES = ["base", "teacher", "sft", "nothink", "rl", "rl_from_base", "rl_no_length_penalty", "scalar"]
LABELERS = ["base", "sft", "rl", "nothink", "scalar (short)", "gold", "gold_p60", "gold_p70", "gold_p80", "gold_p90",
            "random"]
TABLE_ROWS = {
    "Generators: share of samples verified correct": ["gen_weak", "gen_mid", "gen_strong"],
    "Libra Bench composition (items)": ["tiny_l5", "tiny_aime24", "tiny_aime25"],
    "Judges on Libra Bench": JUDGES + ["shortcut_probe"],
    "Judge hacking: false positives on the stress set (not in the Libra score)": JUDGES,
    "Scalar reward models": ["scalar"],
    "Paired judge comparisons (Libra score difference)": ["rl vs sft", "sft vs base", "rl vs base", "rl vs rl_from_base",
                                                          "sft vs teacher"],
    "GRPO: pass-rate filter and length penalty": ["judge_rl", "judge_rl_from_base", "judge_rl_no_length_penalty"],
    "DPO pairs per labeler (policy's own responses on the unlabeled pool)": LABELERS,
    "DPO training": [f"{n}/seed-0" for n in ("base", "sft", "rl", "gold", "random")],
    "Downstream: policy pass@1 (avg@4) on the hard eval subsets": ["none"] + LABELERS,
    "Gold curve: gain of the gold labeler at several pair counts (same DPO steps)": ["curve/gold-50", "curve/gold-100",
                                                                                    "curve/gold-200", "gold"],
    "Downstream gain against judge quality (fitted over the trained judges only)": ["libra_score", "label_accuracy",
                                                                                    "pair_accuracy"],
}
HEADLINE_KEYS = ["libra.base", "libra.teacher", "libra.sft", "libra.nothink", "libra.rl", "libra.rl_from_base",
                 "libra.rl_no_length_penalty", "libra.scalar", "gain.gold", "gain.sft", "gain.rl", "gain.base",
                 "gain.nothink", "gain.scalar", "gain.random", "gain.gold_p60", "gain.gold_p70", "gain.gold_p80",
                 "gain.gold_p90", "r_gain_vs_libra_score", "r_gain_vs_label_accuracy", "r_gain_vs_pair_accuracy",
                 "bench_items", "pair_budget", "short_labelers"]
SEEDS_SECTIONS = ["## Headline", "## Judges on Libra Bench", "## Judge differences (Libra score)",
                  "## Downstream gains (avg@k over `none`)", "## Gain against judge measure (fitted labeler groups)"]


def test_results_json_has_every_figure_the_readme_carried():
    assert [k for k in HEADLINE_KEYS if k not in DOC["headline"]] == []
    titles = {t["title"]: t for t in DOC["tables"]}
    for title, rows in TABLE_ROWS.items():
        assert title in titles, f"no table {title!r} in docs/results.json: {sorted(titles)}"
        labels = {str(r[0]) for r in titles[title]["rows"]}
        assert [r for r in rows if r not in labels] == [], title
    seeds = (REPO / R.SEEDS_MD).read_text(encoding="utf-8")
    assert [s for s in SEEDS_SECTIONS if s not in seeds] == []


def test_results_json_has_provenance_and_digests():
    prov = DOC["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"])
    assert re.fullmatch(r"[0-9a-f]{16}", prov["params_hash"])
    assert {"torch", "transformers", "trl"} <= set(prov["libraries"]) and prov["machine"]["cores"]
    assert P.BENCH_FILE in DOC["digests"]
    assert any(k.endswith("/predictions.jsonl") for k in DOC["digests"])
    assert any(k.endswith("/model.safetensors") for k in DOC["digests"])
    assert not any("training_args" in k or k.startswith(P.RESUME) for k in DOC["digests"])
    assert {r["what"] for r in DOC["reproducibility"]} and all(r["result"] == "same bytes"
                                                                for r in DOC["reproducibility"])


def test_seeds_report_carries_its_provenance():
    assert "## Provenance" in (REPO / R.SEEDS_MD).read_text(encoding="utf-8")
    assert read_json(REPO / R.SEEDS_JSON)["provenance"]["git_commit"]


# ----------------------------------------------------------------------------- the drift check
def _fake_run(root: Path) -> Path:
    """A run folder with a headline, a bench, a judge's predictions and a model folder."""
    write_json(root / P.REPORT_METRICS, {"libra.rl": 0.8, "gain.rl": 0.15, "bench_items": 12})
    (root / P.BENCH_FILE).parent.mkdir(parents=True)
    (root / P.BENCH_FILE).write_text('{"index": 0}\n')
    (root / "results/eval/rl").mkdir(parents=True)
    (root / "results/eval/rl/predictions.jsonl").write_text('{"index": 0, "pred": 1}\n')
    model = root / "results/train/judge_rl"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    (model / "training_args.bin").write_bytes(b"resume path A")
    (root / P.RESUME).mkdir(parents=True)
    (root / P.RESUME / "model.safetensors").write_bytes(b"working state")
    return root


def test_drift_names_every_changed_key(tmp_path):
    run = _fake_run(tmp_path)
    golden = {"headline": read_json(run / P.REPORT_METRICS), "digests": R.result_digests(run)}
    assert sorted(golden["digests"]) == [P.BENCH_FILE, "results/eval/rl/predictions.jsonl",
                                         "results/train/judge_rl/config.json",
                                         "results/train/judge_rl/model.safetensors"]
    assert R.drift(golden, run) == []
    # not results: the resume path in training_args.bin, resumable working state
    (run / "results/train/judge_rl/training_args.bin").write_bytes(b"resume path B")
    (run / P.RESUME / "model.safetensors").write_bytes(b"other state")
    assert R.drift(golden, run) == []
    write_json(run / P.REPORT_METRICS, {"libra.rl": 0.81, "gain.rl": 0.15, "libra.new": 0.5})
    (run / "results/train/judge_rl/model.safetensors").write_bytes(b"other weights")
    (run / "results/eval/rl/predictions.jsonl").unlink()
    assert R.drift(golden, run) == [
        "headline bench_items: missing from the run (golden 12)",
        "headline libra.new: not in the golden (run 0.5)",
        "headline libra.rl: golden 0.8, run 0.81",
        "file results/eval/rl/predictions.jsonl: missing from the run",
        "file results/train/judge_rl/model.safetensors: bytes differ"]


def test_check_command_fails_with_the_changed_keys(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    golden = tmp_path / "golden.json"
    write_json(golden, {"headline": read_json(run / P.REPORT_METRICS), "digests": R.result_digests(run)})
    assert main(["results-doc", "--check", "--run", str(run), "--golden", str(golden)]) == 0
    write_json(run / P.REPORT_METRICS, {"libra.rl": 0.7, "gain.rl": 0.15, "bench_items": 12})
    assert main(["results-doc", "--check", "--run", str(run), "--golden", str(golden)]) == 1
    out = capsys.readouterr().out
    assert "1 keys differ" in out and "headline libra.rl: golden 0.8, run 0.7" in out


def test_check_without_a_run_is_one_line(tmp_path, capsys):
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"headline": {}, "digests": {}}))
    assert main(["results-doc", "--check", "--run", str(tmp_path), "--golden", str(golden)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json" in err


@pytest.mark.parametrize("key", ["libra.rl", "gain.rl"])
def test_headline_figures_are_formatted_as_the_report_does(key):
    assert R._fmt_headline(key, 0.2254) == ("22.5" if key == "libra.rl" else "+22.5")


# ----------------------------------------------------------------------------- timing out of generated pages
def test_report_pages_drop_the_wall_clock_columns():
    """The Snakemake report's pages and the model cards are results (same bytes in every run): the
    wall-clock columns of summary.md's tables are dropped there, and blanked by repro_check."""
    from librarm.run.repro import drop_timing_columns, strip_timing_columns

    md = "### DPO training\n\n| policy | steps | seconds | tokens/s |\n|---|---|---|---|\n| rl | 50 | 3.9 | 4054 |\n"
    assert drop_timing_columns(md) == "### DPO training\n\n| policy | steps |\n|---|---|\n| rl | 50 |\n"
    assert "3.9" not in strip_timing_columns(md) and "| rl | 50 |" in strip_timing_columns(md)
