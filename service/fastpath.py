"""The outermost ASGI app: request metrics, plus the hot routes served without a framework.

FastAPI's per-request machinery (exit stacks, dependency solving, four middleware layers)
costs more here than parsing, predicting and encoding a small tensor together (see
`make bench`). So the routes that carry the load — infer (both paths) and the two health
probes — are answered directly at the ASGI level, and everything else goes to the FastAPI app.
Each route has exactly one implementation: here, or in `app.py`.
"""

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlscale.service import binary, openapi, protocol
from mlscale.service.answer import (
    ANSWERED,
    NOBODY,
    Answer,
    error_answer,
    error_body,
    response_headers,
)
from mlscale.service.contract import INFER, INFER_VERSION, LIVE, READY
from mlscale.service.dataplane import DataPlane
from mlscale.service.errors import (
    MethodNotAllowed,
    MLScaleError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from mlscale.service.metrics import Metrics

log = logging.getLogger("mlscale")

CLOSE_HEADER = (b"connection", b"close")


def _media(content_type: bytes) -> bytes:
    return content_type.split(b";")[0].strip().lower()


def _is_json(content_type: bytes) -> bool:
    media = _media(content_type)
    return media == b"application/json" or media.endswith(b"+json")


def _is_binary(content_type: bytes) -> bool:
    return _media(content_type) == b"application/octet-stream"


async def read_body(scope: Scope, receive: Receive, limit: int, binary_data: bool = False) -> bytes:
    """The request body, refusing non-JSON media types and bodies over `limit` bytes. A body
    sent without a content type is taken to be JSON; with `binary_data` (the binary tensor
    extension), application/octet-stream is accepted too."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            if not _is_json(value) and not (binary_data and _is_binary(value)):
                raise UnsupportedMediaType("send the body as application/json")
        elif key == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"body of {int(value)} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _closing(send: Send) -> Send:
    """`send`, with `Connection: close` on the response. While the server drains, every client
    still sending on a keep-alive connection is told to reconnect (to a pod that stays), so
    no idle connection is left for the shutdown to close under a request already on its way."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), CLOSE_HEADER]}
        await send(message)

    return closing


def route_docs() -> dict[str, Any]:
    """OpenAPI paths of the routes `fastpath.py` answers (FastAPI never sees them)."""
    infer_errors = [400, 404, 413, 415, 500, 503]
    infer = openapi.operation(
        "Infer", "inference", protocol.InferenceResponse, infer_errors, protocol.InferenceRequest
    )
    return {
        LIVE: {"get": openapi.operation("Server live", "health", protocol.LiveResponse, [], None)},
        READY: {
            "get": openapi.operation("Server ready", "health", protocol.ReadyResponse, [503], None)
        },
        INFER: {"post": {**infer, "parameters": openapi.name_params("name")}},
        INFER_VERSION: {
            "post": {
                **infer,
                "summary": "Infer with a version",
                "parameters": openapi.name_params("name", "version"),
            }
        },
    }


class FastPath:
    def __init__(self, api: ASGIApp, plane: DataPlane, metrics: Metrics, limit: int) -> None:
        self.api = api
        self.plane = plane
        self.metrics = metrics
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # lifespan belongs to the FastAPI app
            return
        start = perf_counter()
        if self.plane.draining:
            send = _closing(send)
        metrics = self.metrics
        metrics.in_flight += 1
        endpoint, handler = self._route(scope["method"], scope["path"])
        labels: tuple[str, str, str, str]
        try:
            if handler is None:
                labels = await self._delegate(scope, receive, send)
            else:
                labels = await self._answer(endpoint, handler, scope, receive, send)
        finally:
            metrics.in_flight -= 1
        metrics.request(labels, perf_counter() - start)

    def _route(
        self, method: str, path: str
    ) -> tuple[str, Callable[[Scope, Receive], Awaitable[Answer]] | None]:
        if method == "GET":
            if path == LIVE:
                return LIVE, self._live
            if path == READY:
                return READY, self._ready
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path.split("/")  # ['', 'v2', 'models', name, ('versions', v,)? 'infer']
            handler = self._infer if method == "POST" else self._not_post
            if len(parts) == 5 and parts[3]:
                return INFER, handler
            if len(parts) == 7 and parts[3] and parts[4] == "versions" and parts[5]:
                return INFER_VERSION, handler
        return "", None

    async def _answer(
        self,
        endpoint: str,
        handler: Callable[[Scope, Receive], Awaitable[Answer]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> tuple[str, str, str, str]:
        try:
            answer = await handler(scope, receive)
        except MLScaleError as exc:  # before a version was chosen: unknown model, 405, ...
            answer = error_answer(exc)
        except Exception:
            log.exception("unexpected error on %s", scope["path"])
            answer = Answer(500, error_body("internal server error"))
        headers = response_headers(answer)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        return endpoint, answer.answered[0], answer.answered[1], str(answer.status)

    async def _delegate(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[str, str, str, str]:
        status = "500"

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        await self.api(scope, receive, send_wrapper)
        model, version = scope.get(ANSWERED, NOBODY)  # left there by `app.respond`
        route = scope.get("route")
        if route is not None:
            endpoint = route.path
        else:  # FastAPI's own pages (docs, openapi.json) set no route; unknown paths get 404
            endpoint = "unmatched" if status == "404" else scope["path"]
        return endpoint, model, version, status

    async def _not_post(self, scope: Scope, receive: Receive) -> Answer:
        raise MethodNotAllowed(f"{scope['method']} is not allowed here; send a POST")

    async def _live(self, scope: Scope, receive: Receive) -> Answer:
        return Answer(200, b'{"live":true}')

    async def _ready(self, scope: Scope, receive: Receive) -> Answer:
        if self.plane.ready:
            return Answer(200, b'{"ready":true}')
        return Answer(503, b'{"ready":false}')

    async def _infer(self, scope: Scope, receive: Receive) -> Answer:
        parts = scope["path"].split("/")
        model = self.plane.model(parts[3], parts[5] if len(parts) == 7 else None)
        try:
            json_length = binary.json_length(scope["headers"])
            body = await read_body(scope, receive, self.limit, json_length is not None)
            request = protocol.decode_infer_request(body, model.manifest, json_length)
            outputs = await self.plane.infer(model, request.x, request.outputs)
        except MLScaleError as exc:
            return error_answer(exc, model.identity)
        if request.binary:
            body, length = protocol.encode_binary_response(
                model.manifest, outputs, request.outputs, request.id, request.binary
            )
            return Answer(200, body, model.identity, length)
        body = protocol.encode_infer_response(model.manifest, outputs, request.outputs, request.id)
        return Answer(200, body, model.identity)
