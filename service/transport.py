"""One write per response, at the end of the event loop's turn: uvicorn's httptools
protocol with a transport that gathers writes.

uvicorn writes the status line and headers when the app sends `http.response.start`, then
the body when it sends `http.response.body`: two send() calls, two TCP segments, and the
client woken twice, at the moment each is sent. `GatheredWrites` keeps what a connection
writes during one turn of the event loop and sends it in one call once the loop has run the
callbacks it had ready. Under load the loop then reads many requests, runs their handlers,
and only then makes the system calls for their answers, instead of interleaving the two.
Measured here at 64 connections: a third less server CPU per mlscale inference (joining
head and body but sending at once saved nothing), a fifth less for the bench's bare floor
app, for well under a millisecond of added latency.
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GatheredWrites:
    """An asyncio transport whose writes go out together when the event loop turns."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():  # the client went away during this turn
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class GatheredWritesProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending each turn's writes with one system call."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # flow control keeps the real transport
        self.transport = GatheredWrites(transport, asyncio.get_running_loop())  # type: ignore[assignment]
