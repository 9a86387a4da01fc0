"""Faults between the http backend and a real server, with nothing lost.

`transformers serve` runs on a free loopback port for the tiny-world teacher judge (the `served`
fixture of tests/conftest.py, stopped by PID), and tests/fault_proxy.py sits in front of it.
Greedy decoding (temperature 0), so an undisturbed run is the reference:

- each transient fault (dropped connection, 429 with Retry-After, a Retry-After above the cap,
  500, a reply slower than the per-request timeout, JSON cut short, a body shorter than its
  Content-Length) is retried with backoff and the results equal the undisturbed ones;
- the server "killed" mid-stage (the proxy refuses connections after 4 requests): `run_sample`
  raises one line naming the URL, the error and the attempt count, the finished chunks stay in the
  resume store and no output file is written; once the server is back, a rerun generates only the
  missing chunks and the file is byte-identical to the undisturbed run's;
- the same through the real `librarm stage sample` command (a gateway answering 503 with
  `Retry-After: 0` once its server is gone): exit 2, one `error:` line, then the rerun.

The stage path cannot set the sampler's retry settings (a generator spec has only `concurrency`),
so the in-process `run_sample` tests wrap `make_sampler` to shorten them; the command keeps the
defaults (6 retries, 0.5 s backoff), and a 503 with `Retry-After: 0` makes its retries immediate.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import test_serving
from conftest import REPO
from fault_proxy import Fault, FaultProxy
from test_serving import JUDGE

from librarm import engines
from librarm.engines.base import SampleRequest, SamplingConfig
from librarm.engines.http import HTTPError, HTTPSampler
from librarm.run.config import load_params
from librarm.run.io import write_jsonl
from librarm.run.settings import call
from librarm.stages.sample import run_sample

pytestmark = pytest.mark.engines


CFG = SamplingConfig(temperature=0.0, max_new_tokens=24, top_p=1.0, batch_size=64)
TIMEOUT_S = 8.0                         # the per-request timeout where a test needs one (the slow fault)
BACKOFF_S = 0.05
REQS = [SampleRequest([{"role": "user", "content": f"Compute {3 + i}+{i % 4}-{i % 3}."}], seed=100 + i)
        for i in range(4)]
N_PROBLEMS, N_SAMPLES, BATCH = 6, 2, 2  # 3 blocks x 2 samples = 6 chunks of 2 requests
TOTAL = N_PROBLEMS * N_SAMPLES


def proxy_env(monkeypatch) -> None:
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def fault_proxy(served):
    with FaultProxy(served) as proxy:
        yield proxy


@pytest.fixture
def proxy(fault_proxy, monkeypatch):
    proxy_env(monkeypatch)
    return fault_proxy.reset()


def sampler(url: str, sleeps: list | None = None, **kw) -> HTTPSampler:
    def sleep(s: float) -> None:        # really sleeps, and records how long
        if sleeps is not None:
            sleeps.append(s)
        time.sleep(s)

    kw = {"max_retries": 3, "concurrency": 2, "timeout_s": 120.0, **kw}
    return HTTPSampler(url, str(JUDGE), CFG, backoff_s=BACKOFF_S, sleep=sleep, **kw)


def outcome(results) -> list[tuple]:
    return [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in results]


@pytest.fixture(scope="module")
def reference(served):
    """The undisturbed greedy results, straight from the server."""
    results = outcome(sampler(served).generate(REQS))
    assert all(r[3] > 0 for r in results)
    return results


# ----------------------------------------------------------------------------- transient faults
TRANSIENT = {
    "drop": ([Fault("drop")] * 2, {}),
    "429-retry-after": ([Fault("429", retry_after="1")] * 2, {}),
    "429-retry-after-capped": ([Fault("429", retry_after="3600")], {"max_sleep_s": 0.2}),
    "500": ([Fault("500")] * 2, {}),
    "slow": ([Fault("slow", delay=TIMEOUT_S + 20)], {"timeout_s": TIMEOUT_S}),
    "truncated-json": ([Fault("truncate")] * 2, {}),
    "short-body": ([Fault("short")] * 2, {}),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(TRANSIENT))
def test_each_transient_fault_is_survived_with_the_undisturbed_result(name, proxy, reference):
    faults, kw = TRANSIENT[name]
    proxy.inject(*faults)
    sleeps: list[float] = []
    s = sampler(proxy.url, sleeps, **kw)
    t0 = time.perf_counter()
    results = outcome(s.generate(REQS))
    took = time.perf_counter() - t0

    assert results == reference
    assert proxy.faults_left() == 0 and proxy.injected(faults[0].kind) == len(faults)
    assert s.retries == len(faults) == len(sleeps)          # one retry per fault, nothing else failed
    relayed_first = sum(f.kind in ("slow", "truncate", "short") for f in faults)    # relayed, then spoilt
    assert proxy.relayed == len(REQS) + relayed_first
    if name == "429-retry-after":
        assert sleeps == [1.0, 1.0]                          # Retry-After honoured
    elif name == "429-retry-after-capped":
        assert sleeps == [0.2]                               # ... up to max_sleep_s
    else:
        # backoff_s * 2**k * (1 + jitter), k = 0 (or 1 where a request's retry took the next fault)
        assert all(BACKOFF_S <= x <= 4 * BACKOFF_S for x in sleeps)
    if name == "slow":
        assert TIMEOUT_S <= took < TIMEOUT_S + 20           # left at the timeout, not waiting for the reply


@pytest.mark.timeout(120)
def test_backoff_doubles_then_gives_up_with_one_line_and_starts_nothing_more(proxy):
    proxy.inject(*[Fault("500")] * 4)
    sleeps: list[float] = []
    s = sampler(proxy.url, sleeps, max_retries=3, concurrency=1)
    with pytest.raises(HTTPError) as err:
        s.generate(REQS)
    assert str(err.value) == (f"{proxy.url}/chat/completions: gave up after 4 attempts; last error: "
                              'HTTP 500: {"error": {"message": "injected 500"}}')
    assert len(sleeps) == 3
    for k, x in enumerate(sleeps):
        assert BACKOFF_S * 2**k <= x <= 2 * BACKOFF_S * 2**k
    assert [e["fault"] for e in proxy.log] == ["500"] * 4     # the 3 requests not started yet were cancelled


# ----------------------------------------------------------------------------- the sample stage
def stage_params(base_url: str) -> dict:
    return load_params(REPO / "params.yaml", overlays=[{
        "models": {"served": {"source": "path", "path": str(JUDGE), "role": "generator"}},
        "generators": {"served": {"model": "served", "backend": "http", "base_url": base_url, "concurrency": 2}},
        "sampling": {"n": N_SAMPLES, "batch_size": BATCH, "temperature": 0.0, "max_new_tokens": 24}}])


def problems(path: Path) -> Path:
    write_jsonl(path, [{"id": f"t{i}", "set": "tiny", "role": "eval", "problem": f"Compute {i + 2}+{i % 3}.",
                        "answer": str(i + 2 + i % 3)} for i in range(N_PROBLEMS)])
    return path


def chunks(store: Path) -> list[Path]:
    return sorted(store.rglob("chunk-*.jsonl"))


@pytest.fixture(scope="module")
def undisturbed(served, tmp_path_factory) -> bytes:
    """The sample stage's file from a run straight to the server."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    meta = call(run_sample, stage_params(served), "served", "tiny", problems(tmp / "p.jsonl"), tmp / "out.jsonl",
                            tmp / "out.meta.json", store_root=tmp / "store", progress=False)
    assert meta["generated_now"] == TOTAL and meta["n_records"] == TOTAL
    return (tmp / "out.jsonl").read_bytes()


