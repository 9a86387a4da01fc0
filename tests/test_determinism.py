"""Same params, same bytes (the cheap form of scripts/repro_check.sh): a judge trained twice gives
the same weights, another seed gives different ones (the negative twin); a DPO run is a pure
function of its own pairs file and settings, so a short labeler elsewhere cannot move it; and
the run-folder comparison ignores exactly what it lists and nothing else."""
from __future__ import annotations

import copy
import json

import pytest

from librarm.run.io import file_sha256, write_json, write_jsonl


def _weights(folder) -> str:
    return file_sha256(folder / "model.safetensors")


def _judge_items(n_problems: int = 12) -> list[dict]:
    items = []
    for p in range(n_problems):
        a, b = p % 9 + 1, (p * 5) % 9
        for k, wrong in enumerate((0, 1, 0, 1)):
            ans = a + b + wrong
            items.append({"item_id": f"p{p}|g|{k}", "question": f"Compute {a}+{b}.", "label": 1 - wrong,
                          "response": f"\\boxed{{{ans}}}", "response_with_cot": f"<think>{a}+{b}={ans}</think>\n\\boxed{{{ans}}}"})
    return items


@pytest.fixture
def scalar_setup(tmp_path, params):
    from tiny_fixtures import make_random_lm

    model_dir = make_random_lm(tmp_path / "init", hidden=16)
    write_jsonl(tmp_path / "train.jsonl", _judge_items())
    p = copy.deepcopy(params)
    p["scalar_rm"].update(steps=6, batch_size=4, input="response_with_cot")
    return p, model_dir, tmp_path


def test_scalar_rm_twice_is_byte_identical_and_another_seed_is_not(scalar_setup):
    """The scalar RM's fresh score head is drawn from torch's RNG when the model is loaded: before
    seed_everything it was unseeded, and two fresh clones got different weights (issue: 7 of 432
    result files differed, all downstream of it)."""
    from librarm.run.settings import call
    from librarm.stages.train import run_scalar_rm

    p, init, tmp = scalar_setup
    run = lambda params, tag: call(run_scalar_rm, params, tmp / "train.jsonl", str(init), tmp / tag,  # noqa: E731
                                   name=f"rm-{tag}", resume_root=tmp / f"resume-{tag}", threads=1)
    run(p, "a")
    run(p, "b")
    assert _weights(tmp / "a") == _weights(tmp / "b")
    other = copy.deepcopy(p)
    other["scalar_rm"]["seed"] = 1
    run(other, "c")
    assert _weights(tmp / "c") != _weights(tmp / "a")


