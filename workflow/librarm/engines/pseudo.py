"""The pseudo backend: responses and verdicts built from the data (reference solutions, wrong answers, a label-reading judge).
"""
from __future__ import annotations

import re
from typing import Sequence

from librarm.engines import Backend, ModelRef
from librarm.engines.base import SampleRequest, SampleResult, SamplingConfig
from librarm.judging.think import boxed_spans


# ----------------------------------------------------------------------------- pseudo generators
def wrong_answer(answer: str) -> str:
    """A deterministic wrong answer of the same form (integers shift by one; otherwise the first
    number in it shifts by one, since "(a, b)+1" is graded equal to (a, b); else add 1)."""
    a = answer.strip()
    if re.fullmatch(r"-?\d+", a):
        return str(int(a) + 1)
    m = re.search(r"\d+", a)
    if m:
        return a[:m.start()] + str(int(m.group()) + 1) + a[m.end():]
    return f"{a}+1"


class PseudoSampler:
    """Responses built from the data: the reference solution (correct by construction) or the same
    solution with a wrong boxed answer. Gives real LaTeX to the verifier when models rarely solve."""

    def __init__(self, kind: str):
        if kind not in ("reference", "reference_wrong", "reference_judge"):
            raise ValueError(f"unknown pseudo generator {kind!r}")
        self.kind = kind
        self.name = f"pseudo:{kind}"

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        out = []
        for r in requests:
            if self.kind == "reference_judge":
                # A data-built judge (smoke-real's rejection-sampling teacher): it knows the label.
                if r.problem.get("label") not in (0, 1):
                    raise ValueError("the pseudo judge 'reference_judge' reads each item's gold label: give it "
                                     "labeled items (field 'label')")
                verdict = "correct" if r.problem["label"] else "incorrect"
                text = (f"<think>The reference answer is {r.problem.get('reference', 'unknown')}; the response's final answer "
                        f"{'matches' if r.problem['label'] else 'does not match'} it.</think>\n\\boxed{{{verdict}}}")
                out.append(SampleResult(text, "stop", 0, len(text.split())))
                continue
            answer = r.problem["answer"]
            solution = r.problem.get("solution") or ""
            if "</think>" in solution:      # tiny-world references already carry a trace
                text = solution
            else:
                spans = boxed_spans(solution)
                body = solution[: spans[-1][0] - len("\\boxed{")].rstrip() if spans else solution.strip()
                text = f"<think>{body}</think>\nThe final answer is \\boxed{{{answer}}}."
            if self.kind == "reference_wrong":
                spans = boxed_spans(text)
                s, e = spans[-1]
                text = text[:s] + wrong_answer(answer) + text[e:]
            out.append(SampleResult(text, "stop", 0, len(text.split())))
        return out


# ----------------------------------------------------------------------------- registry entry
def _make(spec, ref: ModelRef, cfg: SamplingConfig, threads: int | None, seed: int) -> PseudoSampler:
    return PseudoSampler(spec.pseudo)


def _check(spec, where: str) -> list[str]:
    return [] if spec.pseudo is not None else [f"{where}.pseudo: required for backend 'pseudo'"]


BACKEND = Backend("pseudo", _make, "responses built from the data (no model)", fields=("pseudo",), needs_model=False,
                  reads_labels=True, check=_check)