@pytest.fixture
def quick_retries(monkeypatch):
    """The stage's sampler with short retry settings (a generator spec cannot set them)."""
    real = engines.make_sampler

    def make(*args, **kw):
        s = real(*args, **kw)
        s.max_retries, s.backoff_s, s.timeout_s = 2, BACKOFF_S, 120.0
        return s

    monkeypatch.setattr(engines, "make_sampler", make)


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_server_killed_mid_stage_keeps_chunks_and_rerun_makes_only_the_rest(proxy, quick_retries, undisturbed,
                                                                            tmp_path):
    params, probs = stage_params(proxy.url), problems(tmp_path / "p.jsonl")
    out, meta_path, store = tmp_path / "out.jsonl", tmp_path / "out.meta.json", tmp_path / "store"
    proxy.down_after(2 * BATCH)                          # killed after two chunks' requests
    with pytest.raises(HTTPError) as err:
        call(run_sample, params, "served", "tiny", probs, out, meta_path, store_root=store, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{proxy.url}/chat/completions: gave up after 3 attempts; "
                                              "last error: ConnectionError: ")
    assert refuses(proxy.port)
    assert len(chunks(store)) == 2                       # the two finished chunks stay
    assert not out.exists() and not meta_path.exists()  # nothing marked complete

    proxy.up()                                           # the server is back
    meta = call(run_sample, params, "served", "tiny", probs, out, meta_path, store_root=store, progress=False)
    assert (meta["generated_now"], meta["reused"], meta["n_records"]) == (TOTAL - 2 * BATCH, 2 * BATCH, TOTAL)
    assert proxy.relayed == TOTAL                        # every request answered once, none twice
    assert out.read_bytes() == undisturbed


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stage_command_gives_up_in_one_line_then_the_rerun_completes(proxy, undisturbed, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(stage_params(proxy.url)))
    probs, out = problems(tmp_path / "p.jsonl"), tmp_path / "out.jsonl"
    proxy.down_after(2 * BATCH, Fault("503", retry_after="0"))   # a gateway whose server is gone
    res = test_serving.sample_stage(cfg, probs, out, tmp_path, "served")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.replace("\r", "\n").splitlines() if "error" in ln.lower()]
    assert lines == [f"error: {proxy.url}/chat/completions: gave up after 7 attempts; last error: HTTP 503: "
                     '{"error": {"message": "injected 503"}}  (librarm --debug ... shows the traceback)'], res.stderr
    store = tmp_path / "results" / ".resume" / "samples" / "served" / "tiny"
    assert len(chunks(store)) == 2
    assert not out.exists() and not out.with_suffix(".meta.json").exists()
    # the third chunk: one request made all 7 attempts; the other stopped retrying once it gave up
    assert 7 <= proxy.injected("503") <= 2 * 7

    proxy.up()
    res = test_serving.sample_stage(cfg, probs, out, tmp_path, "served")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert (meta["generated_now"], meta["reused"], meta["n_records"]) == (TOTAL - 2 * BATCH, 2 * BATCH, TOTAL)
    assert out.read_bytes() == undisturbed

