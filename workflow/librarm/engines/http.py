"""The http backend: any OpenAI-compatible server (vLLM, transformers serve, an API), through a bounded client.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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


class HTTPError(RuntimeError, ValueError):
    """A request of the http backend that failed for good: a status that is not retried, a reply
    that is not a chat completion, or the last retry spent. One line that names the URL, the
    status or error kind and the attempt count. A ValueError too, so `librarm` reports it as its
    one-line error (exit 2), like any other setting that cannot work, instead of a traceback."""


class HTTPContextOverflowError(HTTPError, ContextOverflowError):
    """A server that refused a prompt longer than the model's context (vLLM's server answers 400)."""


HTTP_CONTEXT_FIX = ("shorten the prompts (a judge: judge.max_prompt_tokens, librarm score --max-prompt-tokens, which "
                    "holds http prompts to it when the served model is a local folder whose tokenizer counts them) "
                    "or serve the model with a longer context (vLLM's server: --max-model-len)")
MODELS_TIMEOUT_S = 15.0             # GET /models: connecting, headers and body together
MODELS_MAX_BYTES = 16 << 20         # a hosted API's model list with its metadata runs to a few MB


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


def get_model_list(base_url: str, api_key: str | None = None, timeout_s: float = MODELS_TIMEOUT_S) -> BoundedReply:
    """GET {base_url}/models under the model list's deadline and byte cap, the key (if any) sent as
    a bearer token and kept out of every message. Callers read the reply as they need: the CLI's
    reachability check field by field, a sampler's context_window for max_model_len."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return bounded_request("GET", base_url.rstrip("/") + "/models", timeout_s=min(timeout_s, MODELS_TIMEOUT_S),
                           max_bytes=MODELS_MAX_BYTES, headers=headers, secrets=(api_key,))


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
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
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

    def context_window(self) -> ContextWindow | None:
        """The served model's context: the `max_model_len` of its entry in GET /models (vLLM's
        server gives one; `transformers serve` and most APIs do not: None)."""
        try:
            reply = get_model_list(self.base_url, self.api_key, self.timeout_s)
            entries = json.loads(reply.body).get("data") if reply.status == 200 and not reply.over_cap else None
        except (ReplyError, ValueError, RecursionError, AttributeError):
            return None
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and entry.get("id") == self.model:
                tokens = entry.get("max_model_len")
                if is_positive_int(tokens):
                    return ContextWindow(tokens, f"max_model_len in {self.base_url}/models")
        return None

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
                    found = context_overflow(reply.body.decode("utf-8", errors="replace")) \
                        if 400 <= reply.status < 500 else None
                    if found is not None:
                        raise HTTPContextOverflowError(f"{self.url}: HTTP {reply.status}: "
                                                       f"{overflow_line(found, HTTP_CONTEXT_FIX)} (attempt {attempt}; "
                                                       "not retried)")
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


# ----------------------------------------------------------------------------- registry entry
def _make(spec, ref: ModelRef, cfg: SamplingConfig, threads: int | None, seed: int) -> HTTPSampler:
    if spec.api_key_env and not os.environ.get(spec.api_key_env):
        raise ValueError(f"{spec.where}.api_key_env: the environment variable {spec.api_key_env} is not set")
    return HTTPSampler(spec.base_url, ref.path, cfg, spec.api_key_env, spec.concurrency,
                       max_retries=spec.max_retries, timeout_s=spec.timeout_s, extra_body=spec.extra_body)


def _check(spec, where: str) -> list[str]:
    return [] if spec.base_url else [f"{where}.base_url: required for backend 'http'"]


BACKEND = Backend("http", _make, "an OpenAI-compatible server (vLLM, transformers serve, an API)",
                  fields=("base_url", "api_key_env", "concurrency", "max_retries", "timeout_s", "extra_body"),
                  check=_check)
