"""Answer verification with math-verify in worker processes.

math-verify's own timeout relies on signals, which work only in a process's main thread, and it
returns False on its timeouts; so each item is graded in a worker process (its main thread) and
the parent enforces a wall-clock and a memory limit, kills and replaces stuck workers and labels
those items `timeout`. Model output is only parsed, never evaluated as code.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .io import StageIO, read_jsonl, write_json, write_jsonl

REASONS = ("correct", "wrong_answer", "no_final_answer", "truncated", "timeout", "gold_unparseable")
GRADABLE = ("correct", "wrong_answer")


def extract_boxed(text: str) -> str | None:
    """Content of the last brace-balanced \\boxed{...} in text, stripped; None when absent."""
    from .think import boxed_spans

    spans = boxed_spans(text)
    if not spans:
        return None
    s, e = spans[-1]
    return text[s:e].strip()


def _quiet_math_verify() -> None:
    # We disable math-verify's signal timeouts on purpose (the worker pool enforces limits);
    # its warning about that would print once per item.
    import logging

    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)


def parse_gold(gold: str):
    from math_verify import parse

    _quiet_math_verify()

    parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    if not _has_expr(parsed):
        parsed = parse(f"${gold}$", parsing_timeout=None)
    # math-verify appends the raw matched text as a fallback; a gold with nothing else did not
    # parse, and comparing it as a string would grade an identical string `correct`.
    return parsed if _has_expr(parsed) else []


def _has_expr(parsed) -> bool:
    return any(not isinstance(p, str) for p in parsed)


def grade_answer(gold: str, final: str) -> tuple[str, str | None]:
    """(reason, extracted prediction) for one final part; gold first, as math-verify requires.
    Runs math-verify's parse and verify without their signal timeouts: the caller's process limits apply."""
    from math_verify import parse, verify

    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return "gold_unparseable", None
    if not final.strip():
        return "no_final_answer", None
    pred = parse(final, parsing_timeout=None)
    if not pred:
        return "no_final_answer", None
    ok = verify(gold_parsed, pred, timeout_seconds=None)
    return ("correct" if ok else "wrong_answer"), str(pred[-1] if len(pred) > 1 else pred[0])


def final_answer_text(record: Mapping[str, Any]) -> str | None:
    """The only text of a sample that may be graded, derived here from the raw output
    (`response_with_cot` when present, else `response`), never trusted from the record: a
    `response` that still holds `<think>...</think>` is split again, so an answer that appears only
    inside the thinking is never graded. None: no final part (thinking only, unterminated, empty,
    or the sampler recorded an unclosed thinking block)."""
    from .think import split_think

    if not record.get("think_closed", True):
        return None
    parts = split_think(record.get("response_with_cot") or record.get("response") or "")
    return parts.final if parts.has_final else None


def precheck(record: Mapping[str, Any]) -> str | None:
    """Reasons decided without the verifier: truncated output or no closed final part."""
    if record.get("finish_reason") == "length":
        return "truncated"
    if final_answer_text(record) is None:
        return "no_final_answer"
    return None


# ----------------------------------------------------------------------------- worker pool
def _worker_main(conn, memory_mb: int | None) -> None:
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass
    import math_verify  # noqa: F401  (import once, before the first item)

    try:
        grade_answer("1", "\\boxed{1}")  # warm up math-verify's lazy parts
    except Exception:
        pass
    conn.send("ready")  # the parent starts no item's clock before this
    while True:
        msg = conn.recv()
        if msg is None:
            return
        idx, gold, final = msg
        try:
            reason, pred = grade_answer(gold, final)
        except MemoryError:
            reason, pred = "timeout", "memory limit"
        except Exception as exc:  # a parser crash on odd text is a wrong/unparseable answer, not a job crash
            reason, pred = "no_final_answer", f"error: {type(exc).__name__}"
        conn.send((idx, reason, pred))


@dataclass
class _Slot:
    proc: Any
    conn: Any
    item: int | None = None
    started: float = 0.0


class VerifierPool:
    """N worker processes; each item gets at most `timeout_s` of wall time."""

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int | None = 2048):
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.ctx = mp.get_context("spawn")
        self.killed = 0
        self.slots: list[_Slot] = []
        self.startup_timeout_s = 120.0

    def _spawn(self) -> _Slot:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.memory_mb), daemon=True)
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def _await_ready(self, s: _Slot) -> None:
        """Wait until a worker has imported math-verify, so that start-up (about a second, more on a
        busy machine) is never charged to an item's timeout. A worker that cannot start is an error."""
        try:
            if s.conn.poll(self.startup_timeout_s) and s.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        s.proc.kill()
        raise RuntimeError(f"verifier worker did not start within {self.startup_timeout_s} s "
                           f"(exit code {s.proc.exitcode}; memory_mb={self.memory_mb} too low?)")

    def __enter__(self):
        self.slots = [self._spawn() for _ in range(self.workers)]
        try:
            for s in self.slots:
                self._await_ready(s)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for s in self.slots:
            try:
                s.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for s in self.slots:
            s.proc.join(timeout=2)
            if s.proc.is_alive():
                s.proc.kill()

    def grade(self, items: Sequence[tuple[str, str]], progress: bool = False) -> list[tuple[str, str | None]]:
        """items: (gold, final) pairs -> (reason, prediction) in the same order."""
        from tqdm import tqdm

        results: list[tuple[str, str | None] | None] = [None] * len(items)
        queue = list(range(len(items)))[::-1]
        bar = tqdm(total=len(items), desc="verify", disable=not progress, mininterval=2)
        while queue or any(s.item is not None for s in self.slots):
            for s in self.slots:
                if s.item is None and queue:
                    i = queue.pop()
                    s.item, s.started = i, time.monotonic()
                    s.conn.send((i, items[i][0], items[i][1]))
            busy = [s for s in self.slots if s.item is not None]
            deadline = min(s.started for s in busy) + self.timeout_s
            ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy],
                         timeout=max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            for k, s in enumerate(self.slots):
                if s.item is None:
                    continue
                if s.conn in ready:
                    try:
                        idx, reason, pred = s.conn.recv()
                    except (EOFError, OSError):
                        idx, reason, pred = s.item, "timeout", "worker died"
                        self._replace(k)
                    results[idx] = (reason, pred)
                    s = self.slots[k]
                    s.item = None
                    bar.update(1)
                elif s.proc.sentinel in ready or now - s.started >= self.timeout_s:
                    results[s.item] = ("timeout", "worker killed" if s.proc.is_alive() else "worker died")
                    self._replace(k)
                    bar.update(1)
        bar.close()
        return results  # type: ignore[return-value]

    def _replace(self, k: int) -> None:
        s = self.slots[k]
        if s.proc.is_alive():
            s.proc.kill()
        s.proc.join(timeout=2)
        self.killed += 1
        self.slots[k] = self._spawn()
        self._await_ready(self.slots[k])


