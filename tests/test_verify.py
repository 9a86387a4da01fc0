"""Answer verifier (librarm.verify): fixture regression over real MATH-500 answer forms, the helpers,
and the worker pool (order, timeouts, kills, no code execution). No model is needed."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

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


def test_every_math500_gold_parses():
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"
    if not path.exists():
        pytest.skip("shared/data/math500.jsonl not present")
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


@pytest.mark.xfail(strict=False, reason="math-verify catches MemoryError inside parse/verify and returns "
                   "False, so an item that hits the worker's memory limit comes back `wrong_answer`, "
                   "not `timeout`")
def test_pool_memory_limit_is_labelled_timeout():
    items = [("1", "\\boxed{2^{2^{30}}}"), ("1", "\\boxed{1}")]
    with VerifierPool(workers=1, timeout_s=10, memory_mb=200) as pool:
        res = pool.grade(items)
    assert res[1] == ("correct", "1")
    assert res[0][0] == "timeout"
