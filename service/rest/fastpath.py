"""The outermost ASGI app: every request goes through the one route table (`routes.py`), its
handler's answer is written here, and every request is counted, whoever answered it. The
server's connections call `answer` directly for the table's paths (`exchange.py`), and the
answer goes out in one write instead of ASGI's two messages.

FastAPI's per-request machinery (exit stacks, dependency solving, four middleware layers)
costs more than parsing, predicting and encoding a small tensor together (see `make bench`),
so no route the server answers runs through it: the FastAPI app behind this one serves only
the docs pages, and the 404s of paths not in the table.
"""

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlscale.service.errors import MethodNotAllowed, MLScaleError
from mlscale.service.metrics import Metrics
from mlscale.service.rest.answer import Answer, error_answer, error_body, response_headers
from mlscale.service.rest.rejections import RejectionLog
from mlscale.service.rest.routes import INFERENCE, Match, Router
from mlscale.service.runtime.dataplane import DataPlane

log = logging.getLogger("mlscale")

CLOSE_HEADER = (b"connection", b"close")
HEAD = ("HEAD", "GET")


def _closing(send: Send) -> Send:
    """`send`, with `Connection: close` on the response. While the server drains, every client
    still sending on a keep-alive connection is told to reconnect (to a pod that stays), so
    no idle connection is left for the shutdown to close under a request already on its way."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), CLOSE_HEADER]}
        await send(message)

    return closing


# (status, headers, body): writes a whole answer.
Respond = Callable[[int, list[tuple[bytes, bytes]], bytes], Awaitable[None]]


def _over_asgi(send: Send) -> Respond:
    async def respond(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return respond


class FastPath:
    def __init__(
        self,
        api: ASGIApp,
        plane: DataPlane,
        metrics: Metrics,
        router: Router,
        rejections: RejectionLog,
    ) -> None:
        self.api = api
        self.plane = plane
        self.metrics = metrics
        self.router = router
        self.rejections = rejections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan belongs to the FastAPI app
            await self.api(scope, receive, self._told(send))
            return
        found = self.router.match(scope["path"])
        if found is not None:
            await self.answer(found, scope, receive, _over_asgi(send))
            return
        start = perf_counter()
        if self.plane.draining:
            send = _closing(send)
        labels = await self._delegate(scope, receive, send)
        self.metrics.request(labels, perf_counter() - start)

    def route(self, path: str) -> Match | None:
        """The table's route for a path; None: the FastAPI app's (the docs pages, or 404)."""
        return self.router.match(path)

    async def answer(self, found: Match, scope: Scope, receive: Receive, respond: Respond) -> None:
        """Answer a request for a route of the table, and count it. `exchange.py` calls this
        for the connections uvicorn hands it, with a `respond` that writes the answer at once,
        without ASGI messages."""
        start = perf_counter()
        metrics = self.metrics
        # In flight: inference requests only, not the scrape reading the gauge or the probes.
        inference = found[1].tag == INFERENCE
        metrics.in_flight += inference
        try:
            labels = await self._answer(found, scope, receive, respond)
        finally:
            metrics.in_flight -= inference
        metrics.request(labels, perf_counter() - start)

    def _told(self, send: Send) -> Send:
        """`send`, without the startup traceback starlette sends uvicorn to log, when no model
        could be loaded: the data plane logged why, in a sentence."""

        async def told(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.plane.cannot_serve:
                message = {"type": message["type"], "message": ""}
            await send(message)

        return told

    async def _answer(
        self, found: Match, scope: Scope, receive: Receive, respond: Respond
    ) -> tuple[str, str, str, str]:
        template, route, name, version = found
        try:
            # HEAD is GET without the body, which uvicorn leaves out.
            if scope["method"] != route.method and (scope["method"], route.method) != HEAD:
                raise MethodNotAllowed(
                    f"{scope['method']} is not allowed here; send a {route.method}"
                )
            answer = await route.handler(scope, receive, name, version)
        except MLScaleError as exc:  # before a version was chosen: unknown model, 405, ...
            answer = error_answer(exc)
        except Exception:
            log.exception("unexpected error on %s", scope["path"])
            answer = Answer(500, error_body("internal server error"))
        headers = response_headers(answer)
        if answer.status == 405:
            headers.append((b"allow", route.method.encode()))
        if self.plane.draining:  # see _closing
            headers.append(CLOSE_HEADER)
        await respond(answer.status, headers, answer.body)
        if answer.error is not None:
            self.rejections(scope, answer.status, answer.error)
        return template, answer.answered[0], answer.answered[1], str(answer.status)

    async def _delegate(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[str, str, str, str]:
        """The docs pages, and 404 for paths not in the table."""
        status = "500"

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        await self.api(scope, receive, send_wrapper)
        if status == "404":
            self.rejections(scope, 404, "no such path")
        endpoint = "unmatched" if status == "404" else scope["path"]
        return endpoint, "", "", status
