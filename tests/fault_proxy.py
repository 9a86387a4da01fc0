"""A fault-injecting HTTP proxy for tests: it sits between an HTTP client and a real server and,
by a schedule the test programs, breaks some of the POST requests it relays.

    proxy = FaultProxy("http://127.0.0.1:8000/v1").start()    # the client uses proxy.url
    proxy.inject("drop", Fault("429", retry_after="1"), "500")  # the next three POSTs, in arrival order
    proxy.down_after(4)                 # "server killed": after 4 more relayed POSTs, refuse connections
    proxy.up()                          # the server is back
    proxy.stop()

Faults (`Fault.kind`):
  drop       read the request, then close the socket without a reply (nothing is relayed)
  429        reply 429 with `Retry-After: <retry_after>` (nothing is relayed)
  500 / 503  reply with that status (nothing is relayed)
  slow       relay, then hold the reply back `delay` seconds (past the client's timeout) before sending it
  truncate   relay, then send a complete HTTP response whose JSON body is cut in half (Content-Length
             matches the cut body: the JSON does not parse)
  short      relay, then announce the full Content-Length but send half the body and close (the
             client's read ends early)
  refuse     (down_after / down only) stop listening: new connections are refused until `up()`

A scheduled fault applies to one POST each; GETs (e.g. /v1/models) are always relayed. Every POST
is logged on arrival: `proxy.log` holds {"n", "path", "fault", "status"} in arrival order (status:
the one sent, None for none). Plain stdlib
(http.server + threads); the proxy speaks HTTP/1.0, one request per connection.
"""
from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("drop", "429", "500", "503", "slow", "truncate", "short", "refuse")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade",
              "te", "trailer"}


@dataclass(frozen=True)
class Fault:
    kind: str
    retry_after: str | None = "1"     # 429 (and 503): the Retry-After header; None: no header
    delay: float = 5.0                 # slow: seconds the reply is held back

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r} (one of {', '.join(KINDS)})")


def as_fault(f: Fault | str) -> Fault:
    return f if isinstance(f, Fault) else Fault(f)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self._relay_and_reply(None, b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        proxy = self.server.proxy
        fault = proxy._next_fault(self.path)
        entry = proxy._record(self.path, fault)     # logged on arrival; the status once sent
        try:
            if fault is None:
                entry["status"] = self._relay_and_reply(None, body)
            elif fault.kind in ("drop", "refuse"):
                self._drop()
            elif fault.kind in ("429", "500", "503"):
                status = int(fault.kind)
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None and status != 500 else {}
                self._reply(status, b'{"error": {"message": "injected %d"}}' % status, headers)
                entry["status"] = status
            else:                                           # slow, truncate, short: relay first
                entry["status"] = self._relay_and_reply(fault, body)
        except (BrokenPipeError, ConnectionResetError):     # the client timed out and left
            pass

    # ------------------------------------------------------------------ helpers
    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _reply(self, status: int, data: bytes, headers: dict | None = None, length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _relay_and_reply(self, fault: Fault | None, body: bytes) -> int:
        up = self.server.proxy.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=600)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data, status, resp_headers = resp.read(), resp.status, dict(resp.getheaders())
        finally:
            conn.close()
        self.server.proxy._relayed(self.path, self.command)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "truncate":
            self._reply(status, data[: len(data) // 2], resp_headers)
        elif fault is not None and fault.kind == "short":
            self._reply(status, data[: len(data) // 2], resp_headers, length=len(data))
            self._drop()
        else:
            self._reply(status, data, resp_headers)
        return status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr, proxy: "FaultProxy"):
        self.proxy = proxy
        super().__init__(addr, _Handler)

    def handle_error(self, request, client_address):  # no tracebacks from clients that left
        pass


class FaultProxy:
    """The proxy in front of `upstream` (a base URL such as http://127.0.0.1:8000/v1); `url` is the
    same base URL through the proxy."""

    def __init__(self, upstream: str, host: str = "127.0.0.1"):
        self.upstream = urlsplit(upstream)
        self.host = host
        self.port: int | None = None
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.relayed = 0                        # POSTs relayed to the server (and answered by it)
        self._schedule: deque[Fault] = deque()
        self._down_at: int | None = None        # relayed count after which the proxy goes down
        self._down_with: Fault | None = None    # while down: refuse, or answer every POST with this fault
        self._down = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closing: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.upstream.path}"

    # ------------------------------------------------------------------ schedule
    def inject(self, *faults: Fault | str) -> "FaultProxy":
        """Break the next POSTs, one fault each, in arrival order."""
        with self.lock:
            self._schedule.extend(as_fault(f) for f in faults)
        return self

    def down_after(self, n: int, fault: Fault | str = "refuse") -> "FaultProxy":
        """After n more relayed POSTs the server is "killed": with "refuse" the proxy stops
        listening (connections already accepted are dropped); with another fault every POST gets
        that fault (e.g. Fault("503", retry_after="0"): a gateway whose server is gone). Until `up()`."""
        with self.lock:
            self._down_at, self._down_with = self.relayed + n, as_fault(fault)
        if n == 0:
            self._go_down()
        return self

    def up(self) -> "FaultProxy":
        """The server is back: relay again (listening again on the same port if it had stopped)."""
        with self.lock:
            self._down, self._down_at, self._down_with = False, None, None
            self._schedule.clear()
        if self._closing is not None:
            self._closing.join(timeout=10)
            self._closing = None
        if self._server is None:
            self._listen()
        return self

    def reset(self) -> "FaultProxy":
        """Up, with no faults scheduled and an empty log (between tests)."""
        self.up()
        with self.lock:
            self.log.clear()
            self.relayed = 0
        return self

    def faults_left(self) -> int:
        with self.lock:
            return len(self._schedule)

    def injected(self, kind: str | None = None) -> int:
        with self.lock:
            return sum(e["fault"] is not None and (kind is None or e["fault"] == kind) for e in self.log)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "FaultProxy":
        self._listen()
        return self

    def stop(self) -> None:
        if self._closing is not None:
            self._closing.join(timeout=10)
        self._close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _listen(self) -> None:
        self._server = _Server((self.host, self.port or 0), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ called by the handler
    def _next_fault(self, path: str) -> Fault | None:
        with self.lock:
            if self._down:
                return self._down_with
            return self._schedule.popleft() if self._schedule else None

    def _relayed(self, path: str, method: str) -> None:
        if method != "POST":
            return
        with self.lock:
            self.relayed += 1
            hit = self._down_at is not None and self.relayed >= self._down_at and not self._down
        if hit:
            self._go_down()

    def _go_down(self) -> None:
        with self.lock:
            self._down = True
            refuse = self._down_with is not None and self._down_with.kind == "refuse"
        if refuse:   # not in this (handler) thread: shutdown() waits for the serving loop
            self._closing = threading.Thread(target=self._close, daemon=True)
            self._closing.start()

    def _record(self, path: str, fault: Fault | None) -> dict:
        with self.lock:
            entry = {"n": len(self.log), "path": path, "fault": fault.kind if fault else None, "status": None}
            self.log.append(entry)
        return entry
