"""The route table's requests, answered on their connection without uvicorn's ASGI cycle.

For every request uvicorn builds a `RequestResponseCycle` (about 3 µs here, timed alone),
creates and runs an asyncio Task to call the app in (2.4 µs), and checks every response
header against two regular expressions: together more than the app spends answering a
single-row inference. For the paths of the table (`routes.py`), `ExchangeProtocol` builds a
small `Exchange` instead and runs `FastPath.answer` as soon as the request's body is in; the
answer is written in one piece, not as ASGI's two messages. An answer that waits for nothing
(the probes, a model's exact formula) is written before the read that brought the request
returns. One that has to wait (for its batch, or the rest of its body) is run on from where it
stopped by what it waits on, once that is done: no task either. So the request path runs
outside any asyncio task, and must not need one (`asyncio.timeout`, `current_task`); the
batcher, which does, runs in its own. Every other request (the docs pages, 404s, upgrades)
goes through uvicorn's cycle, as before.

The answers are FastPath's either way: the same status, headers and body, counted the same.
What uvicorn's cycle does for a connection, an exchange does too: `Expect: 100-continue`,
keep-alive and `Connection: close`, HEAD without a body, pipelined requests answered in
order, reading paused while a body waits unread, a 500 when the app fails.
"""

import asyncio
import logging
import urllib.parse
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import httptools
from starlette.types import Message, Scope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from mlscale.service.rest.fastpath import FastPath
from mlscale.service.rest.routes import Match
from mlscale.service.rest.transport import ConnectionLimits, GatheredWritesProtocol

log = logging.getLogger("mlscale")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
FAILED_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
FAILED_BODY = b"Internal Server Error"


class Exchange:
    """One request of the table and its response: the ASGI `receive` that FastPath reads the
    body through, the `respond` it answers with, and the three attributes of uvicorn's cycle
    that the protocol reads (`response_complete`, `keep_alive`, `disconnected`)."""

    __slots__ = ("chunks", "disconnected", "expects_continue", "found", "keep_alive",
                 "more_body", "protocol", "response_complete", "scope", "size",
                 "waiter")  # fmt: skip

    def __init__(
        self,
        protocol: "ExchangeProtocol",
        scope: Scope,
        found: Match,
        keep_alive: bool,
        expects_continue: bool,
    ) -> None:
        self.protocol = protocol
        self.scope = scope
        self.found = found
        self.keep_alive = keep_alive
        self.chunks: list[bytes] = []  # the body received and not read yet
        self.size = 0
        self.more_body = True  # until the parser says the message is complete
        self.waiter: asyncio.Future[None] | None = None  # `receive`, waiting for the body
        self.expects_continue = expects_continue
        self.response_complete = False
        self.disconnected = False

    # What the parser brings.
    def arrived(self, chunk: bytes) -> None:
        if self.response_complete:  # answered without reading it (a 413 by its length)
            return
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > HIGH_WATER_LIMIT:  # until `receive` takes it
            self.protocol.flow.pause_reading()
        self._wake()

    def complete(self) -> None:
        self.more_body = False
        self._wake()

    def lost(self) -> None:
        if not self.response_complete:
            self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # What FastPath calls.
    async def receive(self) -> Message:
        protocol = self.protocol
        if self.expects_continue:
            self.expects_continue = False
            if not protocol.transport.is_closing():
                protocol.transport.write(CONTINUE)
        while (
            self.more_body and not self.chunks and not (self.disconnected or self.response_complete)
        ):
            protocol.flow.resume_reading()
            self.waiter = protocol.loop.create_future()
            await self.waiter
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks, self.chunks, self.size = self.chunks, [], 0
        protocol.flow.resume_reading()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """FastPath's answer, written at once: status line, headers and body in one write."""
        if self.disconnected:
            return
        self.expects_continue = False  # answered before the body was asked for
        head = self._head(status, headers)
        self.protocol.transport.write(head if self.scope["method"] == "HEAD" else head + body)
        self._done()

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers, as uvicorn writes them: its default headers (the
        date) first, and `Connection: close` when the connection ends after this answer.
        The headers are FastPath's own, so they are not checked for forbidden bytes."""
        head = [STATUS_LINE[status]]
        closes = False
        for name, value in (*self.protocol.server_state.default_headers, *headers):
            head += (name, b": ", value, b"\r\n")
            if name == b"connection" and b"close" in value.lower().replace(b" ", b"").split(b","):
                closes = True
                self.keep_alive = False
        if not self.keep_alive and not closes:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        return b"".join(head)

    def _done(self) -> None:
        self.response_complete = True
        if not self.keep_alive:
            self.protocol.transport.close()
        self.protocol.on_response_complete()

    def failed(self, exc: BaseException) -> None:
        """The app raised: logged, and a 500 if nothing was written yet (as uvicorn does)."""
        log.error("unexpected error answering %s %s", self.scope["method"], self.scope["path"],
                  exc_info=exc)  # fmt: skip
        if self.response_complete or self.disconnected:
            return
        self.keep_alive = False
        self.protocol.transport.write(self._head(500, FAILED_HEADERS) + FAILED_BODY)
        self._done()


