"""A hostile OpenAI-compatible server for tests (beside fault_proxy.py): every way a server can
misbehave that the http backend and `librarm score` must survive in one line, within their deadline
and with bounded memory (tests/test_hostile_http.py).

    python tests/hostile_server.py --port PORT        # 127.0.0.1 only; stopped by the test, by PID

The behaviour is chosen by the first path segment: a client with base URL
http://127.0.0.1:PORT/<case>/v1 gets case <case> from POST .../chat/completions and from
GET .../models. Chat completion cases (CHAT):

  ok              a valid completion ("The answer is 4.")
  parts           content as OpenAI content parts (valid: the texts joined)
  endless         200, then a body that never ends (close-delimited, full speed)
  endless-chunked the same with Transfer-Encoding: chunked
  trickle         200 and its headers at once, then one body byte every TRICKLE_S
  trickle-headers the status line and headers one byte every TRICKLE_S
  oversized       a valid completion of OVERSIZED_BYTES with its Content-Length
  oversized-close the same without Content-Length (close-delimited)
  content-list    content a list of integers
  content-int     content an integer
  reasoning-int   reasoning_content an integer
  deep            JSON nested past the parser's depth
  not-json        an HTML page with status 200
  echo400         400 whose body echoes the request line and headers (the Authorization header with
                  its key first) with ANSI escape codes
  ansi503         503 with ANSI and bidi control codes and a Retry-After that is no number

/models cases (MODELS): models-list (a JSON array), models-strs (`data: ["m"]`), models-notjson,
models-ansi (ids with ANSI codes), models-endless; every other case lists one model, `hostile`.

Bounded: at most MAX_REQUESTS requests (then it stops accepting), at most LIFETIME_S seconds in
all (then it exits), and every reply loop stops after STREAM_S seconds or STREAM_BYTES bytes, or
when the client leaves. Plain stdlib, one thread per connection, HTTP/1.0 replies.
"""
from __future__ import annotations

import argparse
import json
import os
import socketserver
import threading
import time

TRICKLE_S = 0.5                  # one byte every TRICKLE_S (a per-read timeout never fires)
OVERSIZED_BYTES = 100_000_000    # a "valid" completion of 100 MB
STREAM_S = 30.0                  # any one reply stops after this long
STREAM_BYTES = 8 << 30           # ... or this many bytes
MAX_REQUESTS = 1000
LIFETIME_S = 600.0
BODY_LIMIT = 1 << 20             # the most of a request body read

CHAT = ("ok", "parts", "endless", "endless-chunked", "trickle", "trickle-headers", "oversized", "oversized-close",
        "content-list", "content-int", "reasoning-int", "deep", "not-json", "echo400", "ansi503")
MODELS = ("models-list", "models-strs", "models-notjson", "models-ansi", "models-endless")
ANSI = "\x1b[2J\x1b[31mALERT\x1b[0m \u202eevil\u202c\x07"


