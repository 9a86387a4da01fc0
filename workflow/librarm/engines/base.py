"""What every backend speaks: sampling settings, a request (chat messages + its own seed), a result, the Sampler protocol.
"""
from __future__ import annotations

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


