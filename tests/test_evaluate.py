"""librarm.evaluate on small real models: `librarm score` on an external bench file (label forms,
subset names from the data, the metrics file keys) and a scalar judge's threshold from a split."""
import json

import pytest
from conftest import bench_file
from tiny_fixtures import make_random_lm, params_with_path_model

from librarm.io import read_jsonl


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
    # a random model rarely emits a verdict: those count as wrong in the headline score
    assert m["accuracy"] <= m["accuracy_parsed_only"] or m["unparsed_rate"] == 0


def test_scalar_rm_threshold_from_split(tmp_path, params):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from librarm.evaluate import run_evaluate
    from librarm.tinyworld import build_tokenizer

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
        run_evaluate(p, "scalar", bench, tmp_path / "out" / "predictions.jsonl", tmp_path / "out" / "metrics.json")
    p["evaluate"]["threshold_split"] = str(bench_file(tmp_path / "val.jsonl"))
    m = run_evaluate(p, "scalar", bench, tmp_path / "out" / "predictions.jsonl", tmp_path / "out" / "metrics.json")
    assert 0.0 <= m["auroc"] <= 1.0 and "threshold" in m and m["unparsed_rate"] == 0
