"""The http backend against a real `transformers serve`: the same N chat requests at concurrency 1
and at concurrency C, one run.

    PYTHONPATH=workflow python benchmarks/http_concurrency.py [--model DIR] [--n 32] [--concurrency 8]
        [--max-new-tokens 32] [--rounds 1] [--continuous-batching]

Starts `transformers serve` on a free 127.0.0.1 port for a tiny-world model folder (default: the
shipped teacher judge, the one tests/test_serving.py serves), waits for /v1/models, sends two
warm-up requests, then times N greedy requests (fixed max_tokens) through HTTPSampler at
concurrency 1 and at concurrency C (alternating, `--rounds` times), prints requests/s and
completion tokens/s of each, their ratio, and whether every text is the same, and stops the
server by PID (its process group). `--continuous-batching` passes that flag to the server; without
it `transformers serve` runs one `model.generate` at a time on a single inference thread
(transformers/cli/serving/utils.py, GenerateManager), so concurrency can only overlap the HTTP and
tokenization work with generation."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"transformers-serve-{port}.log"
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), *extra, model],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    import requests

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"transformers serve exited with {proc.returncode}: see {log}")
        try:
            if requests.get(f"{url}/models", timeout=2).ok:
                return proc, url, log
        except requests.RequestException:
            time.sleep(1)
    stop_server(proc)
    raise SystemExit(f"transformers serve did not answer in 180 s: see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "workflow/tiny_models/judge_teacher"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--continuous-batching", action="store_true")
    a = ap.parse_args()
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"

    from librarm.engines.base import SampleRequest, SamplingConfig
    from librarm.engines.http import HTTPSampler
    from librarm.stages.sample import problem_messages

    cfg = SamplingConfig(temperature=0.0, max_new_tokens=a.max_new_tokens, top_p=1.0, batch_size=64)
    reqs = [SampleRequest(problem_messages({"problem": f"Compute {10 + i % 80}+{1 + i % 9}-{1 + i % 7}."}, None),
                          seed=i) for i in range(a.n)]
    proc, url, log = start_server(a.model, ["--continuous-batching"] if a.continuous_batching else [])
    try:
        HTTPSampler(url, a.model, cfg, concurrency=2).generate(reqs[:2])            # warm-up
        best: dict[int, float] = {}
        texts: dict[int, list[str]] = {}
        tokens = 0
        for r in range(a.rounds):
            order = (1, a.concurrency) if r % 2 == 0 else (a.concurrency, 1)
            for c in order:
                sampler = HTTPSampler(url, a.model, cfg, concurrency=c)
                t0 = time.perf_counter()
                res = sampler.generate(reqs)
                dt = time.perf_counter() - t0
                tokens = sum(x.completion_tokens for x in res)
                texts.setdefault(c, [x.text for x in res])
                same_round = [x.text for x in res] == texts[c]
                best[c] = min(best.get(c, dt), dt)
                print(f"round {r + 1} concurrency {c:>2}: {a.n} requests, {tokens} completion tokens in {dt:.2f} s "
                      f"= {a.n / dt:.2f} req/s, {tokens / dt:.1f} tok/s, retries {sampler.retries}"
                      f"{'' if same_round else '  (texts differ from round 1)'}")
    finally:
        stop_server(proc)
    c1, cn = best[1], best[a.concurrency]
    print(f"concurrency {a.concurrency} / concurrency 1 throughput: {c1 / cn:.2f}x "
          f"(best of {a.rounds}: {a.n / c1:.2f} vs {a.n / cn:.2f} req/s); same texts: {texts[1] == texts[a.concurrency]}"
          f"  (transformers serve{' --continuous-batching' if a.continuous_batching else ''}, {a.model}, "
          f"max_tokens {a.max_new_tokens}, {os.cpu_count()} CPUs; server log {log})")


if __name__ == "__main__":
    main()
