"""GRPO reward functions for the generative judge, each small and named in a registry.

TRL calls each as f(prompts=..., completions=..., completion_ids=..., **dataset_columns) and
expects one float per completion. Dataset columns (`label`, `item_id`) and the rollout's
`finish_reason` arrive aligned with the completions, so rewards never depend on dataset order. A
completion cut at the length limit (finish_reason "length", no EOS) has no verdict, as in
evaluation: it earns no correctness or format reward.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from librarm.judging.judge import parse_verdict


def _finish(finish_reason: Sequence[str] | None, n: int) -> Sequence[str]:
    return finish_reason if finish_reason is not None else ["stop"] * n


def correctness_reward(completions: Sequence[str], label: Sequence[int], finish_reason: Sequence[str] | None = None,
                       **_: Any) -> list[float]:
    """1 when the parsed verdict equals the item's label, else 0 (no verdict counts as wrong)."""
    return [float(parse_verdict(c, f).value == int(y))
            for c, y, f in zip(completions, label, _finish(finish_reason, len(completions)))]


def format_reward(completions: Sequence[str], finish_reason: Sequence[str] | None = None, **_: Any) -> list[float]:
    """1 when the output has a parseable verdict after a closed thinking block (our addition)."""
    return [float(parse_verdict(c, f).status == "parsed")
            for c, f in zip(completions, _finish(finish_reason, len(completions)))]


def length_penalty(n_tokens: int, l_exp: int, l_max: int) -> float:
    """Our reconstruction of the paper's length penalty (its exact formula is not public):
    0 up to L_exp, then falling linearly to -1 at L_max (and -1 beyond); a step from 0 to -1
    when L_max == L_exp."""
    if n_tokens <= l_exp:
        return 0.0
    if l_max <= l_exp:
        return -1.0
    return -min(1.0, (n_tokens - l_exp) / (l_max - l_exp))


def make_length_reward(l_exp: int, l_max: int) -> Callable[..., list[float]]:
    def length_reward(completion_ids: Sequence[Sequence[int]], log_metric: Callable | None = None,
                      **_: Any) -> list[float]:
        out = [length_penalty(len(ids), l_exp, l_max) for ids in completion_ids]
        if log_metric is not None and out:       # TRL's hook: averaged per logging step
            log_metric("length_penalised_share", sum(r < 0 for r in out) / len(out))
        return out

    return length_reward


def build_reward_funcs(weights: dict[str, float], l_exp: int, l_max: int) -> tuple[list[Callable], list[float]]:
    """Reward functions and weights from params (`rl.rewards: {name: weight}`); weight 0 drops one,
    except `length`, kept at weight 0 as a monitor (the share of rollouts it would penalise is
    logged, so the no-length-penalty ablation reports it too)."""
    registry: dict[str, Callable] = {
        "correctness": correctness_reward,
        "format": format_reward,
        "length": make_length_reward(l_exp, l_max),
    }
    unknown = set(weights) - set(registry)
    if unknown:
        raise ValueError(f"unknown reward functions {sorted(unknown)}; known: {sorted(registry)}")
    funcs, w = [], []
    for name, weight in weights.items():
        if weight or name == "length":
            fn = registry[name]
            fn.__name__ = name
            funcs.append(fn)
            w.append(float(weight))
    if not any(w):
        raise ValueError("rl.rewards: every weight is 0")
    return funcs, w
