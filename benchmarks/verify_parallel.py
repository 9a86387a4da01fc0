"""Answer verification: the plain serial loop vs VerifierPool, same ~400 (gold, final) pairs, one run.

    python benchmarks/verify_parallel.py [--n 400] [--workers 2] [--timeout 5] [--seed 0]

Pairs are built from tests/fixtures/answer_forms.jsonl (real MATH-500 answer forms), repeated with
varied prose around the answer and shuffled. Both runs must give the same (reason, prediction) for
every pair. Prints wall times and the ratio serial/parallel (with and without the pool's start-up)."""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "answer_forms.jsonl"

PREFIXES = [
    "",
    "Putting everything together, ",
    "We checked the computation twice. ",
    "**Final Answer**\n\n",
    "Let me summarise the solution: we reduce the problem to a single expression and simplify it.\n\n",
    "Therefore, after simplifying, ",
]
SUFFIXES = ["", "\n\nI hope it is correct.", " This completes the solution.", "\n"]


def build_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    cases = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        for c in cases:
            pairs.append((c["gold"], rng.choice(PREFIXES) + c["response"] + rng.choice(SUFFIXES)))
    rng.shuffle(pairs)
    return pairs[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from librarm.judging.verifier import VerifierPool, grade_answer, grade_serial

    pairs = build_pairs(a.n, a.seed)
    grade_answer("1", "\\boxed{1}")  # import and warm up math-verify, as the pool's workers do

    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    serial = grade_serial(pairs)
    t_serial, c_serial = time.perf_counter() - t0, time.process_time() - c0

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with VerifierPool(workers=a.workers, timeout_s=a.timeout) as pool:
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        pooled = pool.grade(pairs)
        t_grade = time.perf_counter() - t1
        killed = pool.killed
    t_pool = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, once joined
    c_workers = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)

    diff = [i for i, (s, p) in enumerate(zip(serial, pooled)) if s != p]
    print(f"pairs: {len(pairs)} (from {FIXTURE.relative_to(ROOT)}), workers: {a.workers}, timeout_s: {a.timeout}")
    print(f"cpus: {os.cpu_count()}, load average before the run: {load:.2f} (other jobs share the CPUs when it is high)")
    print(f"reasons: {dict(sorted(Counter(r for r, _ in serial).items()))}")
    print(f"serial   : {t_serial:7.2f} s  ({1000 * t_serial / len(pairs):.1f} ms/pair; CPU {c_serial:.2f} s)")
    print(f"pool     : {t_pool:7.2f} s  (start-up {t_start:.2f} s + grading {t_grade:.2f} s), killed {killed}; workers' CPU {c_workers:.2f} s incl. start-up")
    print(f"ratio serial/parallel: {t_serial / t_pool:.2f}x  (grading only: {t_serial / t_grade:.2f}x)")
    if diff:
        for i in diff[:10]:
            print(f"  MISMATCH {i}: {pairs[i]!r}: serial {serial[i]} pool {pooled[i]}")
        print(f"labels agree: NO ({len(diff)} differ)")
        sys.exit(1)
    print("labels agree: yes")


if __name__ == "__main__":
    main()
