"""The verify phase: every sample labelled by the rule verifier (librarm.judging.verifier) with a
reason; counts per reason."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from librarm.judging.verifier import LABELS, REASONS, VerifierPool, final_answer_text, precheck
from librarm.run.io import StageIO, read_jsonl, write_json, write_jsonl
from librarm.run.settings import VerifySettings


# ----------------------------------------------------------------------------- stage
def run_verify(samples_path: str | Path, problems_paths: Sequence[str | Path], out_path: str | Path,
               meta_path: str | Path, workers: int = 2, timeout_s: float = 5.0, memory_mb: int | None = 2048,
               progress: bool = True) -> dict:
    """Stage `verify`: label every sample of one (generator, subset) with a reason (out_path);
    counts per reason to meta_path."""
    from librarm.run.provenance import provenance
    from librarm.stages.problems import load_problem_sets

    problems = load_problem_sets(problems_paths)
    samples = read_jsonl(samples_path, {"sample_id": "str", "problem_id": "str", "response": "str",
                                        "finish_reason": "str"}, id_field="sample_id").records
    reasons: list[str | None] = []
    preds: list[str | None] = [None] * len(samples)
    todo = []
    for i, rec in enumerate(samples):
        if rec["problem_id"] not in problems:
            raise KeyError(f"{samples_path}: sample {rec['sample_id']} names unknown problem {rec['problem_id']!r}")
        early = precheck(rec)
        reasons.append(early)
        if early is None:
            todo.append(i)
    t0 = time.time()
    with VerifierPool(workers, timeout_s, memory_mb) as pool:
        graded = pool.grade([(problems[samples[i]["problem_id"]]["answer"], final_answer_text(samples[i]))
                             for i in todo], progress=progress)
        killed = pool.killed
    for i, (reason, pred) in zip(todo, graded):
        reasons[i], preds[i] = reason, pred
    out = []
    for rec, reason, pred in zip(samples, reasons, preds):
        gold = problems[rec["problem_id"]]["answer"]
        out.append({**rec, "gold": gold, "reason": reason, "pred": pred,
                    "label": LABELS.get(reason)})
    write_jsonl(out_path, out)
    counts = Counter(reasons)
    meta = {"n": len(out), "reasons": {r: counts.get(r, 0) for r in REASONS}, "workers_killed": killed,
            "seconds": round(time.time() - t0, 2),
            "accuracy": round(counts.get("correct", 0) / len(out), 4) if out else None,
            "provenance": provenance(data=[str(samples_path)])}
    write_json(meta_path, meta)
    return meta


def step_verify(io: StageIO, *, verify: VerifySettings) -> tuple[dict, list[str]]:
    v = verify
    meta = run_verify(io.input("samples"), io.input_list("problems"), io.output("labels"), io.output("meta"),
                      workers=io.threads or 1, timeout_s=v.timeout_s, memory_mb=v.memory_mb)
    return meta, []


def summarize_verify(paths: Iterable[str | Path], out_path: str | Path) -> dict:
    """The verify stats: accuracy per generator and subset, counts per reason."""
    cells: dict = defaultdict(Counter)
    for path in paths:
        for rec in read_jsonl(path).records:
            cells[(rec["generator"], rec["subset"])][rec["reason"]] += 1
    by_gen: dict = defaultdict(Counter)
    table = {}
    for (gen, sub), c in sorted(cells.items()):
        total = sum(c.values())
        table.setdefault(gen, {})[sub] = {"n": total, "accuracy": round(c["correct"] / total, 4),
                                          "reasons": {r: c.get(r, 0) for r in REASONS}}
        by_gen[gen].update(c)
    totals = Counter()
    for c in by_gen.values():
        totals.update(c)
    stats = {
        "accuracy": {g: {s: v["accuracy"] for s, v in subs.items()} for g, subs in table.items()},
        "generator_accuracy": {g: round(c["correct"] / sum(c.values()), 4) for g, c in by_gen.items()},
        "cells": table,
        "reasons": {r: totals.get(r, 0) for r in REASONS},
        "n": sum(totals.values()),
    }
    write_json(out_path, stats)
    return stats


def step_verify_stats(io: StageIO) -> tuple[dict, list[str]]:
    return summarize_verify(io.input_list("labels"), io.output("stats")), [io.output("stats")]
