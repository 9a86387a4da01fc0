"""Names of the downstream world: labelers (trained judges, gold, noisy gold, random) and the DPO
policies trained on their pairs (budget, gold curve, raw). Imported by config checks, the rules,
the stages and the report; it imports nothing of the package."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from librarm.run.settings import PairsSettings

NOISY_GOLD = re.compile(r"^gold_p([1-9]\d?)$")      # gold_p1 .. gold_p99
BUILTIN_LABELERS = ("gold", "random")
NONE_POLICY = "none"           # the base policy, before any DPO
RAW_PREFIX = "raw/"            # raw/<labeler>: trained on all of the labeler's pairs
CURVE_PREFIX = "curve/"        # curve/gold-<n>: gold trained on n of its pairs (the gold curve)


def curve_policy(n: int) -> str:
    return f"{CURVE_PREFIX}gold-{int(n)}"


def policy_parts(policy: str) -> tuple[str, str | None, int | None]:
    """(kind, labeler, pair count) of a downstream policy name: (NONE_POLICY, None, None) for the
    base policy, ("budget", labeler, None), ("raw", labeler, None) or ("curve", "gold", n)."""
    if policy == NONE_POLICY:
        return NONE_POLICY, None, None
    if policy.startswith(RAW_PREFIX):
        return "raw", policy[len(RAW_PREFIX):], None
    if policy.startswith(CURVE_PREFIX):
        m = re.fullmatch(r"gold-(\d+)", policy[len(CURVE_PREFIX):])
        if not m:
            raise ValueError(f"policy {policy!r}: a gold-curve policy is named curve/gold-<n>")
        return "curve", "gold", int(m.group(1))
    return "budget", policy, None


def curve_policies(pairs: PairsSettings) -> list[str]:
    """The gold-curve policies the params ask for (none unless gold is a labeler)."""
    return [curve_policy(n) for n in pairs.gold_curve if "gold" in pairs.labelers]


def downstream_policies(pairs: PairsSettings) -> list[str]:
    """Every DPO policy the params ask for: one per labeler (on its budget of pairs), the gold
    curve (when gold is a labeler) and the raw runs."""
    return list(pairs.labelers) + curve_policies(pairs) + [RAW_PREFIX + name for name in pairs.raw_labelers]


def all_policies(pairs: PairsSettings) -> list[str]:
    """The base policy and every DPO policy: what the downstream evaluation scores."""
    return [NONE_POLICY] + downstream_policies(pairs)


def policy_runs(policy: str, dpo_seeds: Sequence[int]) -> list[str]:
    """A policy's evaluation runs: one per DPO seed (seed-<s>); the base policy has one (base)."""
    return ["base"] if policy == NONE_POLICY else [f"seed-{int(s)}" for s in dpo_seeds]


def dpo_step_pairs(policy: str, n_pairs: int, budget: int) -> int:
    """The pair count a DPO run's number of optimizer steps is computed from. Every budget and
    gold-curve run takes the same steps as a full budget, whatever its own count (a short labeler
    or a small curve point repeats its pairs over more epochs), so no labeler's count changes
    another's run; a raw run trains on all its pairs for as many epochs as the others."""
    return n_pairs if policy_parts(policy)[0] == "raw" else budget


def labeler_kind(name: str, judges: Mapping[str, Any]) -> str:
    """judge (a key of `judges`) | gold | noisy_gold (gold_pNN) | random."""
    if name in BUILTIN_LABELERS:
        return name
    if NOISY_GOLD.match(name):
        return "noisy_gold"
    if name in judges:
        return "judge"
    raise ValueError(f"labeler {name!r}: not a key of 'judges' and not one of gold, random, gold_pNN (NN in 1..99)")


def keep_probability(name: str) -> float:
    """gold_p70 -> 0.70: each gold label is kept with this probability and flipped otherwise, so
    the labeler's accuracy on the policy's responses is p in expectation."""
    m = NOISY_GOLD.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a noisy-gold labeler (gold_pNN)")
    return int(m.group(1)) / 100