def completion(message: dict) -> bytes:
    return json.dumps({"id": "cmpl-hostile", "object": "chat.completion", "model": "hostile",
                       "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 4}}).encode()


class Handler(socketserver.StreamRequestHandler):
    server: "Server"

    def handle(self) -> None:
        self.connection.settimeout(10)
        self.started = time.monotonic()
        if not self.server.count():
            return
        try:
            request_line = self.rfile.readline(8192).decode("latin-1")
            headers = []
            for _ in range(100):
                line = self.rfile.readline(8192).decode("latin-1")
                if line in ("\r\n", "\n", ""):
                    break
                headers.append(line.rstrip("\r\n"))
            length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
            if length:
                self.rfile.read(min(length, BODY_LIMIT))
            method, path = (request_line.split() + ["", ""])[:2]
            parts = path.strip("/").split("/")
            case = parts[0] if parts else ""
            if method == "GET" and path.endswith("/models"):
                self.models(case)
            elif method == "POST" and path.endswith("/chat/completions"):
                self.chat(case, request_line, headers)
            else:
                self.reply(404, b'{"error": "not found"}')
        except (OSError, ValueError):     # the client left (or sent nonsense): nothing to do
            pass

    # ------------------------------------------------------------------ replies
    def head(self, status: int, headers: dict[str, str]) -> bytes:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}[status]
        lines = [f"HTTP/1.0 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close",
                **(headers or {})}
        self.wfile.write(self.head(status, head) + body)

    def within(self, sent: int) -> bool:
        return time.monotonic() - self.started < STREAM_S and sent < STREAM_BYTES

    def stream(self, first: bytes, piece: bytes, chunked: bool = False) -> None:
        """`first`, then `piece` again and again, at full speed, until the client leaves or a bound."""
        head = {"Content-Type": "application/json", "Connection": "close"}
        if chunked:
            head["Transfer-Encoding"] = "chunked"
        self.wfile.write(self.head(200, head))
        sent = 0
        frame = (lambda b: b"%x\r\n%s\r\n" % (len(b), b)) if chunked else (lambda b: b)
        self.wfile.write(frame(first))
        while self.within(sent):
            self.wfile.write(frame(piece))
            sent += len(piece)

    def trickle(self, data: bytes) -> None:
        for i in range(len(data)):
            if not self.within(i):
                return
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(TRICKLE_S)

    def oversized(self, with_length: bool) -> None:
        start, end = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "', b'"}}]}'
        filler = b"a" * (1 << 20)
        n = (OVERSIZED_BYTES - len(start) - len(end)) // len(filler)
        head = {"Content-Type": "application/json", "Connection": "close"}
        if with_length:
            head["Content-Length"] = str(len(start) + n * len(filler) + len(end))
        self.wfile.write(self.head(200, head) + start)
        for i in range(n):
            if not self.within(i * len(filler)):
                return
            self.wfile.write(filler)
        self.wfile.write(end)

    def chat(self, case: str, request_line: str, headers: list[str]) -> None:
        if case == "ok":
            self.reply(200, completion({"content": "The answer is 4."}))
        elif case == "parts":
            self.reply(200, completion({"content": [{"type": "text", "text": "The answer "},
                                                    {"type": "text", "text": "is 4."}]}))
        elif case in ("endless", "endless-chunked"):
            self.stream(b'{"choices": [{"message": {"content": "', b"a" * 65536, chunked=case == "endless-chunked")
        elif case == "trickle":
            body = completion({"content": "x" * 1000})
            self.wfile.write(self.head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}))
            self.trickle(body)
        elif case == "trickle-headers":
            self.trickle(self.head(200, {"Content-Type": "application/json", "X-Slow": "y" * 1000}))
        elif case in ("oversized", "oversized-close"):
            self.oversized(with_length=case == "oversized")
        elif case == "content-list":
            self.reply(200, completion({"content": [1, 2, 3]}))
        elif case == "content-int":
            self.reply(200, completion({"content": 42}))
        elif case == "reasoning-int":
            self.reply(200, completion({"content": "The answer is 4.", "reasoning_content": 7}))
        elif case == "deep":
            self.reply(200, b"[" * 200_000 + b"]" * 200_000)
        elif case == "not-json":
            self.reply(200, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"})
        elif case == "echo400":
            # the credentials first, where an error cut at 200 characters would still show them
            echoed = sorted(headers, key=lambda h: not h.lower().startswith("authorization"))
            echo = "\n".join([ANSI, "your request:", request_line.strip(), *echoed])
            self.reply(400, echo.encode("utf-8"), {"Content-Type": "text/plain"})
        elif case == "ansi503":
            self.reply(503, f"overloaded {ANSI}\nline two".encode(), {"Retry-After": "\u00b2"})
        else:
            self.reply(404, f'{{"error": "unknown case {case}"}}'.encode())

    def models(self, case: str) -> None:
        if case == "models-list":
            self.reply(200, b'[{"id": "m"}]')
        elif case == "models-strs":
            self.reply(200, b'{"object": "list", "data": ["m"]}')
        elif case == "models-notjson":
            self.reply(200, b"<html>models live elsewhere</html>", {"Content-Type": "text/html"})
        elif case == "models-ansi":
            ids = [f"\x1b[31mevil-{i}\x1b[0m\u202e" for i in range(30)]
            self.reply(200, json.dumps({"object": "list", "data": [{"id": i} for i in ids]}).encode())
        elif case == "models-endless":
            self.stream(b'{"object": "list", "data": [', b'{"id": "m"}, ' * 5000)
        else:
            self.reply(200, b'{"object": "list", "data": [{"id": "hostile"}]}')


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), Handler)
        self.lock = threading.Lock()
        self.requests = 0

    def count(self) -> bool:
        """Count a request; False (and stop accepting) past MAX_REQUESTS."""
        with self.lock:
            self.requests += 1
            if self.requests <= MAX_REQUESTS:
                return True
        threading.Thread(target=self.shutdown, daemon=True).start()
        return False

    def handle_error(self, request, client_address):    # a client that left is no news
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--lifetime", type=float, default=LIFETIME_S)
    a = ap.parse_args()
    server = Server(a.port)
    timer = threading.Timer(a.lifetime, lambda: os._exit(0))    # never outlives a forgotten test
    timer.daemon = True
    timer.start()
    print(f"hostile server on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
