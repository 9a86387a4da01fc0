"""`librarm score` against a real OpenAI-compatible server: `transformers serve` started on
127.0.0.1 for a tiny-world judge folder (stopped by PID). The http and hf backends on the same
model with greedy decoding give the same text, and each setting that cannot work (no server, a
model the server does not serve, an unset API-key variable, a hub id without a revision, a pipeline
model not built yet) is one line naming it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port, text_differences

from librarm.run.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
JUDGE = REPO / "workflow" / "tiny_models" / "judge_teacher"


def librarm(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "librarm.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "LIBRARM_TRACKING": "0", **(env or {})}, timeout=600)


def sample_stage(cfg: Path, probs: Path, out: Path, cwd: Path, generator: str,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """`librarm stage sample` for one generator on one problems file (subset `tiny`): the samples
    to out, the meta record beside it (out.meta.json), the resume store under cwd."""
    return librarm("stage", "sample", "--config", str(cfg), "--wildcard", f"generator={generator}",
                   "--wildcard", "subset=tiny", "--in", "problems", str(probs), "--out", "samples", str(out),
                   "--out", "meta", str(out.with_suffix(".meta.json")), "--threads", "1", cwd=cwd, env=env)


def _bench(path: Path, n: int = 6) -> Path:
    rows = []
    for i in range(n):
        a, b, c = i % 9 + 1, i % 5, i % 3
        ans = a + b - c + (i % 2)                               # every other response is wrong
        rows.append({"index": i, "question": f"Compute {a}+{b}-{c}.", "response": f"\\boxed{{{ans}}}",
                     "label": 1 - i % 2, "subset": "tiny", "model": "g"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _greedy_params(tmp: Path) -> Path:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["judge"].update(temperature=0.0, max_new_tokens=48)
    out = tmp / "params.yaml"
    out.write_text(yaml.safe_dump(p))
    return out


def score_greedy(tmp: Path, name: str, model: Path, *backend: str, env: dict | None = None) -> dict[int, dict]:
    """`librarm score` of _bench's 6 items, greedy (the tiny world's prompt and budgets), with the
    judge `model` on `backend` (e.g. "--backend", "http", "--base-url", URL): predictions by index."""
    bench, params = _bench(tmp / "bench.jsonl"), _greedy_params(tmp)
    res = librarm("score", "--bench", str(bench), "--params", str(params), "--preset", "none", "--judge", "mine",
                  *backend, "--model", str(model), "--out", str(tmp / name), env=env)
    assert res.returncode == 0, (name, res.stderr[-3000:])
    assert "budgets (params.yaml): judge.max_prompt_tokens=384" in res.stdout
    assert "0 truncated, 0 skipped (of 6)" in res.stdout
    return {r["index"]: r for r in read_jsonl(tmp / name / "predictions.jsonl").records}


_HF_GREEDY: dict[str, dict[int, dict]] = {}


def hf_greedy(model: Path, tmp_path_factory) -> dict[int, dict]:
    """score_greedy with the hf backend, once per test process and model: the reference every
    backend comparison (transformers serve here, vLLM in test_vllm) checks its text against."""
    if str(model) not in _HF_GREEDY:
        _HF_GREEDY[str(model)] = score_greedy(tmp_path_factory.mktemp("hf-greedy"), "hf", model, "--backend", "hf")
    return _HF_GREEDY[str(model)]


def assert_same_verdicts(a: dict[int, dict], b: dict[int, dict], model: Path, names: tuple[str, str]) -> None:
    """The same judge output text for every item (else each item's first differing token), hence
    the same verdicts."""
    diffs = text_differences({i: r["output"] for i, r in a.items()}, {i: r["output"] for i, r in b.items()},
                             model, names)
    assert not diffs, "\n".join(diffs)
    assert [a[i]["pred"] for i in sorted(a)] == [b[i]["pred"] for i in sorted(b)]


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.parametrize("model", ["tiny_judge", "smollm2"])
def test_http_and_hf_backends_give_the_same_greedy_text(served, model, tmp_path, tmp_path_factory, request):
    """The server loads a model folder on its first request for it, so one server serves both the
    tiny-world judge and the smoke-real preset's SmolLM2-135M-Instruct."""
    folder = JUDGE if model == "tiny_judge" else request.getfixturevalue("smollm2_folder")
    http = score_greedy(tmp_path, "http", folder, "--backend", "http", "--base-url", served)
    hf = hf_greedy(folder, tmp_path_factory)
    assert_same_verdicts(http, hf, folder, ("http", "hf"))
    assert len(http) == 6
    assert json.loads((tmp_path / "http" / "metrics.json").read_text())["n_items"] == 6


@pytest.mark.slow
@pytest.mark.engines
def test_a_model_the_server_does_not_serve_is_one_line(served, tmp_path):
    res = librarm("score", "--bench", str(_bench(tmp_path / "b.jsonl")), "--judge", "mine", "--backend", "http",
                  "--base-url", served, "--model", "no-such-model", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # (the served list also names SmolLM2 once a test has asked for it)
    assert f"--model no-such-model: not served at {served} (it serves: " in res.stderr and str(JUDGE) in res.stderr


def test_settings_that_cannot_work_are_one_line_each(tmp_path, monkeypatch):
    bench = str(_bench(tmp_path / "b.jsonl"))
    dead = f"http://127.0.0.1:{free_port()}/v1"              # nothing listens there
    cases = [
        (["--backend", "http", "--model", "m"], "--base-url: required with --backend http"),
        (["--backend", "http", "--base-url", dead, "--model", "m"], f"--base-url {dead}: no answer from {dead}/models"),
        (["--backend", "http", "--base-url", dead, "--model", "m", "--api-key-env", "LIBRARM_NO_SUCH_KEY"],
         "--api-key-env LIBRARM_NO_SUCH_KEY: the environment variable LIBRARM_NO_SUCH_KEY is not set"),
        (["--model", "someone/some-judge"], "--model someone/some-judge: not a local folder; for a hub id pin a "
                                            "revision with --revision"),
        (["--model", str(JUDGE), "--vllm-arg", "dtype=float32"], "--vllm-arg: only with --backend vllm"),
        (["--backend", "vllm", "--model", str(JUDGE), "--vllm-arg", "dtype"], "--vllm-arg dtype: expected KEY=VALUE"),
    ]
    for extra, line in cases:
        res = librarm("score", "--bench", bench, "--judge", "mine", "--out", str(tmp_path / "o"), *extra)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert line in res.stderr, (extra, res.stderr)
    # a judge of params whose model the pipeline has not built yet (run from an empty folder)
    res = librarm("score", "--bench", bench, "--judge", "sft", "--params", str(REPO / "params.yaml"), "--preset", "none",
                  "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert res.returncode == 2
    assert "its model results/train/judge_sft does not exist yet; build it with " \
           "`snakemake --cores 2 results/train/judge_sft`" in res.stderr
