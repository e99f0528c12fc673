"""The operator's way to the real API server in its tests: a small proxy, plain HTTP in, the API
server's HTTPS out, as the operator's own service account (so RBAC judges every call against
the Role in k8s/rollout-rbac.yaml).

It records each call it forwards as (verb, resource, namespace): in `calls` those the server
let through, in `refused` those it refused with 401/403. It injects, when a test asks,
the failures a busy server and a real network produce; the server itself is never faked:
- `conflicts_to_inject`: the next N writes to a Deployment get 409 Conflict;
- `watches_to_drop`: the next N watch streams are cut mid-stream;
- `watches_to_stall`: the next N watch streams go silent, the connection left open (half-open);
- `expire()`: watches get 410 Gone ("too old resource version", as after etcd compaction)
  until the next list, the way a real server answers a watch from a compacted revision;
- `fail(status, match, times)`: the next `times` calls whose path contains `match` get `status`
  (429, 503...), or with status None have their connection reset without an answer.
"""

import http.client
import json
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATH = re.compile(
    r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "authorization",
              "content-length", "proxy-connection"}  # fmt: skip
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def call_of(method: str, url: str) -> tuple[str, str, str]:
    """(verb, resource, namespace) as RBAC sees the request."""
    parts = urlsplit(url)
    match = PATH.match(parts.path)
    if not match:
        return method.lower(), parts.path, ""
    resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
    if method == "GET":
        query = parse_qs(parts.query)
        verb = ("get" if match["name"] else
                "watch" if query.get("watch", [""])[0] in ("1", "true") else "list")  # fmt: skip
    else:
        verb = VERBS.get(method, method.lower())
    return verb, resource, match["ns"] or ""


@dataclass
class Failure:
    """Answer the next `times` calls whose path contains `match` with `code` (None: reset)."""

    code: int | None
    match: str
    times: int


class FaultProxy:
    def __init__(self, upstream: str, token: str, ca: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "", parts.port or 443
        self.token = token
        self.context = ssl.create_default_context(cafile=ca)
        self.calls: list[tuple[str, str, str]] = []
        self.refused: list[tuple[str, str, str]] = []
        self.conflicts_to_inject = 0
        self.watches_to_drop = 0
        self.watches_to_stall = 0
        self.closed = threading.Event()
        self.expired = False
        self.failures: list[Failure] = []
        self.lock = threading.Lock()

    def expire(self) -> None:
        self.expired = True

    def fail(self, code: int | None, match: str, times: int = 1) -> None:
        with self.lock:
            self.failures.append(Failure(code, match, times))

    def injected(self, url: str, verb: str, resource: str) -> tuple[int | None, dict] | None:
        """The failure to answer this call with, if the test asked for one."""
        with self.lock:
            for failure in self.failures:
                if failure.match in url and failure.times:
                    failure.times -= 1
                    code = failure.code
                    return code, status(code or 0, "Injected", f"injected {code}")
            if (
                self.conflicts_to_inject
                and resource == "deployments"
                and verb in ("patch", "update")
            ):
                self.conflicts_to_inject -= 1
                return 409, status(
                    409,
                    "Conflict",
                    "the object has been modified; please "
                    "apply your changes to the latest version and try again",
                )
        return None

    @contextmanager
    def serve(self) -> Iterator[str]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            self.closed.set()
            server.shutdown()
            server.server_close()

    def forward(self, req: BaseHTTPRequestHandler) -> None:
        verb, resource, ns = call_of(req.command, req.path)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else None
        injected = self.injected(req.path, verb, resource)
        if injected:
            code, payload = injected
            if code is None:  # reset: no answer at all
                req.close_connection = True
            else:
                self._send(req, code, payload)
            return
        if verb == "list":  # a fresh list: its resourceVersion is current again
            self.expired = False
        elif verb == "watch" and self.expired:
            self._stream_start(req)
            error = status(410, "Expired", "too old resource version")
            self._chunk(req, json.dumps({"type": "ERROR", "object": error}).encode() + b"\n")
            self._chunk(req, b"")
            return
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Authorization"] = f"Bearer {self.token}"
        upstream = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                               timeout=120)  # fmt: skip
        try:
            upstream.request(req.command, req.path, body=body, headers=headers)
            response = upstream.getresponse()
            with self.lock:
                (self.refused if response.status in (401, 403) else self.calls).append(
                    (verb, resource, ns)
                )
            if verb == "watch" and response.status == 200:
                self._relay_stream(req, response)
            else:
                self._send_raw(req, response.status, response.getheader("Content-Type", ""),
                               response.read())  # fmt: skip
        except OSError:
            req.close_connection = True
        finally:
            upstream.close()

    def _relay_stream(self, req: BaseHTTPRequestHandler, response: http.client.HTTPResponse
                      ) -> None:  # fmt: skip
        self._stream_start(req)
        with self.lock:
            drop, stall = self.watches_to_drop > 0, self.watches_to_stall > 0
            self.watches_to_drop -= drop
            self.watches_to_stall -= stall
        if drop:  # the network fails mid-stream: no last chunk, the connection just ends
            req.close_connection = True
            return
        if stall:  # the peer is gone without a word: nothing arrives, nothing closes
            self.closed.wait(60)
            req.close_connection = True
            return
        while line := response.readline():
            self._chunk(req, line)
        self._chunk(req, b"")

    @staticmethod
    def _stream_start(req: BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Transfer-Encoding", "chunked")
        req.end_headers()

    @staticmethod
    def _chunk(req: BaseHTTPRequestHandler, data: bytes) -> None:
        req.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        req.wfile.flush()

    def _send(self, req: BaseHTTPRequestHandler, code: int, payload: dict) -> None:
        self._send_raw(req, code, "application/json", json.dumps(payload).encode())

    @staticmethod
    def _send_raw(req: BaseHTTPRequestHandler, code: int, content_type: str, data: bytes
                  ) -> None:  # fmt: skip
        req.send_response(code)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