def grade_serial(items: Sequence[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """The plain loop (no limits), kept for the benchmark against the pool."""
    return [grade_answer(g, f) for g, f in items]


# ----------------------------------------------------------------------------- stage
def run_verify(samples_path: str | Path, problems_paths: Sequence[str | Path], out_path: str | Path,
               meta_path: str | Path, workers: int = 2, timeout_s: float = 5.0, memory_mb: int | None = 2048,
               progress: bool = True) -> dict:
    """Stage `verify`: label every sample of one (generator, subset) with a reason (out_path);
    counts per reason to meta_path."""
    from .problems import load_problem_sets
    from .provenance import provenance

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
                    "label": 1 if reason == "correct" else 0 if reason == "wrong_answer" else None})
    write_jsonl(out_path, out)
    counts = Counter(reasons)
    meta = {"n": len(out), "reasons": {r: counts.get(r, 0) for r in REASONS}, "workers_killed": killed,
            "seconds": round(time.time() - t0, 2),
            "accuracy": round(counts.get("correct", 0) / len(out), 4) if out else None,
            "provenance": provenance(data=[str(samples_path)])}
    write_json(meta_path, meta)
    return meta


def step_verify(params: Mapping[str, Any], io: StageIO) -> tuple[dict, list[str]]:
    from .settings import VerifySettings

    v = VerifySettings.from_params(params)
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


def step_verify_stats(params: Mapping[str, Any], io: StageIO) -> tuple[dict, list[str]]:
    return summarize_verify(io.input_list("labels"), io.output("stats")), [io.output("stats")]