@pytest.mark.slow
def test_dpo_of_one_labeler_ignores_a_short_labeler_elsewhere(tmp_path, params):
    """The forced-short-labeler check carried through DPO: the pairs stage is run with a judge that
    makes 0 pairs and with one forced to 37; gold's pairs file and its DPO policy are the same
    bytes in both worlds, and the short labeler trains for the budget's steps."""
    from conftest import build_pairs_into, resp
    from tiny_fixtures import make_random_lm

    from librarm.run.io import read_json
    from librarm.run.settings import call
    from librarm.stages.dpo import run_dpo

    p = copy.deepcopy(params)
    p["pairs"].update(labelers=["scalar", "gold"], budget=40, gold_curve=[])
    p["dpo"].update(epochs=1, batch_size=8, val_every=5, val_k=1)
    p["evaluate_policy"]["max_new_tokens"] = 16
    init = make_random_lm(tmp_path / "policy", hidden=16)
    recs = [resp(f"p{j}", i, (i + j) % 3 == 0) for j in range(60) for i in range(6)]
    write_jsonl(tmp_path / "verified.jsonl", recs)
    write_jsonl(tmp_path / "val.jsonl", [{"id": f"v{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)}
                                         for i in range(4)])
    weights, logs = {}, {}
    for forced in (0, 37):
        labels = [{"sample_id": r["sample_id"], "status": "parsed",
                   "pred": 0 if r["sample_id"].endswith("|0") and int(r["problem_id"][1:]) < forced else 1} for r in recs]
        write_jsonl(tmp_path / "scalar.jsonl", labels)
        out = tmp_path / f"pairs{forced}"
        build_pairs_into(p, tmp_path / "verified.jsonl", {"scalar": tmp_path / "scalar.jsonl"}, out)
        for name in ("gold", "scalar"):
            logs[forced, name] = call(run_dpo, p, out / f"{name}.jsonl", tmp_path / "val.jsonl", str(init),
                                      tmp_path / f"dpo{forced}-{name}", name=name, seed=0, threads=1,
                                      resume_root=tmp_path / f"resume{forced}", budget=40)
            weights[forced, name] = _weights(tmp_path / f"dpo{forced}-{name}")
        assert read_json(out / "stats.json")["labelers"]["scalar"]["pairs_trained"] == forced
    assert weights[0, "gold"] == weights[37, "gold"]
    assert logs[0, "gold"]["val_curve"] == logs[37, "gold"]["val_curve"]
    assert logs[37, "scalar"]["steps"] == logs[37, "gold"]["steps"] == 5        # ceil(1 * 40 / 8)
    assert logs[0, "scalar"]["steps"] == 0                                     # no pair: the base policy


def test_repro_diff_ignores_listed_keys_and_paths_only(tmp_path):
    from librarm.run.repro import compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    for root, secs, acc in ((a, 1.5, 0.8), (b, 9.0, 0.8)):
        write_json(root / "results" / "eval" / "metrics.json", {"accuracy": acc, "seconds": secs,
                                                                 "nested": {"tokens_per_s": secs * 10}})
        (root / "results" / "logs").mkdir(parents=True)
        (root / "results" / "logs" / "x.log").write_text(f"took {secs}s")
        write_jsonl(root / "results" / "samples.jsonl", [{"id": 1, "seconds": secs}])
    assert compare_runs(a, b).differences == []
    # any other difference fails, named by file and key
    write_json(b / "results" / "eval" / "metrics.json", {"accuracy": 0.81, "seconds": 1.0, "nested": {}})
    diffs = compare_runs(a, b).differences
    assert any("results/eval/metrics.json" in d and "accuracy" in d for d in diffs)
    (b / "results" / "extra.bin").write_bytes(b"x")
    assert any("extra.bin" in d and "only in" in d for d in compare_runs(a, b).differences)
    assert json.loads(json.dumps(compare_runs(a, b).excluded))      # the exclusions are reported


def test_gradient_checkpointing_changes_no_weight(tmp_path, monkeypatch):
    """device_args turns TRL's default gradient checkpointing off on the CPU for speed: the
    recomputed forward is the same arithmetic, so the trained weights are the same bytes."""
    from tiny_fixtures import make_random_lm

    from librarm.run.settings import LaunchSettings, SftSettings
    from librarm.stages import train
    from librarm.stages.train import run_sft

    model_dir = make_random_lm(tmp_path / "init", hidden=16)
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"<|user|>q{i}<|assistant|>", "completion": f"<think>{i}+{i}</think>ok",
                                          "kind": "judging"} for i in range(12)])
    cfg = SftSettings(init="rand", steps=4, learning_rate=1e-3, batch_size=4, save_steps=10)
    hashes = {}
    for on in (True, False):
        monkeypatch.setattr(train, "device_args", lambda on=on: {"bf16": False, "gradient_checkpointing": on})
        run_sft(tmp_path / "sft.jsonl", str(model_dir), tmp_path / f"out-{on}", cfg, name=f"sft-{on}",
                resume_root=tmp_path / "resume", threads=1, launch=LaunchSettings())
        hashes[on] = _weights(tmp_path / f"out-{on}")
    assert hashes[True] == hashes[False]


def test_repro_markdown_timing_columns_and_commits(tmp_path):
    """A report table's seconds and tokens/s columns differ between identical runs; any other cell
    does not. A run's recorded commit differs only with --across-commits."""
    from librarm.run.repro import compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    for root, secs, commit in ((a, "23.2", "c1"), (b, "34.6", "c2")):
        (root / "results").mkdir(parents=True)
        (root / "results" / "t.md").write_text(f"# r\n\n| model | steps | seconds | tokens/s | acc |\n|---|---|---|---|---|\n"
                                               f"| m | 150 | {secs} | 2308 | 44.1 |\n\ntext\n")
        write_json(root / "results" / "x.meta.json", {"provenance": {"git_commit": commit, "data": {"f": "h"}}})
    diffs = compare_runs(a, b).differences
    assert len(diffs) == 1 and "git_commit" in diffs[0]
    assert compare_runs(a, b, across_commits=True).differences == []
    (b / "results" / "t.md").write_text((b / "results" / "t.md").read_text().replace("44.1", "44.2"))
    assert [d for d in compare_runs(a, b, across_commits=True).differences if "t.md" in d]
