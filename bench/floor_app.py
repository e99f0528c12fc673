"""The floor: a bare ASGI app answering a fixed small JSON. Nothing in Python HTTP is cheaper."""

from collections.abc import Awaitable, Callable
from typing import Any

BODY = b'{"ready":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"14")]


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
