"""The sample stage on a real (random-init) tiny model: per-sample seeds, chunked store, resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tiny_fixtures import make_random_lm, params_with_path_model

from librarm.io import read_jsonl, write_jsonl
from librarm.sampling import HFSampler, SampleRequest, SamplingConfig, run_sample


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
    a = HFSampler(str(rand_model), SamplingConfig(max_new_tokens=12, batch_size=6)).generate(reqs)
    b = HFSampler(str(rand_model), SamplingConfig(max_new_tokens=12, batch_size=2)).generate(reqs)
    assert [r.text for r in a] == [r.text for r in b]
    c = HFSampler(str(rand_model), SamplingConfig(max_new_tokens=12, batch_size=6)).generate(
        [SampleRequest(r.messages, r.seed + 1) for r in reqs])
    assert [r.text for r in a] != [r.text for r in c]
    assert all(r.finish_reason in ("stop", "length") and r.completion_tokens <= 12 for r in a)


def test_raising_n_generates_only_new_samples(rand_model, problems_file, tmp_path, params):
    p = params_with_path_model(params, rand_model, n=2, max_new_tokens=10, batch_size=4)
    store = tmp_path / "store"
    m1 = run_sample(p, "rand", "s", problems_file, tmp_path / "out2.jsonl", tmp_path / "out2.meta.json", store,
                    progress=False)
    assert m1["generated_now"] == 24
    p["sampling"]["n"] = 3
    m2 = run_sample(p, "rand", "s", problems_file, tmp_path / "out3.jsonl", tmp_path / "out3.meta.json", store,
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
    clean = run_sample(p, "rand", "s", problems_file, tmp_path / "clean.jsonl", tmp_path / "clean.meta.json",
                       tmp_path / "clean_store", progress=False)
    assert clean["generated_now"] == 48
    assert out.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()


@pytest.mark.parametrize("budget", [None, 261 * 3 * 2])      # all steps in one draw; two steps per draw
def test_batched_noise_draws_the_tokens_of_per_row_multinomial(monkeypatch, budget):
    import torch

    from librarm.sampling import _ExponentialNoise

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
    cfg = SamplingConfig(max_new_tokens=24, batch_size=8, temperature=1.5)
    sampler = HFSampler(str(rand_model), cfg)
    sampler.stop_ids |= set(range(0, 256, 16))     # a random model rarely says EOS: make rows stop early
    together = sampler.generate(reqs)
    alone = [sampler.generate([r])[0] for r in reqs]
    assert [(r.text, r.finish_reason) for r in together] == [(r.text, r.finish_reason) for r in alone]
    assert len({r.completion_tokens for r in together}) > 1, "no row finished early: the test checks nothing"
