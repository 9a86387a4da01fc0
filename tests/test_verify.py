"""librarm.verify: the answer verifier (fixture regression over real MATH-500 answer forms, the
helpers, gold parsing, the worker pool: order, timeouts, kills, no code execution; no model is
needed), and the stages `verify` (run_verify) and `verify-stats` (summarize_verify) on small
hand-made files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared_data

import librarm.verify
from librarm.io import read_json, read_jsonl, write_jsonl
from librarm.think import split_think
from librarm.verify import (
    GRADABLE,
    REASONS,
    VerifierPool,
    extract_boxed,
    grade_answer,
    grade_serial,
    parse_gold,
    precheck,
    run_verify,
    summarize_verify,
)

FIXTURE = Path(__file__).parent / "fixtures" / "answer_forms.jsonl"
CASES = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]

# Takes minutes in math-verify (sympy evaluates the power tower); the pool must cut it off.
HANG = ("1", "The answer is \\boxed{9^{9^{9}}}.")


def _case_id(i: int, case: dict) -> str:
    return f"{i:03d}-{case['expected']}-{case['gold'][:20]}"


# ----------------------------------------------------------------------------- fixture regression
def test_fixture_is_well_formed():
    assert len(CASES) >= 60
    for c in CASES:
        assert set(c) == {"gold", "response", "expected", "note"}, c
        assert c["expected"] in ("correct", "wrong_answer", "no_final_answer", "gold_unparseable"), c
        assert isinstance(c["gold"], str) and isinstance(c["response"], str) and c["note"], c
    kinds = {c["expected"] for c in CASES}
    assert kinds == {"correct", "wrong_answer", "no_final_answer", "gold_unparseable"}
    assert len({(c["gold"], c["response"]) for c in CASES}) == len(CASES), "duplicate fixture case"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(i, c) for i, c in enumerate(CASES)])
def test_answer_forms(case):
    """Pins what the verifier returns today. Notes starting with 'KNOWN MISGRADE:' record cases
    where math-verify's answer is mathematically wrong; if one of them changes, math-verify changed:
    check the new behaviour and update the fixture."""
    reason, pred = grade_answer(case["gold"], case["response"])
    assert reason == case["expected"], f"{case['note']}: got {reason} (pred {pred!r})"
    if reason in GRADABLE:
        assert pred
    else:
        assert pred is None


def test_known_misgrades_are_documented():
    misgrades = [c for c in CASES if c["note"].startswith("KNOWN MISGRADE:")]
    assert len(misgrades) >= 2
    notes = " ".join(c["note"] for c in misgrades)
    assert "self-correction" in notes and "2006!" in notes


def test_self_correction_is_not_last_box():
    # math-verify joins every box of the text into a set; extract_boxed (used elsewhere) takes the last.
    text = "First \\boxed{2}. Wait, that was wrong: \\boxed{3}."
    assert extract_boxed(text) == "3"
    assert grade_answer("3", text) == ("wrong_answer", "2,3")
    assert grade_answer("3", "\\boxed{" + extract_boxed(text) + "}")[0] == "correct"


# ----------------------------------------------------------------------------- extract_boxed
def test_extract_boxed_nested_braces():
    assert extract_boxed("so \\boxed{\\frac{\\sqrt{3}}{2}} done") == "\\frac{\\sqrt{3}}{2}"
    assert extract_boxed("\\boxed{ \\left\\{ 1, 2 \\right\\} }") == "\\left\\{ 1, 2 \\right\\}"


def test_extract_boxed_last_box_wins():
    assert extract_boxed("\\boxed{1} then \\boxed{2} and finally \\boxed{x^{2}}") == "x^{2}"


def test_extract_boxed_none():
    assert extract_boxed("no box here, the answer is 5") is None
    assert extract_boxed("") is None
    assert extract_boxed("\\boxed{unterminated") is None
    # an unterminated last box after a complete one: the complete one is the last *balanced* box
    assert extract_boxed("\\boxed{4} and \\boxed{5") == "4"


# ----------------------------------------------------------------------------- precheck / think
def test_precheck_truncated():
    rec = {"response": "\\boxed{5}", "finish_reason": "length", "think_closed": True}
    assert precheck(rec) == "truncated"
    # truncation wins over the other early reasons
    assert precheck({"response": "", "finish_reason": "length", "think_closed": False}) == "truncated"


def test_precheck_no_final_answer():
    assert precheck({"response": "\\boxed{5}", "finish_reason": "stop", "think_closed": False}) == "no_final_answer"
    assert precheck({"response": "", "finish_reason": "stop", "think_closed": True}) == "no_final_answer"
    assert precheck({"response": "  \n ", "finish_reason": "stop", "think_closed": True}) == "no_final_answer"
    assert precheck({"response": None, "finish_reason": "stop"}) == "no_final_answer"


def test_precheck_passes_gradable_records():
    assert precheck({"response": "\\boxed{5}", "finish_reason": "stop", "think_closed": True}) is None
    assert precheck({"response": "\\boxed{5}", "finish_reason": "stop"}) is None  # no think field: closed


def test_unterminated_think_is_never_correct():
    raw = "<think>Let me compute. 2+3 = 5, so the answer is \\boxed{5}"
    parts = split_think(raw)
    assert not parts.closed and parts.final == ""
    rec = {"response": parts.final, "finish_reason": "stop", "think_closed": parts.closed}
    assert precheck(rec) == "no_final_answer"
    # even if the precheck were skipped, the final part has nothing to grade
    assert grade_answer("5", parts.final) == ("no_final_answer", None)
    # the raw text would have been graded correct: the split is what protects us
    assert grade_answer("5", raw)[0] == "correct"
    # prompt-opened think (R1-distill templates) without a closing tag: same
    parts = split_think("2+3 = 5 so \\boxed{5}", prompt_opens_think=True)
    assert precheck({"response": parts.final, "finish_reason": "stop", "think_closed": parts.closed}) == "no_final_answer"


def test_closed_think_final_part_is_graded():
    parts = split_think("<think>maybe \\boxed{4}?</think>\nThe answer is \\boxed{5}.")
    assert parts.closed and grade_answer("5", parts.final)[0] == "correct"
    assert grade_answer("4", parts.final)[0] == "wrong_answer"


# ----------------------------------------------------------------------------- gold parsing
@pytest.mark.parametrize("gold", ["", "   ", "\\text{}", "\\boxed{}", "?", "}{", "\\frac{"])
def test_unparseable_gold_is_never_correct(gold):
    assert parse_gold(gold) == []
    for resp in (f"\\boxed{{{gold}}}", gold, "\\boxed{5}", "The answer is ?"):
        assert grade_answer(gold, resp) == ("gold_unparseable", None)


@needs_shared_data("math500.jsonl")
def test_every_math500_gold_parses():
    path = SHARED_DATA / "math500.jsonl"
    golds = sorted({json.loads(line)["answer"] for line in path.read_text(encoding="utf-8").splitlines()})
    for g in golds:
        assert parse_gold(g), g
        assert any(not isinstance(p, str) for p in parse_gold(g)), g


# ----------------------------------------------------------------------------- no code execution
PAYLOADS = [
    "\\boxed{__import__('os').system('touch {p}')}",
    "The answer is __import__('os').system('touch {p}')",
    "$__import__('os').system('touch {p}')$",
    "\\boxed{\\text{__import__('os').system('touch {p}')}}",
    "The answer is eval(\"__import__('os').system('touch {p}')\")",
    "The answer is exec(open('{p}', 'w').write('x'))",
]


def test_model_output_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    items = [("0", p.replace("{p}", str(marker))) for p in PAYLOADS]
    for gold, resp in items:
        reason, _ = grade_answer(gold, resp)
        assert reason != "correct"
        assert not marker.exists(), resp
    with VerifierPool(workers=1, timeout_s=10) as pool:
        assert all(r != "correct" for r, _ in pool.grade(items))
    assert not marker.exists()


# ----------------------------------------------------------------------------- worker pool
def _pool_items() -> list[tuple[str, str]]:
    """~20 fixture items of every kind, in a fixed order."""
    picked = CASES[::8][:20]
    assert len({c["expected"] for c in picked}) >= 3
    return [(c["gold"], c["response"]) for c in picked]


def test_pool_matches_serial_in_order():
    items = _pool_items() + [("5", ""), ("", "\\boxed{5}")]
    serial = grade_serial(items)
    with VerifierPool(workers=2, timeout_s=10) as pool:
        pooled = pool.grade(items)
        assert pool.killed == 0
    assert pooled == serial
    assert {r for r, _ in pooled} <= set(REASONS)


def test_pool_empty_batch():
    with VerifierPool(workers=2, timeout_s=5) as pool:
        assert pool.grade([]) == []


def test_pool_times_out_a_hanging_item_and_grades_the_rest():
    good = _pool_items()[:6]
    items = good[:2] + [HANG] + good[2:]
    t0 = time.monotonic()
    with VerifierPool(workers=2, timeout_s=1.5) as pool:
        res = pool.grade(items)
        assert pool.killed == 1
        # the replacement worker is healthy
        assert pool.grade(good[:2]) == grade_serial(good[:2])
        assert pool.killed == 1
    assert time.monotonic() - t0 < 30
    assert res[2] == ("timeout", "worker killed")
    assert res[:2] + res[3:] == grade_serial(good)


def test_pool_start_up_is_not_charged_to_items():
    # A fresh worker needs about a second to import math-verify; items must not pay for it.
    items = [("\\frac{1}{2}", "\\boxed{0.5}")] * 4
    with VerifierPool(workers=2, timeout_s=0.5) as pool:
        assert pool.grade(items) == [("correct", "\\frac{1}{2}")] * 4
        assert pool.killed == 0


def test_pool_worker_that_cannot_start_is_an_error():
    # Too little address space to import sympy: fail loudly instead of labelling everything `timeout`.
    with pytest.raises(RuntimeError, match="did not start"):
        with VerifierPool(workers=1, timeout_s=5, memory_mb=40) as pool:
            pool.grade([("1", "\\boxed{1}")])


MEMORY_HOG = ("1", "\\boxed{2^{2^{30}}}")   # sympy evaluates the power: ~750 MB and ~9 s without a limit

_MEMORY_PROBE = """
import json, resource, sys
from librarm.verify import grade_answer
grade_answer("1", "\\\\boxed{1}")                          # imports and warm-up before the limit
resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))
raised = []
def trace(frame, event, arg):
    if event == "exception" and arg[0] is MemoryError:
        raised.append(frame.f_code.co_name)
    return trace
