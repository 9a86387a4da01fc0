"""Judging a huge response: the prompt budget's cost against the response's size, one run per size.

    python benchmarks/judge_prompt_budget.py [--sizes 50000 5000000 50000000] [--items 4]
                                             [--max-prompt-tokens 384] [--with-unbounded 50000 1000000]

Each size runs in a fresh process (so that its peak RSS is its own): a bench of `--items` items,
one of them with a response of SIZE characters, scored end to end by `run_evaluate` with the
default params' judge settings (`judge.prompt_template`, `judge.max_prompt_tokens`,
`truncate_response`) and the tiny world's byte-level tokenizer (one token per byte, the worst case
for tokenizing a long text); the judge itself is a scripted one that answers at once, so the
figures are the cost of reading the bench, fitting the prompts and scoring. A first run on a small
bench loads the libraries; then the timed run. Prints its seconds and its peak RSS growth, per size. `--with-unbounded` also times the former
algorithm (tokenize the whole response, then binary-search its tail) on `fit_prompt` alone, for
the sizes given (keep them small: it grows with the response)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

import yaml

from librarm.run.settings import call
from librarm.stages.evaluate import run_evaluate
from librarm.engines.base import SampleResult
from librarm.stages.bootstrap_tiny import build_tokenizer

bench, warm, out, max_tokens = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
params = yaml.safe_load(open(sys.argv[5]))
params["judge"]["max_prompt_tokens"] = max_tokens
params["judge"]["overflow"] = "truncate_response"
params["evaluate"]["bootstrap_resamples"] = 10


class Scripted:
    name = "scripted"
    tok = build_tokenizer()

    def generate(self, reqs):
        return [SampleResult("<think>ok</think>\\boxed{correct}", "stop", 5, 5) for _ in reqs]


judge = params["evaluate"]["judges"][0]
call(run_evaluate, params, judge, warm, out / "w.jsonl", out / "w.json", sampler=Scripted())   # imports, caches
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
m = call(run_evaluate, params, judge, bench, out / "p.jsonl", out / "m.json", sampler=Scripted())
dt = time.perf_counter() - t0
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": round(dt, 3), "rss_growth_mb": round((rss1 - rss0) / 1024, 1),
                  "prompt_overflow": m["prompt_overflow"]}))
"""

UNBOUNDED = r"""
import json, resource, sys, time

from librarm.judging.judge import judge_messages
from librarm.engines.hf import render_chat
from librarm.stages.bootstrap_tiny import build_tokenizer


def fit_prompt_unbounded(tok, template, system_prompt, question, response, max_tokens):
    # the algorithm before the bound: tokenize the whole response, binary-search the whole id list
    def count(resp):
        return len(tok(render_chat(tok, judge_messages(template, question, resp, system_prompt)),
                       add_special_tokens=False)["input_ids"])

    if count(response) <= max_tokens:
        return "ok"
    ids = tok(response, add_special_tokens=False)["input_ids"]
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count("[...]" + tok.decode(ids[len(ids) - mid:])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return "truncated"


size, max_tokens = int(sys.argv[1]), int(sys.argv[2])
tok = build_tokenizer()
response = ("step 12+7=19, " * (size // 14 + 1))[:size - 10] + "\\boxed{19}"
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
fit_prompt_unbounded(tok, "Judge the answer.\nQ: {question}\nA: {response}", None, "Compute 12+7.", response, max_tokens)
print(json.dumps({"seconds": round(time.perf_counter() - t0, 3),
                  "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1)}))
"""


def write_bench(path: Path, size: int, items: int) -> None:
    """`items` items; item 0's response is `size` characters of arithmetic prose ending in a box."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(items):
            response = "\\boxed{19}" if i else ("step 12+7=19, " * (size // 14 + 1))[:size - 10] + "\\boxed{19}"
            fh.write(json.dumps({"index": i, "question": "Compute 12+7.", "response": response, "label": 1,
                                 "model": "gen", "reference": "19", "subset": "s"}) + "\n")


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 5_000_000, 50_000_000])
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--max-prompt-tokens", type=int, default=384)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--with-unbounded", type=int, nargs="*", default=[])
    a = ap.parse_args()
    print(f"{'response chars':>15} {'seconds':>8} {'RSS growth MB':>14}  prompt overflow")
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            bench = Path(tmp) / f"bench-{size}.jsonl"
            write_bench(bench, size, a.items)
            warm = Path(tmp) / "warm.jsonl"
            write_bench(warm, 100, a.items)
            r = run(CHILD, str(bench), str(warm), tmp, str(a.max_prompt_tokens), a.params)
            print(f"{size:>15,} {r['seconds']:>8.2f} {r['rss_growth_mb']:>14.1f}  {r['prompt_overflow']}")
            bench.unlink()
    if a.with_unbounded:
        print("\nthe former algorithm, fit_prompt alone:")
        for size in a.with_unbounded:
            r = run(UNBOUNDED, str(size), str(a.max_prompt_tokens))
            print(f"{size:>15,} {r['seconds']:>8.2f} {r['rss_growth_mb']:>14.1f}")


if __name__ == "__main__":
    main()
