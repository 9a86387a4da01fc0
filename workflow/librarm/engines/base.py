"""What every backend speaks: sampling settings, a request (chat messages + its own seed), a result, the Sampler protocol.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class SamplingConfig:
    """How a backend decodes: built from the params section that governs the caller (sampling,
    judge, rs, rl, evaluate_policy), never from defaults of its own."""

    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


@dataclass
class SampleRequest:
    messages: list[dict]          # chat messages; backends render them their own way
    seed: int
    problem: Mapping[str, Any] = field(default_factory=dict)   # for pseudo generators only


@dataclass
class SampleResult:
    text: str
    finish_reason: str            # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    reasoning: str | None = None  # separate reasoning field (HTTP APIs)
    token_ids: list[int] | None = None   # hf: the completion's tokens, the stop token included


class Sampler(Protocol):
    name: str

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]: ...


def is_positive_int(value: Any) -> bool:
    """A token count a config or server reported: an int above 0 (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class ContextWindow:
    """How many tokens (prompt and completion together) a sampler's model takes, and where that
    number comes from, for messages ("its config.json max_position_embeddings"). A sampler that
    knows it has `context_window() -> ContextWindow | None`."""

    tokens: int
    source: str


class ContextOverflowError(ValueError):
    """A prompt longer than the model's context, said in one line with the fix. A ValueError, so
    `librarm` prints it as its one-line error instead of a traceback."""


# What engines and servers say when a prompt does not fit the model's context: vLLM's offline engine
# (input_processor), vLLM's server (renderers, get_max_tokens), OpenAI-style APIs. Numbers only are
# taken from the text (a server's wording is never echoed), at most 12 digits each.
_OVERFLOW_MESSAGES = (
    re.compile(r"prompt \(length (?P<prompt>\d{1,12})\)(?: plus the number of requested output tokens \(at least 1\))?"
               r" is longer than the maximum model length of (?P<context>\d{1,12})"),
    re.compile(r"maximum context length is (?P<context>\d{1,12}) tokens\. However, your prompt contains "
               r"(?:at least )?(?P<prompt>\d{1,12}) input tokens"),
    re.compile(r"maximum context length is (?P<context>\d{1,12}) tokens\. However, your prompt contains "
               r"(?P<chars>\d{1,12}) characters"),
    re.compile(r"Input length \((?P<prompt>\d{1,12})\) exceeds model's maximum context length \((?P<context>\d{1,12})\)"),
    re.compile(r"maximum context length is (?P<context>\d{1,12}) tokens\. However, you(?:r messages)? "
               r"(?:requested|resulted in) (?P<total>\d{1,12}) tokens"),
    re.compile(r"maximum (?:context|model) length|context_length_exceeded"),
)


def context_overflow(text: str) -> dict[str, int] | None:
    """The numbers of a context-overflow message ({} when it names none: `prompt` tokens, `chars`,
    `total` tokens asked for, the `context`), or None when `text` says nothing of the kind."""
    for pattern in _OVERFLOW_MESSAGES:
        m = pattern.search(text)
        if m:
            return {k: int(v) for k, v in m.groupdict().items() if v is not None}
    return None


def overflow_line(found: Mapping[str, int], fix: str) -> str:
    """One line for a context overflow: what did not fit, in the numbers the engine gave, and the fix."""
    if "prompt" in found:
        what = f"a prompt of {found['prompt']} tokens"
    elif "chars" in found:
        what = f"a prompt of {found['chars']} characters"
    elif "total" in found:
        what = f"a request of {found['total']} tokens (prompt and completion)"
    else:
        what = "a prompt"
    context = f"the model's context of {found['context']} tokens" if "context" in found else "the model's context"
    return f"{what} does not fit {context}: {fix}"


