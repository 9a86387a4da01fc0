"""A hostile OpenAI-compatible server cannot take the machine down (tests/hostile_server.py, on a
free loopback port, stopped by PID).

Each hostile chat completion reply (a body that never ends, plain or chunked; one byte every
0.5 s, in the body or in the headers; a valid 100 MB completion for max_tokens=160, with and
without Content-Length; content or reasoning of the wrong type; JSON nested past the parser's
depth; HTML; a 400 echoing the request headers with the API key; ANSI and bidi codes in a 503) is
requested by HTTPSampler in a fresh Python process, which reports how long the request took and
its peak RSS growth over its level after the imports. Each ends in one line (HTTPError, nothing
else, no traceback) that names the URL, within (max_retries + 1) * timeout_s + 5 s (timeout_s + 5 s
where max_retries is 0) and with less than 500 MB of RSS growth; no key and no raw control
character reaches the line. Valid content parts are joined.

`librarm score` against hostile /models replies (a JSON array, `data: ["m"]`, HTML, ids with ANSI
codes, a list that never ends) exits 2 with one `error:` line naming the URL; and `librarm`'s
main turns OSError, RecursionError, UnicodeError and MemoryError into one line (exit 2), while
--debug keeps the traceback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, serve_on_loopback, stop_group
from test_serving import _bench, librarm

from librarm import cli
from librarm.engines.http import server_text

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 2.0                 # each request's deadline in these tests
MAX_TOKENS = 160                # the reply cap: 160 * 64 bytes + 1 MiB
KEY = "sk-hostile-SECRET-0123456789"
RSS_LIMIT = 500 << 20


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The hostile server's root URL (a case's base URL is ROOT/<case>/v1)."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    proc = serve_on_loopback([sys.executable, str(HERE / "hostile_server.py"), "--port", str(port), "--lifetime", "300"],
                             f"{root}/ok/v1/models", tmp_path_factory.mktemp("hostile") / "hostile-server.log",
                             "hostile server", 30)
    try:
        yield root
    finally:
        stop_group(proc)


def loopback_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "LIBRARM_TRACKING": "0", "LIBRARM_HOSTILE_KEY": KEY}


# A fresh Python: imports, then the peak RSS starts again from the current level (clear_refs 5),
# one sample is requested, and the time, the outcome and the peak growth are printed as JSON.
CHILD = r"""
import json, sys, time
import http.client, requests, urllib3
from librarm.engines.base import SampleRequest, SamplingConfig
from librarm.engines.http import HTTPError, HTTPSampler

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

a = json.loads(sys.argv[1])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status("VmRSS")
s = HTTPSampler(a["url"], "hostile", SamplingConfig(max_new_tokens=a["max_tokens"], temperature=1.0, top_p=1.0, batch_size=64), api_key_env="LIBRARM_HOSTILE_KEY",
                concurrency=1, max_retries=a["max_retries"], backoff_s=0.05, timeout_s=a["timeout_s"])
t0 = time.monotonic()
try:
    out = {"text": s.generate([SampleRequest([{"role": "user", "content": "Compute 2+2."}], seed=1)])[0].text}
except HTTPError as exc:
    out = {"error": str(exc)}
