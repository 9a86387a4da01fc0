"""Judging end to end on small real models: verdict parsing, prompt budget, generative and scalar
judges, the score CLI on an external bench file, and the metrics file keys."""
import json
from pathlib import Path

import pytest
from tiny_fixtures import make_random_lm, params_with_path_model

from librarm.io import read_jsonl
from librarm.judge import fit_prompt, parse_verdict


@pytest.mark.parametrize("text,finish,value,status", [
    ("<think>hmm \\boxed{incorrect}</think>\n\\boxed{correct}", "stop", 1, "parsed"),
    ("<think>x</think> first \\boxed{correct} then \\boxed{incorrect}", "stop", 0, "parsed"),   # last wins
    ("<think>it is \\boxed{correct}", "stop", None, "unterminated"),                           # no closing tag
    ("<think>x</think>\\boxed{correct}", "length", None, "truncated"),
    ("<think>x</think> I am not sure", "stop", None, "no_verdict"),
    ("Verdict: incorrect", "stop", 0, "parsed"),
    ("\\boxed{\\text{correct}}", "stop", 1, "parsed"),
    ("\\boxed{yes}", "stop", 1, "parsed"),
    ("The answer is correct.", "stop", 1, "parsed"),                 # plain-language fallback
    ("The final answer is not correct.", "stop", 0, "parsed"),
    ("It looks wrong to me.", "stop", 0, "parsed"),
    ("\\boxed{incorrect}. The method is correct.", "stop", 0, "parsed"),  # explicit verdict wins
])
def test_parse_verdict(text, finish, value, status):
    v = parse_verdict(text, finish)
    assert (v.value, v.status) == (value, status)


def test_verdict_inside_thinking_never_counts():
    assert parse_verdict("<think>\\boxed{correct}</think>").value is None


def test_fit_prompt_truncates_response_keeping_the_end():
    from librarm.tinyworld import build_tokenizer

    tok = build_tokenizer()
    long_resp = "step " * 200 + "\\boxed{42}"
    msgs, status = fit_prompt(tok, "Q: {question}\nA: {response}", None, "What?", long_resp, 120, "truncate_response")
    assert status == "truncated" and msgs[-1]["content"].endswith("\\boxed{42}") and "[...]" in msgs[-1]["content"]
    from librarm.sampling import render_chat

    assert len(tok(render_chat(tok, msgs), add_special_tokens=False)["input_ids"]) <= 120
    assert fit_prompt(tok, "Q: {question}\nA: {response}", None, "What?", long_resp, 120, "skip") == (None, "skipped")


def _bench_file(path: Path, label_form=lambda l: l):
    rows = []
    for i in range(24):
        sub = ["alpha", "beta"][i % 2]
        rows.append({"index": i, "question": f"Compute {i // 4}+1.", "response": f"\\boxed{{{i // 4 + (i % 3 == 0)}}}",
                     "label": label_form(int(i % 3 != 0)), "model": ["g1", "g2"][i % 4 // 2], "reference": str(i // 4 + 1),
                     "subset": sub, "response_with_cot": "x"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return make_random_lm(tmp_path_factory.mktemp("j") / "judge")


@pytest.mark.parametrize("form", [lambda l: l, bool, lambda l: "true" if l else "false"])
def test_score_cli_on_external_bench(tmp_path, judge_dir, form, repo):
    from librarm.cli import main

    bench = _bench_file(tmp_path / "bench.jsonl", form)
    rc = main(["score", "--bench", str(bench), "--judge", "mine", "--model", str(judge_dir),
               "--params", str(repo / "params.yaml"), "--out", str(tmp_path / "out")])
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


def test_score_cli_unknown_judge_is_clear(tmp_path, repo, capsys):
    from librarm.cli import main

    bench = _bench_file(tmp_path / "bench.jsonl")
    assert main(["score", "--bench", str(bench), "--judge", "nope", "--params", str(repo / "params.yaml"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


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
    bench = _bench_file(tmp_path / "bench.jsonl")
    p["evaluate"]["threshold_split"] = None
    with pytest.raises(ValueError, match="threshold_split"):
        run_evaluate(p, "scalar", bench, tmp_path / "out" / "predictions.jsonl", tmp_path / "out" / "metrics.json")
    p["evaluate"]["threshold_split"] = str(_bench_file(tmp_path / "val.jsonl"))
    m = run_evaluate(p, "scalar", bench, tmp_path / "out" / "predictions.jsonl", tmp_path / "out" / "metrics.json")
    assert 0.0 <= m["auroc"] <= 1.0 and "threshold" in m and m["unparsed_rate"] == 0
