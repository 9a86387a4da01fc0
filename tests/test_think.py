"""librarm.judging.think: splitting a completion into its thinking and its final part (tagged blocks, a
prompt-opened think, no tags, a separate reasoning field, unterminated blocks, several closing tags)
and the spans of every balanced \\boxed{...}."""
import pytest

from librarm.judging.think import boxed_spans, split_think


def test_tagged_block():
    s = split_think("<think>a\nb</think>\nThe answer is \\boxed{3}.")
    assert s.thinking == "a\nb" and s.final == "The answer is \\boxed{3}." and s.has_think and s.closed


def test_prompt_opened_think_only_closing_tag():
    # R1-distill / QwQ: the chat template puts <think> in the prompt; the completion has only </think>.
    s = split_think("let me see 2+2=4</think>\n\\boxed{4}", prompt_opens_think=True)
    assert s.thinking == "let me see 2+2=4" and s.final == "\\boxed{4}" and s.has_final


def test_no_tags_is_all_final():
    s = split_think("The answer is 5.")
    assert not s.has_think and s.final == "The answer is 5." and s.has_final


def test_separate_reasoning_field():
    s = split_think("\\boxed{7}", reasoning="think think")
    assert s.thinking == "think think" and s.final == "\\boxed{7}" and s.has_think


def test_unterminated_block_has_no_final_answer():
    s = split_think("<think>so the answer is \\boxed{5}")
    assert not s.closed and s.final == "" and not s.has_final
    s2 = split_think("so the answer is \\boxed{5}", prompt_opens_think=True)
    assert not s2.has_final


def test_several_closing_tags_final_after_last():
    s = split_think("<think>x</think> draft \\boxed{1} <think>again</think> final \\boxed{2}")
    assert s.final == "final \\boxed{2}"
    assert "<think>" not in s.thinking and "</think>" not in s.thinking


def test_thinking_only_has_no_final():
    s = split_think("<think>the answer is \\boxed{9}</think>")
    assert s.closed and not s.has_final


@pytest.mark.timeout(60)
def testboxed_spans_nested_braces():
    t = r"so $x = \boxed{\frac{\sqrt{3}}{2}}$ and also \boxed{\left\{ 1, 2 \right\}}."
    spans = boxed_spans(t)
    assert [t[s:e] for s, e in spans] == [r"\frac{\sqrt{3}}{2}", r"\left\{ 1, 2 \right\}"]
    assert boxed_spans(r"\boxed{\frac{1}{2}") == []                          # unbalanced: nothing


@pytest.mark.parametrize("text,visible", [
    ('a "b" c', "a c"),
    ("it's 'quoted' here", "it's here"),                     # an apostrophe is not a quote
    ("the students' answers are 'fine'.", "the students' answers are ."),
    ("> a quote line\nnot quoted", "not quoted"),
    ("```\ncode\n```\nafter", "after"),
    ("x `y` z", "x z"),
    ("“curly” ok", "ok"),
    ('open "unclosed\n\nnext paragraph', "open next paragraph"),   # an unclosed quote ends with its paragraph
    ("```\nunclosed fence\n\nstill code", ""),                       # an unclosed fence runs to the end
])
def test_mask_quoted(text, visible):
    from librarm.judging.think import mask_quoted

    masked = mask_quoted(text)
    assert len(masked) == len(text) and masked.count("\n") == text.count("\n")
    assert " ".join(masked.split()) == visible
