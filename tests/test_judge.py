"""librarm.judge: verdict parsing (the last box wins, a verdict inside the thinking never counts,
truncated and unterminated outputs, the plain-language fallback) and the prompt budget (the
response is cut, keeping its end, or the item is skipped)."""
import pytest

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


def test_one_judge_request_builder_seeds_repeats_and_budget(params):
    """Every stage that judges builds its requests here: seeds from (seed, stream, item key[, repeat]),
    the prompt held to judge.max_prompt_tokens in the judge's own tokens, over-budget items skipped."""
    import copy

    from librarm.io import stable_seed
    from librarm.judge import build_judge_requests
    from librarm.tinyworld import build_tokenizer

    tok = build_tokenizer()
    items = [{"item_id": f"it{i}", "question": f"Compute {i}+1.", "response": "9" * 2000 if i == 0 else f"\\boxed{{{i + 1}}}"}
             for i in range(3)]
    b = build_judge_requests(items, params, ("rs",), key="item_id", repeats=2, tok=tok)
    assert b.prompt_status == ["truncated", "ok", "ok"]
    assert b.owners == [(i, r) for i in range(3) for r in range(2)]
    assert [r.seed for r in b.requests] == [stable_seed(params["seed"], "rs", f"it{i}", r) for i in range(3) for r in range(2)]
    assert b.requests[0].messages[-1]["content"].count("[...]") == 1 and b.requests[2].problem is items[1]
    skip = copy.deepcopy(params)
    skip["judge"]["overflow"] = "skip"
    b = build_judge_requests(items, skip, ("judge", "x"), key="item_id", tok=tok)
    assert b.prompt_status == ["skipped", "ok", "ok"] and b.messages[0] is None
    assert [r.seed for r in b.requests] == [stable_seed(params["seed"], "judge", "x", f"it{i}") for i in (1, 2)]
    # a remote judge without a tokenizer is sent the full prompt
    assert build_judge_requests(items, skip, key="item_id").prompt_status == ["ok"] * 3


def test_judge_verdict_reads_the_judges_spec_and_keeps_its_reasoning():
    from librarm.judge import judge_verdict, with_reasoning
    from librarm.sampling import SampleResult

    opened = SampleResult("compare 7 and 7</think>\n\\boxed{correct}", "stop", 5, 5)
    assert judge_verdict(opened, prompt_opens_think=True).value == 1
    unterminated = SampleResult("compare 7 and 7 \\boxed{correct}", "stop", 5, 5)
    assert judge_verdict(unterminated, prompt_opens_think=True).status == "unterminated"
    assert judge_verdict(unterminated).value == 1
    api = SampleResult("\\boxed{incorrect}", "stop", 5, 5, reasoning="7 vs 8")
    assert judge_verdict(api).value == 0
    assert with_reasoning(api) == "<think>7 vs 8</think>\n\\boxed{incorrect}" and with_reasoning(opened) == opened.text
    assert judge_verdict(SampleResult("ok</think>\\boxed{correct}", "length", 5, 5)).status == "truncated"
