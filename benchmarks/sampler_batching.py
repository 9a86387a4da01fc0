"""Batched hf sampling vs one-at-a-time generation, same model, same requests, one run.

    python benchmarks/sampler_batching.py [--model DIR] [--n 64] [--batch 32]

Without --model it uses the bootstrap's gen_mid (results/bootstrap/models/gen_mid) if present,
else a random-init tiny model of the same architecture. Prints tokens/s and the ratio."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from librarm.engines.base import SampleRequest, SamplingConfig
    from librarm.engines.hf import HFSampler

    torch.set_num_threads(a.threads)
    model = a.model
    if model is None:
        default = Path("results/bootstrap/models/gen_mid")
        if default.exists():
            model = str(default)
        else:
            from tiny_fixtures import make_random_lm

            model = str(make_random_lm(Path(tempfile.mkdtemp()) / "rand", hidden=96, layers=3))
    reqs = [SampleRequest([{"role": "user", "content": f"Compute {10 + i % 80}+{1 + i % 9}-{1 + i % 7}."}], seed=i)
            for i in range(a.n)]
    timings = {}
    for label, bs in (("one_at_a_time", 1), ("batched", a.batch)):
        sampler = HFSampler(model, SamplingConfig(temperature=1.0, max_new_tokens=a.max_new_tokens, batch_size=bs, top_p=1.0))
        t0 = time.perf_counter()
        res = sampler.generate(reqs)
        dt = time.perf_counter() - t0
        toks = sum(r.completion_tokens for r in res)
        timings[label] = (dt, toks)
        print(f"{label:>14}: {a.n} samples, {toks} tokens in {dt:.2f} s = {toks / dt:.0f} tokens/s")
    (t1, k1), (tb, kb) = timings["one_at_a_time"], timings["batched"]
    print(f"batched / one-at-a-time throughput ratio: {(kb / tb) / (k1 / t1):.1f}x  (model {model}, batch {a.batch})")


if __name__ == "__main__":
    main()
