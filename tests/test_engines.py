"""librarm.engines: the backend registry. The schema's enum, the CLI's choices and the params checks
read it; a backend registered by a call (writing no file into the package) judges a bench through
params alone, and the judge's requests carry the whole item (question, reference, response, ids)."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import REPO, bench_file

from librarm import engines
from librarm.engines.base import SampleResult
from librarm.run.config import ConfigError, load_params, validate_params
from librarm.run.io import read_jsonl
from librarm.run.paths import SCHEMA_PATH


def test_the_schema_lists_exactly_the_built_in_backends():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$defs"]["backend"]["enum"] == list(engines.BUILTIN)
    assert engines.names() == sorted(engines.BUILTIN)


def test_every_built_in_backend_declares_itself():
    for name in engines.BUILTIN:
        b = engines.get(name)
        assert b.name == name and b.description and callable(b.make)
    assert engines.get("vllm").vllm_env and not engines.get("hf").vllm_env
    assert not engines.get("pseudo").needs_model


def test_an_unknown_backend_is_one_line_naming_the_key_and_the_choices():
    params = load_params(REPO / "params.yaml")
    params["judges"]["base"]["backend"] = "nope"
    with pytest.raises(ConfigError, match=r"judges.*backend.*'nope'.*(hf|one of)"):
        validate_params(params)


def test_a_backends_own_check_names_its_key():
    params = load_params(REPO / "params.yaml")
    params["judges"]["base"]["backend"] = "http"
    with pytest.raises(ConfigError, match=r"judges.base.base_url: required for backend 'http'"):
        validate_params(params)


class RuleJudge:
    """A toy rule-based judge: `correct` when the response's last boxed answer is the reference."""

    name = "toy-rule"

    def __init__(self):
        self.items = []

    def generate(self, requests):
        out = []
        for r in requests:
            item = r.problem
            self.items.append(item)
            answers = re.findall(r"\\boxed\{([^{}]*)\}", item["response"])
            answer = answers[-1] if answers else None
            verdict = "correct" if answer is not None and answer == str(item["reference"]) else "incorrect"
            out.append(SampleResult(f"<think>rule</think>\\boxed{{{verdict}}}", "stop", 0, 1))
        return out


@pytest.fixture
def toy_backend():
    made = []

    def make(spec, ref, cfg, threads, seed):
        made.append(RuleJudge())
        return made[-1]

    engines.register(engines.Backend("toy-rule", make, "a rule judge registered by a test", needs_model=False))
    yield made
    engines.unregister("toy-rule")


def test_a_backend_registered_by_a_call_scores_a_bench_through_params_alone(toy_backend, tmp_path):
    from librarm.run.settings import call
    from librarm.stages.evaluate import score_file

    params = load_params(REPO / "params.yaml", overlays=[{"judges": {"rule": {"backend": "toy-rule", "kind": "generative"}}}])
    validate_params(params)                                   # the schema's enum takes registered backends
    bench = bench_file(tmp_path / "bench.jsonl")
    m = call(score_file, params, "rule", bench, tmp_path / "out")
    (judge,) = toy_backend
    # the requests carried the whole item: its ids, question, reference and response
    assert {"index", "question", "response", "reference", "subset", "model"} <= set(judge.items[0])
    preds = read_jsonl(tmp_path / "out" / "predictions.jsonl").records
    rows = {r["index"]: r for r in read_jsonl(bench).records}
    want = {i: int(r["response"] == f"\\boxed{{{r['reference']}}}") for i, r in rows.items()}
    assert [p["pred"] for p in preds] == [want[p["index"]] for p in preds] and len(set(want.values())) == 2
    assert m["n_items"] == 24 and m["status_counts"]["parsed"] == 24
    # nothing was written into the package
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "workflow/librarm"],
                            cwd=REPO, capture_output=True, text=True).stdout
    assert "toy" not in status
