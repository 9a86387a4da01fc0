"""librarm.judging.verifier and the verify stage: the answer verifier (fixture regression over real MATH-500 answer forms, the
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

import librarm.judging.verifier
from librarm.judging.think import split_think
from librarm.judging.verifier import (
    GRADABLE,
    LABELS,
    REASONS,
    VerifierPool,
    extract_boxed,
    grade_answer,
    grade_serial,
    parse_gold,
    precheck,
)
from librarm.run.io import read_json, read_jsonl, write_jsonl
from librarm.stages.verify import run_verify, summarize_verify

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


# Fixture cases the hedge rule relabels: math-verify alone gives the fixture's `expected`
# (checked below), the verifier gives `hedged` (same label, 0): two different boxed answers in the
# final part list two candidates.
HEDGE_RELABELLED = {
    ("3", "First I got \\boxed{2}. Wait, that is wrong; the answer is \\boxed{3}."),
    ("2", "First I got \\boxed{2}. Wait, that is wrong; the answer is \\boxed{3}."),
}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(i, c) for i, c in enumerate(CASES)])
def test_answer_forms(case):
    """Pins what the verifier returns today. Notes starting with 'KNOWN MISGRADE:' record cases
    where math-verify's answer is mathematically wrong; if one of them changes, math-verify changed:
    check the new behaviour and update the fixture."""
    reason, pred = grade_answer(case["gold"], case["response"])
    if (case["gold"], case["response"]) in HEDGE_RELABELLED:
        from math_verify import parse, verify

        alone = verify(parse_gold(case["gold"]), parse(case["response"], parsing_timeout=None), timeout_seconds=None)
        assert {True: "correct", False: "wrong_answer"}[alone] == case["expected"]
        assert reason == "hedged", f"{case['note']}: got {reason} (pred {pred!r})"
        return
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
    # Two different boxed answers are two candidates: hedged (a wrong answer, as math-verify says too).
    text = "First \\boxed{2}. Wait, that was wrong: \\boxed{3}."
    assert extract_boxed(text) == "3"
    assert grade_answer("3", text) == ("hedged", "2,3")
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
from librarm.judging.verifier import grade_answer
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
    needs a change in librarm.judging.verifier; until then this pins the behaviour that holds (it replaces a
    non-strict xfail that passed either way): the limit is really hit (first half, in a plain
    process), the item is not graded correct, the worker survives (nothing killed) and the next
    items are graded as usual."""
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, *MEMORY_HOG], capture_output=True,
                           text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(Path(librarm.judging.verifier.__file__).resolve().parents[2])})
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
    _sample("a8", "p-angle", "So \\boxed{60^\\circ \\lor 120^\\circ}."),                  # hedged (label 0)
]
EXPECTED_A = {"a0": ("correct", 1), "a1": ("wrong_answer", 0), "a2": ("truncated", None),
              "a3": ("no_final_answer", None), "a4": ("correct", 1), "a5": ("gold_unparseable", None),
              "a6": ("no_final_answer", None), "a7": ("correct", 1), "a8": ("hedged", 0)}


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
        assert (r["pred"] is not None) == (r["reason"] in GRADABLE)
    by_id = {r["sample_id"]: r for r in recs}
    assert by_id["a1"]["pred"] == "\\frac{1}{3}"

    sidecar = tmp_path / "verify" / "gen-a" / "math500.meta.json"
    assert read_json(sidecar) == json.loads(json.dumps(meta))
    assert meta["n"] == len(SAMPLES_A)
    assert meta["reasons"] == {"correct": 3, "wrong_answer": 1, "hedged": 1, "no_final_answer": 2, "truncated": 1,
                               "timeout": 0, "gold_unparseable": 1}
    assert set(meta["reasons"]) == set(REASONS)
    assert meta["workers_killed"] == 0
    assert meta["accuracy"] == round(3 / 9, 4)
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
             "reason": r, "label": LABELS.get(r)}
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
        real,  # gen-a/math500: 3 correct of 9
        _labelled(tmp_path / "verify" / "gen-a" / "tiny.jsonl", "gen-a", "tiny",
                  ["correct", "correct", "wrong_answer", "timeout"]),
        _labelled(tmp_path / "verify" / "gen-b" / "math500.jsonl", "gen-b", "math500",
                  ["wrong_answer", "wrong_answer", "correct", "truncated", "no_final_answer"]),
    ]
    out = tmp_path / "verify" / "stats.json"
    stats = summarize_verify(paths, out)
    assert read_json(out) == json.loads(json.dumps(stats))

    assert stats["accuracy"] == {"gen-a": {"math500": round(3 / 9, 4), "tiny": 0.5}, "gen-b": {"math500": 0.2}}
    assert stats["generator_accuracy"] == {"gen-a": round(5 / 13, 4), "gen-b": 0.2}
    assert stats["n"] == 18
    assert stats["reasons"] == {"correct": 6, "wrong_answer": 4, "hedged": 1, "no_final_answer": 3, "truncated": 2,
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


# ----------------------------------------------------------------------------- hedges
# Gold 42 (a single value): math-verify alone grades each of these correct, the verifier `hedged`.
HEDGES = [
    "\\boxed{0 = 42}",                       # a relation: math-verify grades the right-hand side
    "\\boxed{41 \\lor 42}",                  # a disjunction: it grades the last number
    "\\boxed{41 \\to 42}",                   # an implication
    "\\boxed{41 \\implies 42}",
    "\\boxed{41 \\Rightarrow 42}",
    "\\boxed{41 \\vee 42}",
    "\\boxed{41 \\land 42}",
    "\\boxed{41 \\iff 42}",
    "\\boxed{41 \\cup 42}",
    "\\boxed{41 \\mid 42}",
    "\\boxed{41 | 42}",
    "\\boxed{41 \\in 42}",
    "\\boxed{41 \\sim 42}",
    "\\boxed{41 := 42}",
    "\\boxed{42 \\approx 41}",
    "\\boxed{41 \\uparrow 42}",               # any command it cannot parse between two numbers
    "\\boxed{41 \\\\ 42}",                     # two lines
    "\\boxed{\\begin{cases} 41 \\\\ 42 \\end{cases}}",
    "\\boxed{41 \\& 42}",
    "\\boxed{41 ~ 42}",
    "\\boxed{0 \\quad 42}",                   # side by side: parsed as 0 + 42
    "\\boxed{x = 41 = 42}",                  # a chain with two values
    "The answer is 0=42",                    # plain text
    "It is either 41 or 42",
]
# Gold 42: several candidates or a range, which math-verify already grades wrong; `hedged` now.
HEDGES_ALREADY_WRONG = [
    "\\boxed{41, 42}", "\\boxed{41 \\text{ or } 42}", "\\boxed{43 \\pm 1}", "\\boxed{41} or \\boxed{42}",
    "\\boxed{x \\geq 42}", "\\boxed{41 < x \\le 42}", "\\boxed{[41, 42]}", "\\boxed{x=41, x=42}",
    "\\boxed{42 \\neq 41}", "The answer is 41 or 42.",
]
# Gold 42: genuine forms of one value stay math-verify's `correct`.
GENUINE = [
    "\\boxed{x = 42}", "\\boxed{n = 42}", "\\boxed{x_1 = 42}", "\\boxed{f(2) = 42}", "\\boxed{\\angle ABC = 42}",
    "\\boxed{6 \\times 7 = 42}", "\\boxed{x = 6 \\cdot 7 = 42}", "\\boxed{x \\approx 42}", "\\boxed{42 \\text{ or } 42}",
    "\\boxed{\\lim_{x \\to 0} f = 42}", "\\boxed{\\sum_{k=1}^{6} 2k = 42}", "\\boxed{42 \\quad \\text{cm}}",
    "\\boxed{42^\\circ}", "\\boxed{\\frac{84}{2}}", "\\boxed{42.0}", "$x = 42$", "The answer is 42.",
    "The answer is x = 42", "So 2+40=42, and the answer is 42.", "\\boxed{x \\in \\{42\\}}",
]


def _math_verify_alone(gold: str, final: str) -> bool:
    from math_verify import parse, verify

    return verify(parse_gold(gold), parse(final, parsing_timeout=None), timeout_seconds=None)


@pytest.mark.parametrize("answer", HEDGES)
def test_hedges_math_verify_accepts_are_hedged(answer):
    assert _math_verify_alone("42", answer), "math-verify no longer accepts this hedge: keep it, it still must be hedged"
    assert grade_answer("42", answer)[0] == "hedged"


@pytest.mark.parametrize("answer", HEDGES_ALREADY_WRONG)
def test_several_candidates_are_hedged(answer):
    assert grade_answer("42", answer)[0] == "hedged"


@pytest.mark.parametrize("answer", GENUINE)
def test_genuine_single_value_forms_stay_correct(answer):
    assert grade_answer("42", answer)[0] == "correct"


@pytest.mark.parametrize("gold,answer,reason", [
    ("\\frac{1}{2}", "\\boxed{x = \\frac{1}{2} = 0.5}", "correct"),     # a chain whose values agree
    ("\\frac{1}{2}", "\\boxed{x = \\frac{1}{2} = 0.6}", "hedged"),
    ("2^{n-1}", "\\boxed{a_n = 2^{n-1}}", "correct"),                   # a symbolic gold: a_n names it
    ("2^{n-1}", "\\boxed{2^n = 2^{n-1}}", "hedged"),
    ("\\text{(C)}", "\\boxed{\\text{(A)} \\lor \\text{(C)}}", "hedged"),
    ("42", "\\boxed{2x = 84}", "wrong_answer"),                          # one value (84), and wrong
    ("42", "\\boxed{42 = x}", "wrong_answer"),                           # math-verify reads the right side
    # golds that are not one value: the rule does not apply, math-verify decides
    ("-2,1", "\\boxed{1,-2}", "correct"),
    ("(2,\\infty)", "\\boxed{(2, \\infty)}", "correct"),
    ("y = 2x+3", "\\boxed{y = 2x + 3}", "correct"),
    ("x \\in [-2,7]", "\\boxed{[-2,7]}", "correct"),
    ("3 \\pm 2 \\sqrt{2}", "\\boxed{3 + 2\\sqrt{2}, 3 - 2\\sqrt{2}}", "correct"),
    # a gold written as a relation is its own reference form
    ("0.56 = 56\\%", "\\boxed{0.56 = 56\\%}", "correct"),
])
def test_hedge_rule_reads_the_golds_form(gold, answer, reason):
    assert grade_answer(gold, answer)[0] == reason


def test_hedged_is_a_labelled_wrong_answer_and_reported():
    assert "hedged" in REASONS and "hedged" in GRADABLE and LABELS["hedged"] == 0


@pytest.mark.slow
@needs_shared_data("math500.jsonl", "aime2024.jsonl", "aime2025.jsonl", "amc2023.jsonl", "gsm8k_test.jsonl",
                   "math_train.jsonl")
def test_every_shared_gold_boxed_stays_correct():
    """Every gold answer in ../shared/data, graded against `\\boxed{gold}`, is `correct` (the hedge
    rule never flags a gold's own form), except the golds math-verify cannot parse."""
    golds = set()
    for path in sorted(SHARED_DATA.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            answer = json.loads(line).get("answer")
            if answer is not None:
                golds.add(str(answer).strip())
    assert len(golds) > 3000
    graded = {g: grade_answer(g, "\\boxed{" + g + "}")[0] for g in sorted(golds)}
    unparseable = sorted(g for g, r in graded.items() if r == "gold_unparseable")
    assert not [g for g, r in graded.items() if r not in ("correct", "gold_unparseable")]
    assert len(unparseable) <= 5, unparseable


def _solutions(*names: str) -> list[dict]:
    rows = [json.loads(line) for name in names
            for line in (SHARED_DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r.get("solution") and r.get("answer") is not None]


def _disagreements(rows: list[dict]) -> dict[tuple[str, str], int]:
    """(math-verify alone, the verifier) -> count, for the rows where they differ."""
    out: dict[tuple[str, str], int] = {}
    for r in rows:
        gold = str(r["answer"])
        if not parse_gold(gold):
            continue
        alone = "correct" if _math_verify_alone(gold, r["solution"]) else "wrong_answer"
        reason = grade_answer(gold, r["solution"])[0]
        if reason != alone:
            out[(alone, reason)] = out.get((alone, reason), 0) + 1
    return out


@needs_shared_data("math500.jsonl", "aime2024.jsonl")
def test_reference_solutions_agree_with_math_verify_alone():
    """Real labels: every MATH-500 and AIME 2024 reference solution is a correct response. The
    verifier agrees with math-verify alone on every one of them (the hedge rule flags none)."""
    rows = _solutions("math500", "aime2024")
    assert len(rows) >= 520
    assert _disagreements(rows) == {}
    assert sum(grade_answer(r["answer"], r["solution"])[0] == "correct" for r in rows) >= len(rows) - 3


@pytest.mark.slow
@needs_shared_data("math_train.jsonl", "gsm8k_test.jsonl")
def test_every_reference_solution_math_verify_accepts_stays_correct():
    """The MATH train and GSM8K reference solutions (about 8,800, with `$` amounts and `####`
    lines): none that math-verify alone grades correct is graded otherwise. The only changes are
    solutions that box several answers for a gold the data set cut to one (`\\boxed{12}` and
    `\\boxed{18}` for gold 18): math-verify's wrong_answer, the verifier's hedged."""
    rows = _solutions("math_train", "gsm8k_test")
    assert len(rows) >= 8700
    changed = _disagreements(rows)
    assert set(changed) <= {("wrong_answer", "hedged")}, changed
    assert changed.get(("wrong_answer", "hedged"), 0) <= 10


# ----------------------------------------------------------------------------- think_closed not known
@pytest.mark.parametrize("record,final", [
    # the sampler's own record: think_closed says it
    ({"response": "", "response_with_cot": "2+3=5 so \\boxed{5}", "think_closed": False}, None),
    ({"response": "\\boxed{5}", "response_with_cot": "2+3=5</think>\\boxed{5}", "think_closed": True}, "\\boxed{5}"),
    # no think_closed: derived from the text
    ({"response": "2+3=5 so \\boxed{5}", "has_think": True}, None),                      # prompt-opened, unclosed
    ({"response": "", "response_with_cot": "2+3=5 so \\boxed{5}"}, None),               # the writer split it off
    ({"response": "2+3=5</think>\\boxed{5}"}, "\\boxed{5}"),                             # closed, no opening tag
    ({"response": "The answer is \\boxed{5}", "response_with_cot": "The answer is \\boxed{5}"},
     "The answer is \\boxed{5}"),                                                           # a non-thinking model
    ({"response": "\\boxed{5}", "has_think": False}, "\\boxed{5}"),
])
def test_missing_think_closed_is_derived_from_the_text(record, final):
    from librarm.judging.verifier import final_answer_text

    assert final_answer_text(record) == final
