"""librarm.stages.evaluate on small real models: `librarm score` on an external bench file (label forms,
subset names from the data, the metrics file keys) and a scalar judge's threshold from a split."""
import json

import pytest
from conftest import bench_file
from tiny_fixtures import make_random_lm, params_with_path_model

from librarm.run.io import read_jsonl
from librarm.run.settings import call


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return make_random_lm(tmp_path_factory.mktemp("j") / "judge")


@pytest.mark.parametrize("form", [lambda l: l, bool, lambda l: "true" if l else "false"])
def test_score_cli_on_external_bench(tmp_path, judge_dir, form, repo):
    from librarm.cli import main

    bench = bench_file(tmp_path / "bench.jsonl", form)
    rc = main(["score", "--bench", str(bench), "--judge", "mine", "--model", str(judge_dir),
               "--params", str(repo / "params.yaml"), "--preset", "none", "--out", str(tmp_path / "out")])
    assert rc == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(m["subset_accuracy"]) == {"alpha", "beta"}          # subset names come from the data
    for key in ("libra_score", "macro_f1", "confusion", "ci95", "generator_accuracy", "unparsed_rate", "n_items",
                "n_problems", "accuracy_parsed_only", "truncated_rate", "problem_prior_baseline"):
        assert key in m
    assert m["n_items"] == 24 and m["n_problems"] == 12
    preds = read_jsonl(tmp_path / "out" / "predictions.jsonl").records
    assert [p["index"] for p in preds] == list(range(24))
    # labels as the bench gives them (i % 3 != 0), whatever form the file wrote them in
    assert [p["label"] for p in preds] == [int(i % 3 != 0) for i in range(24)]
    # The rates, recomputed from the predictions by their definitions (librarm.judging.metrics): an item
    # without a verdict (pred None; a random model rarely emits one) counts as WRONG in accuracy
    # and the subset scores, and is left out only of accuracy_parsed_only.
    parsed = [p for p in preds if p["pred"] is not None]
    assert all(p["pred"] in (0, 1) for p in parsed)
    right = sum(p["pred"] == p["label"] for p in parsed)
    assert m["accuracy"] == round(right / 24, 6)
    assert m["accuracy_parsed_only"] == (round(right / len(parsed), 6) if parsed else 0.0)
    assert m["unparsed_rate"] == round((24 - len(parsed)) / 24, 6)
    conf = m["confusion"]
    assert conf["label_0"]["none"] + conf["label_1"]["none"] == 24 - len(parsed)
    for sub in ("alpha", "beta"):
        items = [p for p in preds if p["subset"] == sub]
        assert m["subset_accuracy"][sub] == round(sum(p["pred"] == p["label"] for p in items) / len(items), 6)
    assert m["libra_score"] == round((m["subset_accuracy"]["alpha"] + m["subset_accuracy"]["beta"]) / 2, 6)


def test_unparsed_verdicts_count_as_wrong_except_in_parsed_only(tmp_path, params):
    """run_evaluate with a scripted judge whose outcome per item is known: no verdict on every 4th
    item, a wrong one on items 1, 9 and 17, the right one elsewhere. Pinned numbers: had the
    unparsed items been dropped instead of counted wrong, accuracy would be 15/18 and alpha 1.0."""
    from librarm.engines.base import SampleResult
    from librarm.stages.evaluate import run_evaluate

    class Scripted:
        name = "scripted"

        def generate(self, reqs):
            out = []
            for r in reqs:
                i, label = r.problem["index"], r.problem["label"]
                if i % 4 == 0:
                    text = "<think>hmm</think>I cannot tell."
                else:
                    verdict = "correct" if bool(label) != (i % 8 == 1) else "incorrect"
                    text = f"<think>ok</think>\\boxed{{{verdict}}}"
                out.append(SampleResult(text, "stop", 5, 5))
            return out

    bench = bench_file(tmp_path / "bench.jsonl")
    m = call(run_evaluate, params, "base", bench, tmp_path / "preds.jsonl", tmp_path / "metrics.json", sampler=Scripted())
    preds = read_jsonl(tmp_path / "preds.jsonl").records
    assert [p["index"] for p in preds if p["pred"] is None] == [0, 4, 8, 12, 16, 20]
    assert [p["index"] for p in preds if p["pred"] is not None and p["pred"] != p["label"]] == [1, 9, 17]
    assert (m["n_items"], m["accuracy"], m["accuracy_parsed_only"], m["unparsed_rate"]) == (24, 0.625, 0.833333, 0.25)
    assert m["subset_accuracy"] == {"alpha": 0.5, "beta": 0.75} and m["libra_score"] == 0.625
    assert m["confusion"]["label_1"]["none"] == 4 and m["confusion"]["label_0"]["none"] == 2
    assert m["truncated_rate"] == 0.0


