"""Text helpers shared by verification, judging and rewards: the one split of a model output into
its thinking part and its final part, the spans of its boxed answers, and the masking of quoted
text (mask_quoted)."""
from __future__ import annotations

import re
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


_FENCE_RE = re.compile(r"^[ \t]*(```|~~~)")
_BLOCKQUOTE_RE = re.compile(r"^[ \t]*>")
_PAIRS = {'"': '"', "“": "”", "‘": "’", "«": "»", "„": "“"}


def mask_quoted(text: str) -> str:
    """`text` with everything that is quoted, not said, blanked by spaces (same length, newlines
    kept): fenced code blocks, `>` quote lines, inline code (backticks), and text inside double
    quotes, typographic quotes and single quotes used as quotes (not apostrophes). An unclosed
    quote runs to the end of its paragraph (an unclosed fence to the end of the text). Used where
    quoted text must never count: a judge's verdict, and the closing tag that ends its thinking."""
    out = list(text)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    # fences and quote lines, by line
    pos, fence = 0, None
    for line in text.split("\n"):
        end = pos + len(line)
        m = _FENCE_RE.match(line)
        if fence is not None:
            blank(pos, end)
            if m and m.group(1) == fence:
                fence = None
        elif m:
            fence = m.group(1)
            blank(pos, end)
        elif _BLOCKQUOTE_RE.match(line):
            blank(pos, end)
        pos = end + 1
    # inline quotes and code, one left-to-right pass over what is left; paragraphs end them
    masked = "".join(out)
    i, n = 0, len(masked)
    while i < n:
        ch = masked[i]
        close = None
        if ch == "`":
            run = len(masked[i:]) - len(masked[i:].lstrip("`"))
            close, width = "`" * run, run
        elif ch in _PAIRS:
            close, width = _PAIRS[ch], 1
        elif ch == "'" and (i == 0 or masked[i - 1].isspace() or masked[i - 1] in "([{") \
                and i + 1 < n and not masked[i + 1].isspace():
            close, width = "'", 1
        if close is None:
            i += 1
            continue
        para = masked.find("\n\n", i)
        para = n if para < 0 else para
        j = i + width
        while True:
            j = masked.find(close, j, para)
            if j < 0 or close != "'" or j + 1 >= n or not (masked[j + 1].isalnum()):
                break
            j += 1                                 # an apostrophe inside a single-quoted span
        stop = para if j < 0 else j + len(close)
        blank(i, stop)
        i = stop
    return "".join(out)