out.update(seconds=time.monotonic() - t0, growth=status("VmHWM") - base, retries=s.retries)
print(json.dumps(out))
"""


def request_in_child(url: str, max_retries: int) -> dict:
    args = {"url": url, "max_tokens": MAX_TOKENS, "max_retries": max_retries, "timeout_s": TIMEOUT_S}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                         env=loopback_env(), timeout=60)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


CAP = "HTTP 200 with a reply over 1058816 bytes (the cap for max_tokens=160; not read further)"
LATE = "no complete reply within timeout_s=2 s"
# case: (max_retries, what the one line says after "URL: ")
HOSTILE = {
    "endless": (1, f"gave up after 2 attempts; last error: {CAP}"),
    "endless-chunked": (1, f"gave up after 2 attempts; last error: {CAP}"),
    "trickle": (1, f"gave up after 2 attempts; last error: {LATE}"),
    "trickle-headers": (0, f"gave up after 1 attempts; last error: {LATE}"),
    "oversized": (1, f"gave up after 2 attempts; last error: {CAP}"),
    "oversized-close": (1, f"gave up after 2 attempts; last error: {CAP}"),
    "content-list": (1, "gave up after 2 attempts; last error: HTTP 200 but not a chat completion: "
                        "choices[0].message.content[0] is an integer, not a text part"),
    "content-int": (1, "gave up after 2 attempts; last error: HTTP 200 but not a chat completion: "
                       "choices[0].message.content is an integer, not a string or an array of text parts"),
    "reasoning-int": (1, "gave up after 2 attempts; last error: HTTP 200 but not a chat completion: "
                         "choices[0].message.reasoning_content is an integer, not a string or an array of text parts"),
    "deep": (1, "gave up after 2 attempts; last error: HTTP 200 but not a chat completion: the body is not JSON "
                "(400000 bytes, nested too deeply): [[[["),
    "not-json": (1, "gave up after 2 attempts; last error: HTTP 200 but not a chat completion: the body is not JSON "
                    "(41 bytes, Expecting value: line 1 column 1 (char 0)): <html><body>502 Bad Gateway</body></html>"),
    "echo400": (1, "HTTP 400: \\x1b[2J\\x1b[31mALERT\\x1b[0m \\u202eevil\\u202c\\x07 your request: POST "
                   "/echo400/v1/chat/completions HTTP/1.1 Authorization: [redacted] "),
    "ansi503": (1, "gave up after 2 attempts; last error: HTTP 503: overloaded \\x1b[2J\\x1b[31mALERT\\x1b[0m "
                   "\\u202eevil\\u202c\\x07 line two"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_each_hostile_reply_is_one_line_within_the_deadline_and_bounded_memory(hostile, case):
    max_retries, says = HOSTILE[case]
    url = f"{hostile}/{case}/v1"
    out = request_in_child(url, max_retries)
    print(f"{case}: {out['seconds']:.2f} s, peak RSS growth {out['growth'] / 2**20:.1f} MiB")
    msg = out.get("error")
    assert msg is not None, out
    assert msg.startswith(f"{url}/chat/completions: {says}"), msg
    assert "\n" not in msg and "\r" not in msg and msg.isprintable(), msg
    assert KEY not in msg and "SECRET" not in msg
    assert len(msg) < 700
    assert out["seconds"] < (max_retries + 1) * TIMEOUT_S + 5, out
    assert out["growth"] < RSS_LIMIT, out
    if case == "echo400":
        assert msg.endswith("... (attempt 1; not retried)") and out["retries"] == 0   # a 400 is not retried
    else:
        assert out["retries"] == max_retries                # transient or malformed: retried
    if case.startswith("trickle"):
        assert out["seconds"] >= (max_retries + 1) * TIMEOUT_S - 0.5     # ended by the deadline, not earlier


@pytest.mark.timeout(60)
def test_content_parts_are_joined_and_a_valid_reply_stays_valid(hostile):
    for case in ("parts", "ok"):
        out = request_in_child(f"{hostile}/{case}/v1", 0)
        assert out.get("text") == "The answer is 4.", out


# ----------------------------------------------------------------------------- librarm score: /models
MODELS = {
    "models-list": "is not an OpenAI model list (the body is an array, not an object with 'data')",
    "models-strs": "is not an OpenAI model list (data[0] is a string, not an object with a string 'id')",
    "models-notjson": "is not an OpenAI model list (HTTP 200 but not JSON: Expecting value: line 1 column 1 (char 0); "
                      "34 bytes: <html>models live elsewhere</html>)",
    "models-endless": f"is not an OpenAI model list (a reply over {cli.MODELS_MAX_BYTES} bytes)",
}


@pytest.mark.timeout(120)
def test_hostile_model_lists_are_one_line_naming_the_url(hostile, tmp_path):
    bench = str(_bench(tmp_path / "b.jsonl"))

    def score(case: str) -> str:
        res = librarm("score", "--bench", bench, "--judge", "mine", "--backend", "http", "--base-url",
                      f"{hostile}/{case}/v1", "--model", "m", "--api-key-env", "LIBRARM_HOSTILE_KEY",
                      "--out", str(tmp_path / case), env=loopback_env())
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
        assert "\x1b" not in res.stderr and KEY not in res.stderr
        return lines[0]

    for case, says in MODELS.items():
        base = f"{hostile}/{case}/v1"
        assert f"error: --base-url {base}: {base}/models {says}  (librarm --debug" in score(case)
    line = score("models-ansi")
    assert (f"error: --model m: not served at {hostile}/models-ansi/v1 (it serves: \\x1b[31mevil-0\\x1b[0m\\u202e, "
            "\\x1b[31mevil-1\\x1b[0m\\u202e, ") in line
    assert "\\x1b[31mevil-19\\x1b[0m\\u202e and 10 more)" in line


# ----------------------------------------------------------------------------- main: one line per bad input
@pytest.mark.parametrize("exc, says", [
    (OSError(28, "No space left on device"), "error: OSError: [Errno 28] No space left on device  (librarm --debug"),
    (IsADirectoryError(21, "Is a directory", "b.jsonl"), "error: IsADirectoryError: [Errno 21] Is a directory: 'b.jsonl'"),
    (RecursionError("maximum recursion depth exceeded while decoding a JSON array"),
     "error: RecursionError: maximum recursion depth exceeded while decoding a JSON array (an input too large or "
     "nested too deeply)"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
     "error: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    (MemoryError(), "error: MemoryError (an input too large or nested too deeply)"),
])
def test_main_turns_reader_errors_into_one_line(exc, says, monkeypatch, capsys):
    def fails(a):
        raise exc

    monkeypatch.setattr(cli, "cmd_validate", fails)
    monkeypatch.delenv("LIBRARM_DEBUG", raising=False)
    assert cli.main(["validate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(says) and err.count("\n") == 1 and "Traceback" not in err, err
    with pytest.raises(type(exc)):
        cli.main(["--debug", "validate"])


def test_server_text_redacts_keys_and_escapes_control_codes():
    assert server_text('{"headers": {"authorization": "Bearer abc.def", "x-api-key": "zz9"}}') == \
        '{"headers": {"authorization": "[redacted]", "x-api-key": "[redacted]"}}'
    assert server_text("Authorization: Bearer sk-abcdefgh12345678\r\nHost: h") == "Authorization: [redacted] Host: h"
    assert server_text("echo hunter2hunter2 here", secrets=["hunter2hunter2"]) == "echo [redacted] here"
    assert server_text("key AbCdEfGh0123456789AbCdEfGh0123456789 end") == "key [redacted] end"
    assert server_text("\x1b[31mred\x1b[0m\x00\u202e") == "\\x1b[31mred\\x1b[0m\\x00\\u202e"
    assert server_text("a" * 300) == "a" * 200 + "..."
    # what is not a key stays: model names, request ids, token counts
    text = "model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B: id chatcmpl-8f3a9c2b7d6e4f1a0b9c8d7e6f5a; max_tokens: 160"
    assert server_text(text) == text
