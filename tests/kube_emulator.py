"""A small Kubernetes API server for tests: real HTTP, in memory, faithful where it counts.

What the rollout operator relies on, and this honours: resourceVersion on every object with
409 Conflict for an update from a stale version; metadata.generation bumped on spec changes;
label and field selectors on lists; watches from a resourceVersion, with 410 Gone for one
older than the retained history; strategic-merge (containers and env merged by name), merge
and JSON patches; the pods/proxy subresource (answered by a function the test supplies). Every
call is logged as (verb, resource, namespace) so a test can hold the calls against a Role.
"""

import copy
import itertools
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

KINDS = {
    "pods": ("v1", "Pod"),
    "configmaps": ("v1", "ConfigMap"),
    "services": ("v1", "Service"),
    "deployments": ("apps/v1", "Deployment"),
    "replicasets": ("apps/v1", "ReplicaSet"),
    "horizontalpodautoscalers": ("autoscaling/v2", "HorizontalPodAutoscaler"),
}
PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/namespaces/(?P<ns>[^/]+)/"
    r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+)(?P<rest>/.*)?)?)?$"
)
# Lists merged by key in a strategic-merge patch (the rest are replaced), as Kubernetes does.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
}
ProxyHandler = Callable[[dict, str], tuple[int, str] | None]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def strategic_merge(target: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = strategic_merge(out.get(k), v, k)
        return out
    if isinstance(patch, list) and isinstance(target, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        out = [copy.deepcopy(item) for item in target]
        for item in patch:
            match = next(
                (i for i, t in enumerate(out) if t.get(merge_key) == item.get(merge_key)), None
            )
            if item.get("$patch") == "delete":
                if match is not None:
                    out.pop(match)
            elif match is None:
                out.append(item)
            else:
                out[match] = strategic_merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def json_patch(target: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(target)
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")
        ]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if op["op"] == "test":
            current = node[int(last)] if isinstance(node, list) else node.get(last)
            if current != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
        elif op["op"] in ("add", "replace"):
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(index, op["value"])
                else:
                    node[index] = op["value"]
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            if isinstance(node, list):
                node.pop(int(last))
            else:
                node.pop(last)
        else:
            raise ApiError(422, "Invalid", f"unsupported op {op['op']}")
    return doc


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based and set-based (`in`) label selectors."""
    for term in filter(None, re.split(r",(?![^()]*\))", selector)):
        term = term.strip()
        if m := re.fullmatch(r"(\S+)\s+in\s+\((.*)\)", term):
            if labels.get(m[1]) not in [v.strip() for v in m[2].split(",")]:
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class Emulator:
    def __init__(self, history: int = 1000) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, type, plural, object)
        self.compacted = 0  # events up to this revision are gone: older watches get 410
        self.history = history
        self.calls: list[tuple[str, str, str]] = []  # (verb, resource[/sub], namespace)
        self.conflicts_to_inject = 0  # fail this many next updates with 409, as a racer would
        self.watches_to_drop = 0  # cut this many next watch streams mid-way, as a flaky LB would
        self.proxy: ProxyHandler = lambda pod, path: None
        self._rv = itertools.count(1)
        self._cond = threading.Condition()

    # --- the store, also used directly by the simulated controllers ----------------------

    def get(self, plural: str, ns: str, name: str) -> dict | None:
        with self._cond:
            obj = self.objects.get((plural, ns, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, plural: str, ns: str, selector: str = "") -> list[dict]:
        with self._cond:
            return [
                copy.deepcopy(o)
                for (p, n, _), o in sorted(self.objects.items())
                if p == plural and n == ns and selects(selector, o["metadata"].get("labels", {}))
            ]

    def put(self, plural: str, ns: str, obj: dict, event: str | None = None) -> dict:
        """Store an object, whatever is there."""
        with self._cond:
            key = (plural, ns, obj["metadata"]["name"])
            return self._store(key, self.objects.get(key), obj, event)

    def update(self, plural: str, ns: str, obj: dict) -> dict | None:
        """An update as the API server does one: only onto the resourceVersion it was read
        at; None where the object changed or was deleted since (the writer reads again)."""
        with self._cond:
            key = (plural, ns, obj["metadata"]["name"])
            old = self.objects.get(key)
            if old is None or old["metadata"]["resourceVersion"] != obj["metadata"].get(
                "resourceVersion"
            ):
                return None
            return self._store(key, old, obj, None)

    def _store(
        self, key: tuple[str, str, str], old: dict | None, obj: dict, event: str | None
    ) -> dict:
        """Called under the lock: a new resourceVersion, generation bumped on a spec change."""
        plural, ns, _ = key
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        api_version, kind = KINDS[plural]
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta["namespace"] = ns
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["generation"] = old["metadata"].get("generation", 1) + (
                obj.get("spec") != old.get("spec")
            )
        rv = next(self._rv)
        meta["resourceVersion"] = str(rv)
        self.objects[key] = obj
        self._record(rv, event or ("MODIFIED" if old else "ADDED"), plural, obj)
        return copy.deepcopy(obj)

    def delete(self, plural: str, ns: str, name: str) -> dict | None:
        with self._cond:
            obj = self.objects.pop((plural, ns, name), None)
            if obj is not None:
                rv = next(self._rv)
                obj["metadata"]["resourceVersion"] = str(rv)
                self._record(rv, "DELETED", plural, obj)
            return obj

    def _record(self, rv: int, kind: str, plural: str, obj: dict) -> None:
        self.events.append((rv, kind, plural, copy.deepcopy(obj)))
        if len(self.events) > self.history:
            dropped = self.events[: len(self.events) - self.history]
            self.compacted = dropped[-1][0]
            del self.events[: len(dropped)]
        self._cond.notify_all()

    def expire_history(self) -> None:
        """Compact every revision so far, as etcd does: a watch from any of them gets 410."""
        with self._cond:
            self.compacted = next(self._rv)
            self.events.clear()

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(max((e[0] for e in self.events), default=self.compacted))

    # --- HTTP ------------------------------------------------------------------------------

    @contextmanager
    def serve(self) -> Iterator[str]:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                emulator._handle(self, "GET")

            def do_POST(self) -> None:
                emulator._handle(self, "POST")

            def do_PUT(self) -> None:
                emulator._handle(self, "PUT")

            def do_PATCH(self) -> None:
                emulator._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                emulator._handle(self, "DELETE")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()

    def _handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(http.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(http.headers.get("Content-Length") or 0)
        body = json.loads(http.rfile.read(length)) if length else None
        try:
            match = PATH.match(url.path)
            if match is None or match["plural"] not in KINDS:
                raise ApiError(404, "NotFound", f"no route for {url.path}")
            plural, ns, name, sub = match["plural"], match["ns"], match["name"], match["sub"]
            if sub == "proxy":
                self.calls.append(("get", f"{plural}/proxy", ns))
                return self._proxy(http, ns, name, unquote(match["rest"] or "/"), url.query)
            if method == "GET" and name is None and query.get("watch") in ("true", "1"):
                self.calls.append(("watch", plural, ns))
                return self._watch(http, plural, ns, query)
            verb, status, payload = self._rest(
                method, plural, ns, name, query, body, http.headers.get("Content-Type", "")
            )
            self.calls.append((verb, plural, ns))
        except ApiError as err:
            status, payload = err.code, err.status()
        self._send(http, status, payload)

    def _rest(
        self,
        method: str,
        plural: str,
        ns: str,
        name: str | None,
        query: dict,
        body: Any,
        content_type: str,
    ) -> tuple[str, int, Any]:
        api_version, kind = KINDS[plural]
        if method == "GET" and name is None:
            items = self.list(plural, ns, query.get("labelSelector", ""))
            if field := query.get("fieldSelector"):
                wanted = field.removeprefix("metadata.name=")
                items = [i for i in items if i["metadata"]["name"] == wanted]
            return (
                "list",
                200,
                {
                    "kind": f"{kind}List",
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": self.resource_version},
                    "items": items,
                },
            )
        if method == "POST" and name is None:
            if self.get(plural, ns, body["metadata"]["name"]):
                raise ApiError(409, "AlreadyExists", f"{plural} {body['metadata']['name']} exists")
            return "create", 201, self.put(plural, ns, body)
        current = self.get(plural, ns, name or "")
        if current is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        if method == "GET":
            return "get", 200, current
        if method == "DELETE":
            return "delete", 200, self.delete(plural, ns, name or "")
        if self.conflicts_to_inject:
            self.conflicts_to_inject -= 1
            raise ApiError(
                409,
                "Conflict",
                "the object has been modified; please apply your "
                "changes to the latest version and try again",
            )
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    "the object has been modified; please apply "
                    "your changes to the latest version and try again",
                )
            return "update", 200, self.put(plural, ns, body)
        if "json-patch" in content_type:
            patched = json_patch(current, body)
        elif "strategic-merge-patch" in content_type:
            patched = strategic_merge(current, body)
        else:
            patched = merge_patch(current, body)
        wanted_rv = (
            (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        )
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        return "patch", 200, self.put(plural, ns, patched)

    def _proxy(
        self, http: BaseHTTPRequestHandler, ns: str, name: str, path: str, query: str
    ) -> None:
        name = unquote(name).split(":")[0]  # pods/NAME:PORT/proxy
        pod = self.get("pods", ns, name)
        answer = self.proxy(pod, path + (f"?{query}" if query else "")) if pod else None
        if answer is None:
            err = ApiError(503, "ServiceUnavailable", f"pod {name} did not answer {path}")
            return self._send(http, 503, err.status())
        status, text = answer
        data = text.encode()
        http.send_response(status)
        http.send_header(
            "Content-Type", "application/json" if text.startswith("{") else "text/plain"
        )
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    def _watch(self, http: BaseHTTPRequestHandler, plural: str, ns: str, query: dict) -> None:
        since = int(query.get("resourceVersion") or self.resource_version)
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
        selector = query.get("labelSelector", "")
        name = (query.get("fieldSelector") or "").removeprefix("metadata.name=")
        http.send_response(200)
        http.send_header("Content-Type", "application/json")
        http.send_header("Transfer-Encoding", "chunked")
        http.end_headers()

        def chunk(payload: dict) -> None:
            data = json.dumps(payload).encode() + b"\n"
            http.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            http.wfile.flush()

        if self.watches_to_drop:
            self.watches_to_drop -= 1
            http.wfile.write(b'40\r\n{"type": "MODIFIED", "object": ')  # a torn chunk
            http.wfile.flush()
            http.close_connection = True
            http.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            with self._cond:
                if since < self.compacted:
                    gone = ApiError(
                        410, "Expired", f"too old resource version: {since} ({self.compacted})"
                    )
                    chunk({"type": "ERROR", "object": gone.status()})
                    return
            if query.get("allowWatchBookmarks") == "true":
                # As a real API server does now and then: a progress marker, not an object
                # (the client hands it over as a plain dict).
                chunk({"type": "BOOKMARK", "object": {"kind": "Deployment", "apiVersion": "apps/v1",
                       "metadata": {"resourceVersion": str(since)}}})  # fmt: skip
            while time.monotonic() < deadline:
                with self._cond:
                    fresh = [
                        e
                        for e in self.events
                        if e[0] > since and e[2] == plural and e[3]["metadata"]["namespace"] == ns
                    ]
                    if not fresh:
                        self._cond.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                        continue
                for rv, kind, _, obj in fresh:
                    since = rv
                    labels = obj["metadata"].get("labels", {})
                    if selects(selector, labels) and (not name or obj["metadata"]["name"] == name):
                        chunk({"type": kind, "object": obj})
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            with suppress(OSError):
                http.wfile.write(b"0\r\n\r\n")

    @staticmethod
    def _send(http: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        http.send_response(status)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)