class ExchangeProtocol(GatheredWritesProtocol):
    """GatheredWritesProtocol, answering the route table's requests with exchanges."""

    cycle: Any  # uvicorn's RequestResponseCycle, or an Exchange
    _starting: Exchange | None = None  # an exchange to start once its body is in

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        # uvicorn's app, when it is mlscale's: at `--log-level trace` uvicorn wraps it in a
        # logger of ASGI messages, and every request goes through its cycle.
        self.answerer = self.app if isinstance(self.app, FastPath) else None

    def on_headers_complete(self) -> None:
        answerer = self.answerer
        found = None
        if answerer is not None and not self.parser.should_upgrade():
            raw_path, query = self.url, b""
            # A query, a fragment or an absolute URL: httptools takes the path out. A plain
            # path (every client's, nearly) is the path.
            if raw_path[:1] != b"/" or b"?" in raw_path or b"#" in raw_path:
                url = httptools.parse_url(raw_path)
                raw_path, query = url.path, url.query or b""
            path = raw_path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
            path = self.root_path + path
            found = answerer.route(path)
        if found is None:
            super().on_headers_complete()
            return
        within = self._head_done()
        # The scope as uvicorn fills it in.
        scope = self.scope
        scope["method"] = self.parser.get_method().decode("ascii")
        version = self.parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        scope["path"] = path
        scope["raw_path"] = (
            (self.root_path.encode("ascii") + raw_path) if self.root_path else raw_path
        )
        scope["query_string"] = query
        keep_alive = within and version != "1.0" and self.parser.should_keep_alive()
        exchange = Exchange(self, scope, found, keep_alive, self.expect_100_continue)
        earlier = self.cycle
        self.cycle = exchange
        if earlier is None or earlier.response_complete:
            self._starting = exchange
        else:  # pipelined: answered once those before it are, as uvicorn queues its cycles
            self.flow.pause_reading()
            self.pipeline.appendleft((exchange, self.app))

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is not Exchange:
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:  # a pipelined exchange whose body is not all in yet
            self._starting = cycle
        else:
            self._start(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is Exchange:
            cycle.arrived(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not Exchange:
            super().on_message_complete()
            return
        cycle.complete()
        if self._starting is cycle:
            self._start(cycle)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A body still on its way after this read: the answer starts now, so that its
        # checks of the head come first and it reads the body as it arrives.
        if self._starting is not None and not self.transport.is_closing():
            self._start(self._starting)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if type(cycle) is Exchange:
            cycle.lost()
            self.cycle = None
        self._starting = None
        super().connection_lost(exc)

    def _start(self, exchange: Exchange) -> None:
        self._starting = None
        app = cast(FastPath, self.answerer)  # an exchange is made only for mlscale's app
        self._step(app.answer(exchange.found, exchange.scope, exchange.receive,
                              exchange.respond), exchange)  # fmt: skip

    def _step(self, answer: Coroutine[Any, Any, None], exchange: Exchange, *done: Any) -> None:
        """Run the answer until it waits, and have what it waits on (its batch's future, the
        rest of its body) run it again from there once it is done, as a task would."""
        try:
            waiting = answer.send(None)
        except StopIteration:
            return
        except (Exception, asyncio.CancelledError) as exc:  # cancelled: what it waited on was
            exchange.failed(exc)
            return
        if waiting is None:  # it let the loop turn
            self.loop.call_soon(self._step, answer, exchange)
        else:  # a future, taken as a task takes it
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(partial(self._step, answer, exchange))


@dataclass(frozen=True)
class ProtocolFactory:
    """uvicorn's `http` argument: ExchangeProtocol with these limits. A picklable callable, so
    `--workers` processes get the same limits."""

    limits: ConnectionLimits

    def __call__(self, *args: Any, **kwargs: Any) -> ExchangeProtocol:
        protocol = ExchangeProtocol(*args, **kwargs)
        protocol.limits = self.limits
        return protocol
