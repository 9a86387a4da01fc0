"""Text helpers shared by verification, judging and rewards: the one split of a model output into
its thinking part and its final part, and the spans of its boxed answers."""
from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class ThinkSplit:
    thinking: str        # the reasoning text, without tags ("" when none)
    final: str           # what follows the thinking: the only part that may be graded
    has_think: bool      # the output had a thinking block (tagged, prompt-opened, or a separate field)
    closed: bool         # the thinking block was closed (False: unterminated, so no final answer)

    @property
    def has_final(self) -> bool:
        return self.closed and bool(self.final.strip())


def split_think(text: str, *, prompt_opens_think: bool = False, reasoning: str | None = None) -> ThinkSplit:
    """Split `text` into thinking and final parts.

    - `reasoning` given (APIs that return `reasoning_content`): that is the thinking, `text` the final.
    - Closing tag present (with or without an opening one; R1-distill/QwQ templates put `<think>` in
      the prompt): the final part is what follows the *last* `</think>`; everything before is thinking.
    - Opening tag but no closing tag, or `prompt_opens_think` and no closing tag: unterminated, so
      the whole text is thinking and there is no final answer.
    - No tags at all (non-thinking models): all of it is the final part.
    """
    if reasoning is not None:
        return ThinkSplit(reasoning.strip(), text.strip(), bool(reasoning.strip()), True)
    last_close = text.rfind(CLOSE)
    if last_close >= 0:
        thinking = text[:last_close]
        first_open = thinking.find(OPEN)
        if first_open >= 0:
            thinking = thinking[first_open + len(OPEN):]
        thinking = thinking.replace(OPEN, "").replace(CLOSE, "")
        return ThinkSplit(thinking.strip(), text[last_close + len(CLOSE):].strip(), True, True)
    open_at = text.find(OPEN)
    if open_at >= 0 or prompt_opens_think:
        body = text[open_at + len(OPEN):] if open_at >= 0 else text
        return ThinkSplit(body.strip(), "", True, False)
    return ThinkSplit("", text.strip(), False, True)


def boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every \\boxed{...} content, brace-balanced."""
    spans, i = [], 0
    while True:
        i = text.find("\\boxed{", i)
        if i < 0:
            return spans
        j, depth = i + len("\\boxed{"), 1
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            return spans
        spans.append((i + len("\\boxed{"), j - 1))
        i = j
