"""Stage `verify` (run_verify) and `verify-stats` (summarize_verify) on small hand-made files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from librarm.io import read_json, read_jsonl, write_jsonl
from librarm.verify import REASONS, run_verify, summarize_verify

PROBLEMS_A = [  # real MATH-500 answer forms
    {"id": "p-half", "set": "math500", "role": "eval", "problem": "Half of one?", "answer": "\\frac{1}{2}"},
    {"id": "p-angle", "set": "math500", "role": "eval", "problem": "Angle?", "answer": "120^\\circ"},
    {"id": "p-cplx", "set": "math500", "role": "eval", "problem": "Complex?", "answer": "-2 + 7i"},
]
PROBLEMS_B = [  # a second set file; '?' has no math in it (gold_unparseable)
    {"id": "p-bad", "set": "broken", "role": "eval", "problem": "Broken gold.", "answer": "?"},
    {"id": "p-int", "set": "broken", "role": "eval", "problem": "Interval?", "answer": "(-\\infty, 2) \\cup (3, \\infty)"},
]


def _sample(sid, pid, response, finish="stop", closed=True, gen="gen-a", subset="math500"):
    return {"sample_id": sid, "problem_id": pid, "response": response, "finish_reason": finish,
            "think_closed": closed, "generator": gen, "subset": subset, "response_with_cot": response}


SAMPLES_A = [  # generator gen-a, subset math500
    _sample("a0", "p-half", "The answer is $\\boxed{0.5}$."),                      # correct
    _sample("a1", "p-half", "The answer is $\\boxed{\\frac{1}{3}}$."),             # wrong_answer
    _sample("a2", "p-angle", "so the angle is \\boxed{12", finish="length"),       # truncated
    _sample("a3", "p-angle", "", closed=False),                                     # no_final_answer (precheck)
    _sample("a4", "p-cplx", "Thus $z = \\boxed{7i - 2}$."),                         # correct
    _sample("a5", "p-bad", "\\boxed{?}"),                                           # gold_unparseable
    _sample("a6", "p-angle", "I could not finish."),                                # no_final_answer (grader)
    _sample("a7", "p-int", "\\boxed{(3,\\infty)\\cup(-\\infty,2)}"),               # correct
]
EXPECTED_A = {"a0": ("correct", 1), "a1": ("wrong_answer", 0), "a2": ("truncated", None),
              "a3": ("no_final_answer", None), "a4": ("correct", 1), "a5": ("gold_unparseable", None),
              "a6": ("no_final_answer", None), "a7": ("correct", 1)}


@pytest.fixture
def problem_files(tmp_path):
    a, b = tmp_path / "problems" / "math500.jsonl", tmp_path / "problems" / "broken.jsonl"
    write_jsonl(a, PROBLEMS_A)
    write_jsonl(b, PROBLEMS_B)
    return [a, b]


def test_run_verify_reasons_labels_and_meta(tmp_path, problem_files):
    samples = tmp_path / "samples" / "gen-a" / "math500.jsonl"
    write_jsonl(samples, SAMPLES_A)
    out = tmp_path / "verify" / "gen-a" / "math500.jsonl"
    meta = run_verify(samples, problem_files, out, tmp_path / "verify" / "gen-a" / "math500.meta.json", workers=2, timeout_s=10, progress=False)

    recs = read_jsonl(out).records
    assert [r["sample_id"] for r in recs] == [s["sample_id"] for s in SAMPLES_A]  # input order kept
    for r, s in zip(recs, SAMPLES_A):
        assert (r["reason"], r["label"]) == EXPECTED_A[r["sample_id"]], r
        assert {k: r[k] for k in s} == s  # every input field passes through unchanged
        gold = {p["id"]: p["answer"] for p in PROBLEMS_A + PROBLEMS_B}[r["problem_id"]]
        assert r["gold"] == gold
        assert r["reason"] in REASONS
        assert (r["pred"] is not None) == (r["reason"] in ("correct", "wrong_answer"))
    by_id = {r["sample_id"]: r for r in recs}
    assert by_id["a1"]["pred"] == "\\frac{1}{3}"

    sidecar = tmp_path / "verify" / "gen-a" / "math500.meta.json"
    assert read_json(sidecar) == json.loads(json.dumps(meta))
    assert meta["n"] == len(SAMPLES_A)
    assert meta["reasons"] == {"correct": 3, "wrong_answer": 1, "no_final_answer": 2, "truncated": 1,
                               "timeout": 0, "gold_unparseable": 1}
    assert set(meta["reasons"]) == set(REASONS)
    assert meta["workers_killed"] == 0
    assert meta["accuracy"] == round(3 / 8, 4)
    assert meta["seconds"] >= 0
    assert str(samples) in meta["provenance"]["data"]


def test_run_verify_timeout_is_recorded(tmp_path):
    problems = tmp_path / "problems" / "one.jsonl"
    write_jsonl(problems, [{"id": "p-one", "set": "x", "role": "eval", "problem": "One?", "answer": "1"}])
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [_sample("h0", "p-one", "\\boxed{1}"),
                          _sample("h1", "p-one", "The answer is \\boxed{9^{9^{9}}}."),  # hangs math-verify
                          _sample("h2", "p-one", "\\boxed{2}")])
    out = tmp_path / "v.jsonl"
    meta = run_verify(samples, [problems], out, tmp_path / "v.meta.json", workers=2, timeout_s=1.5, progress=False)
    recs = {r["sample_id"]: r for r in read_jsonl(out).records}
    assert (recs["h0"]["reason"], recs["h0"]["label"]) == ("correct", 1)
    assert (recs["h1"]["reason"], recs["h1"]["label"]) == ("timeout", None)
    assert (recs["h2"]["reason"], recs["h2"]["label"]) == ("wrong_answer", 0)
    assert meta["workers_killed"] == 1 and meta["reasons"]["timeout"] == 1
    assert read_json(tmp_path / "v.meta.json")["workers_killed"] == 1


def test_run_verify_unknown_problem_is_an_error(tmp_path, problem_files):
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [_sample("x0", "no-such-problem", "\\boxed{1}")])
    with pytest.raises(KeyError, match="no-such-problem"):
        run_verify(samples, problem_files, tmp_path / "v.jsonl", tmp_path / "v.meta.json", progress=False)
    assert not (tmp_path / "v.jsonl").exists()


def test_run_verify_all_prechecked(tmp_path, problem_files):
    # nothing reaches the pool: still writes outputs with the early reasons
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, [_sample("t0", "p-half", "\\boxed{0.5}", finish="length"),
                          _sample("t1", "p-half", "", closed=False)])
    meta = run_verify(samples, problem_files, tmp_path / "v.jsonl", tmp_path / "v.meta.json", progress=False)
    assert meta["reasons"]["truncated"] == 1 and meta["reasons"]["no_final_answer"] == 1
    assert meta["accuracy"] == 0.0
    assert [r["label"] for r in read_jsonl(tmp_path / "v.jsonl").records] == [None, None]


def _labelled(path: Path, gen: str, subset: str, reasons: list[str]) -> Path:
    recs = [{"sample_id": f"{gen}-{subset}-{i}", "problem_id": f"p{i}", "generator": gen, "subset": subset,
             "reason": r, "label": 1 if r == "correct" else 0 if r == "wrong_answer" else None}
            for i, r in enumerate(reasons)]
    write_jsonl(path, recs)
    return path


def test_summarize_verify(tmp_path, problem_files):
    # one real run_verify output plus hand-written ones for other (generator, subset) cells
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, SAMPLES_A)
    real = tmp_path / "verify" / "gen-a" / "math500.jsonl"
    run_verify(samples, problem_files, real, tmp_path / "verify" / "gen-a" / "math500.meta.json", workers=1, timeout_s=10, progress=False)
    paths = [
        real,  # gen-a/math500: 3 correct of 8
        _labelled(tmp_path / "verify" / "gen-a" / "tiny.jsonl", "gen-a", "tiny",
                  ["correct", "correct", "wrong_answer", "timeout"]),
        _labelled(tmp_path / "verify" / "gen-b" / "math500.jsonl", "gen-b", "math500",
                  ["wrong_answer", "wrong_answer", "correct", "truncated", "no_final_answer"]),
    ]
    out = tmp_path / "verify" / "stats.json"
    stats = summarize_verify(paths, out)
    assert read_json(out) == json.loads(json.dumps(stats))

    assert stats["accuracy"] == {"gen-a": {"math500": 0.375, "tiny": 0.5}, "gen-b": {"math500": 0.2}}
    assert stats["generator_accuracy"] == {"gen-a": round(5 / 12, 4), "gen-b": 0.2}
    assert stats["n"] == 17
    assert stats["reasons"] == {"correct": 6, "wrong_answer": 4, "no_final_answer": 3, "truncated": 2,
                                "timeout": 1, "gold_unparseable": 1}
    cell = stats["cells"]["gen-a"]["tiny"]
    assert cell["n"] == 4 and cell["reasons"]["timeout"] == 1 and set(cell["reasons"]) == set(REASONS)
    assert stats["cells"]["gen-a"]["math500"]["reasons"]["gold_unparseable"] == 1
    assert sum(stats["reasons"].values()) == stats["n"]


def test_verify_derives_the_final_part_itself_from_untrusted_records(tmp_path, problem_files):
    """A samples file made elsewhere keeps the thinking inside `response` and has no `think_closed`
    flag: verify must split it again and grade only what follows the thinking."""
    raw = [
        ("t0", "<think>half of one is \\boxed{\\frac{1}{2}}</think>"),                 # thinking only
        ("t1", "<think>it is \\boxed{\\frac{1}{2}} I think, but"),                      # unclosed think
        ("t2", "<think>maybe \\boxed{\\frac{1}{2}}</think>\nThe answer is $\\boxed{3}$."),  # boxed inside think
        ("t3", "<think>compute</think>\nThe answer is $\\boxed{0.5}$."),                # a real final part
    ]
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"sample_id": sid, "problem_id": "p-half", "response": text, "finish_reason": "stop"}
                          for sid, text in raw])
    out = tmp_path / "v.jsonl"
    run_verify(samples, problem_files, out, tmp_path / "v.meta.json", workers=1, timeout_s=10, progress=False)
    got = {r["sample_id"]: r["reason"] for r in read_jsonl(out).records}
    assert got == {"t0": "no_final_answer", "t1": "no_final_answer", "t2": "wrong_answer", "t3": "correct"}
