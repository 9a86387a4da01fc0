"""The rule backend: a judge with no model. It grades each item's response against the item's
reference with the project's verifier (math-verify in worker processes, hedges counted wrong:
librarm.judging.verifier) and answers as a judge would, `\\boxed{correct}` or `\\boxed{incorrect}`,
so its verdicts go through the same parser, metrics and reports as any model's: the
verifier-as-judge baseline every judge table should have. An item without a reference (e.g.
RewardBench 2) cannot be graded: the backend refuses in one line before the first item."""
from __future__ import annotations

import os
from typing import Sequence

from librarm.engines import Backend, ModelRef
from librarm.engines.base import SampleRequest, SampleResult, SamplingConfig

# what the judge "says" for each verifier reason (no_final_answer / truncated / timeout: no verdict)
VERDICT = {"correct": "correct", "wrong_answer": "incorrect", "hedged": "incorrect"}


class NoReferenceError(ValueError):
    """The rule judge needs a reference answer for each item."""


class RuleJudge:
    """Grades request.problem's response against request.problem's reference."""

    def __init__(self, workers: int = 1, timeout_s: float = 5.0):
        self.name = "rule:math-verify"
        self.workers, self.timeout_s = workers, timeout_s

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        from librarm.judging.verifier import VerifierPool, final_answer_text, precheck

        missing = [r.problem.get("index") for r in requests if r.problem.get("reference") in (None, "")]
        if missing:
            raise NoReferenceError(f"the rule judge needs a reference answer: {len(missing)} of {len(requests)} items "
                                   f"have none (first: index {missing[0]!r}); use a model judge for this benchmark")
        reasons: list[str | None] = [precheck(r.problem) for r in requests]
        todo = [i for i, why in enumerate(reasons) if why is None]
        with VerifierPool(workers=self.workers, timeout_s=self.timeout_s) as pool:
            graded = pool.grade([(str(requests[i].problem["reference"]), final_answer_text(requests[i].problem))
                                 for i in todo])
        for i, (reason, _pred) in zip(todo, graded):
            reasons[i] = reason
        out = []
        for reason in reasons:
            verdict = VERDICT.get(reason or "")
            text = (f"<think>math-verify: {reason}</think>\n" +
                    (f"\\boxed{{{verdict}}}" if verdict else "No verdict: the response has no gradable final answer."))
            out.append(SampleResult(text, "stop", 0, 0))
        return out


def _make(spec, ref: ModelRef, cfg: SamplingConfig, threads: int | None, seed: int) -> RuleJudge:
    return RuleJudge(workers=max(1, min(threads or 1, os.cpu_count() or 1)))


BACKEND = Backend("rule", _make, "the rule verifier as a judge: math-verify against the item's reference (no model)",
                  needs_model=False)