def test_scalar_rm_threshold_from_split(tmp_path, params):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from librarm.stages.bootstrap_tiny import build_tokenizer
    from librarm.stages.evaluate import run_evaluate

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    p = params_with_path_model(params, tmp_path / "rm")
    p["judges"]["scalar"] = {"model": "rand", "backend": "hf", "kind": "scalar"}
    bench = bench_file(tmp_path / "bench.jsonl")
    p["evaluate"]["threshold_split"] = None
    with pytest.raises(ValueError, match="threshold_split"):
        call(run_evaluate, p, "scalar", bench, tmp_path / "out" / "predictions.jsonl", tmp_path / "out" / "metrics.json")
    p["evaluate"]["threshold_split"] = str(bench_file(tmp_path / "val.jsonl"))
    m = call(run_evaluate, p, "scalar", bench, tmp_path / "out" / "predictions.jsonl", tmp_path / "out" / "metrics.json")
    assert 0.0 <= m["auroc"] <= 1.0 and "threshold" in m and m["unparsed_rate"] == 0


def test_status_counts_list_every_status_and_ambiguous_counts_as_unparsed(tmp_path, params):
    """A judge that plants a second `</think>` (ambiguous) on every 3rd item and answers in plain
    language on every 4th: ambiguous is counted on its own in status_counts (every status listed,
    zeros included) and as unparsed in unparsed_rate; verdict_sources counts the plain-language
    verdicts."""
    from librarm.engines.base import SampleResult
    from librarm.judging.judge import STATUSES
    from librarm.stages.evaluate import run_evaluate

    class Planted:
        name = "planted"

        def generate(self, reqs):
            out = []
            for r in reqs:
                i, label = r.problem["index"], r.problem["label"]
                verdict = "correct" if label else "incorrect"
                if i % 3 == 0:
                    text = "<think>x</think>\\boxed{incorrect}</think>\\boxed{correct}"
                elif i % 4 == 0:
                    text = f"<think>x</think>The answer is {verdict}."
                else:
                    text = f"<think>x</think>\\boxed{{{verdict}}}"
                out.append(SampleResult(text, "stop", 5, 5))
            return out

    m = call(run_evaluate, params, "base", bench_file(tmp_path / "bench.jsonl"), tmp_path / "p.jsonl",
             tmp_path / "m.json", sampler=Planted())
    assert set(m["status_counts"]) == set(STATUSES)
    assert m["status_counts"]["ambiguous"] == 8 and m["status_counts"]["parsed"] == 16
    assert m["status_counts"]["unterminated"] == 0 and m["unparsed_rate"] == round(8 / 24, 6)
    assert m["verdict_sources"] == {"explicit": 12, "plain": 4}
    preds = read_jsonl(tmp_path / "p.jsonl").records
    assert {p["verdict_source"] for p in preds if p["index"] % 3 == 0} == {None}


def test_k_verdicts_keep_the_first_and_add_the_majority(tmp_path, repo):
    """evaluate.samples k: `pred` stays the single-verdict run's (sample 0 has its seed), every item
    gets k verdicts, their majority and P(correct), and metrics get the k-verdict views."""
    import copy

    from librarm.engines.base import SampleResult
    from librarm.run.config import load_params
    from librarm.stages.evaluate import run_evaluate

    class BySeed:
        """A judge whose verdict is a function of the request's seed (so repeats differ)."""

        def generate(self, requests):
            return [SampleResult("<think>x</think>\\boxed{" + ("correct" if r.seed % 3 else "incorrect") + "}",
                                 "stop", 5, 5) for r in requests]

    params = load_params(repo / "params.yaml")
    bench = bench_file(tmp_path / "bench.jsonl")
    one = call(run_evaluate, params, "base", bench, tmp_path / "p1.jsonl", tmp_path / "m1.json", sampler=BySeed())
    k3 = copy.deepcopy(params)
    k3["evaluate"]["samples"] = 3
    m = call(run_evaluate, k3, "base", bench, tmp_path / "p3.jsonl", tmp_path / "m3.json", sampler=BySeed())
    p1, p3 = read_jsonl(tmp_path / "p1.jsonl").records, read_jsonl(tmp_path / "p3.jsonl").records
    assert [p["pred"] for p in p3] == [p["pred"] for p in p1] and m["libra_score"] == one["libra_score"]
    assert all(len(p["verdicts"]) == 3 and p["verdicts"][0] == p["pred"] for p in p3)
    assert any(len(set(p["verdicts"])) > 1 for p in p3)                 # repeats have their own seeds
    for p in p3:
        ones = sum(p["verdicts"])
        assert p["majority"] == (1 if ones >= 2 else 0) and p["p_correct"] == ones / 3
    assert m["samples"]["k"] == 3 and {"first", "majority", "mean_p"} <= set(m["samples"])
    assert "samples" not in one