sys.settrace(trace)
result = grade_answer(sys.argv[1], sys.argv[2])
sys.settrace(None)
print(json.dumps({"result": list(result), "memory_errors": len(raised)}))
"""


def test_pool_memory_limit_hit_is_not_graded_correct_and_spares_the_pool():
    """What a memory-limit hit gives TODAY. The worker's `except MemoryError -> timeout` never sees
    it: math-verify (0.9) catches the MemoryError that sympy raises inside verify and returns False,
    so the item comes back `wrong_answer` (even with raise_on_error=True). Labelling it `timeout`
    needs a change in librarm.verify; until then this pins the behaviour that holds (it replaces a
    non-strict xfail that passed either way): the limit is really hit (first half, in a plain
    process), the item is not graded correct, the worker survives (nothing killed) and the next
    items are graded as usual."""
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, *MEMORY_HOG], capture_output=True,
                           text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(Path(librarm.verify.__file__).resolve().parents[1])})
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["memory_errors"] > 0, "the item no longer hits a 200 MB limit: pick another MEMORY_HOG"
    assert seen["result"][0] == "wrong_answer", seen        # swallowed by math-verify, not re-raised

    items = [MEMORY_HOG, ("1", "\\boxed{1}")]
    with VerifierPool(workers=1, timeout_s=10, memory_mb=200) as pool:
        res = pool.grade(items)
        assert pool.killed == 0                              # the MemoryError did not take the worker down
        assert pool.grade([("2", "\\boxed{2}")]) == [("correct", "2")]
    assert res[0][0] != "correct"
    assert res[0] == ("wrong_answer", "2^{2^{30}}")          # `timeout` once the library labels memory hits
    assert res[1] == ("correct", "1")


# ----------------------------------------------------------------------------- stages verify and verify-stats
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
