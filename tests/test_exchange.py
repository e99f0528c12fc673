"""The route table's requests answered on the connection (service/rest/exchange.py): the real
app on the real protocol, in-process, with a transport that records what it is given, so that
a test can see that no answer needs a task, and compare each with uvicorn's cycle's."""

import asyncio
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from mlscale.service.rest.app import create_app
from mlscale.service.rest.exchange import ExchangeProtocol
from mlscale.service.rest.fastpath import FastPath
from mlscale.service.rest.transport import GatheredWritesProtocol
from mlscale.service.settings import ModelSettings, ServerSettings, Settings

LINEAR = (
    b'{"id": "a", "inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", '
    b'"data": [2]}]}'
)
IRIS = (
    b'{"id": "b", "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
    b'"data": [5.1, 3.5, 1.4, 0.2]}]}'
)
LINEAR_ANSWER = b'"id":"a","outputs":[{"name":"predict","datatype":"FP64","shape":[1],"data":[4.99'
DATE = re.compile(rb"date: [^\r]*\r\n")


class Wire:
    """The transport's side of a connection: what the server wrote, and whether it closed."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name)

    def take(self) -> bytes:
        """What was written since the last look, without the date header (it ticks)."""
        out, self.written = bytes(self.written), bytearray()
        return DATE.sub(b"", out)


class Server:
    """One app, and connections to it through either protocol."""

    def __init__(self, app: FastPath) -> None:
        self.app = app
        self.config = Config(app, lifespan="off", access_log=False, proxy_headers=False)
        self.config.load()
        self.state = ServerState()

    def connect(self, protocol: type[GatheredWritesProtocol] = ExchangeProtocol
                ) -> tuple[GatheredWritesProtocol, Wire]:  # fmt: skip
        connection = protocol(self.config, self.state, {}, asyncio.get_running_loop())
        wire = Wire()
        connection.connection_made(wire)  # type: ignore[arg-type]
        return connection, wire


def serving(model_dir: Path, name: str, limit: int = 1000, **model: Any) -> Callable[..., Any]:
    """Run `test(server)` in an event loop, with `name` loaded and bodies up to `limit` bytes."""

    def run(test: Callable[[Server], Coroutine[Any, Any, None]]) -> None:
        settings = Settings(
            model=ModelSettings(model_dir=model_dir, model_name=name, **model),
            server=ServerSettings(max_body_bytes=limit),
        )
        app = create_app(settings)
        app.plane.load()

        async def main() -> None:
            try:
                await test(Server(app))
            finally:
                await app.plane.close()

        asyncio.run(main())

    return run


def post(path: str, body: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    head = b"POST %s HTTP/%s\r\nhost: t\r\ncontent-type: application/json\r\n" % (
        path.encode(),
        version,
    )
    extra = b"".join(h + b"\r\n" for h in headers)
    return head + extra + b"content-length: %d\r\n\r\n%s" % (len(body), body)


async def turned(wire: Wire, answers: int = 1) -> bytes:
    """What the server wrote once it has written `answers` answers (or closed), without the
    date header; the loop runs until then, for a second at most."""
    deadline = asyncio.get_running_loop().time() + 1
    while wire.written.count(b"HTTP/1.1 ") < answers and not wire.closed:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)  # the turn's writes go out together
    return wire.take()


def test_an_answer_that_waits_for_nothing_is_written_without_a_task(model_dir: Path):
    async def test(server: Server) -> None:
        connection, wire = server.connect()
        connection.data_received(post("/v2/models/linear/infer", LINEAR))
        assert server.state.tasks == set()  # answered before the read returned
        answer = await turned(wire)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.find(LINEAR_ANSWER) > 0
        assert server.state.total_requests == 1 and not wire.closed

    serving(model_dir, "linear")(test)


def test_one_that_waits_for_its_batch_is_run_on_by_it_without_a_task_either(model_dir: Path):
    async def test(server: Server) -> None:
        connection, wire = server.connect()
        connection.data_received(post("/v2/models/iris/infer", IRIS))
        assert server.app.metrics.in_flight == 1  # waiting for its batch
        answer = await turned(wire)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'"id":"b","outputs":[{"name":"predict"' in answer
        assert server.app.metrics.in_flight == 0 and server.state.tasks == set()

    serving(model_dir, "iris", fast_path=False)(test)


@pytest.mark.parametrize(
    "request_",
    [
        post("/v2/models/iris/infer", IRIS),
        post("/v2/models/iris/infer", b"{not json"),
        post("/v2/models/nope/infer", IRIS),
        post("/v2/models/iris/versions/9/infer", IRIS),
        post("/v2/models/iris/infer", b"x" * 1001),
        b"GET /v2/models/iris/infer HTTP/1.1\r\nhost: t\r\n\r\n",
        b"GET /v2/models/iris HTTP/1.1\r\nhost: t\r\n\r\n",
        b"HEAD /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n",
        post("/v2/models/iris/infer", IRIS, version=b"1.0"),
        post("/v2/models/iris/infer", IRIS, b"connection: close"),
        post("/predict", b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'),
        b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n",
    ],
    ids=[
        "infer",
        "bad-json",
        "no-model",
        "no-version",
        "too-big",
        "405",
        "metadata",
        "head",
        "http-1.0",
        "close",
        "predict",
        "live",
    ],
)
def test_every_answer_is_the_one_uvicorns_cycle_gives(model_dir: Path, request_: bytes):
    async def test(server: Server) -> None:
        answers = []
        for protocol in (GatheredWritesProtocol, ExchangeProtocol):
            connection, wire = server.connect(protocol)
            connection.data_received(request_)
            answers.append((await turned(wire), wire.closed))
        assert answers[0] == answers[1]

    serving(model_dir, "iris", fast_path=False)(test)


def test_pipelined_answers_keep_their_order_past_one_that_waits(model_dir: Path):
    """A batched request, then one answered at once, then one uvicorn's cycle answers."""

    async def test(server: Server) -> None:
        connection, wire = server.connect()
        connection.data_received(
            post("/v2/models/iris/infer", IRIS.replace(b'"b"', b'"first"'))
            + b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n"
            + b"GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n"
            + post("/v2/models/iris/infer", IRIS.replace(b'"b"', b'"last"'))
        )
        written = await turned(wire, 4)
        marks = rb'"first"|\{"live":true\}|HTTP/1\.1 404|"last"'
        order = [m.group(0) for m in re.finditer(marks, written)]
        assert order == [b'"first"', b'{"live":true}', b"HTTP/1.1 404", b'"last"'], written

    serving(model_dir, "iris", fast_path=False)(test)


def test_a_client_that_expects_100_continue_gets_it_then_its_answer(model_dir: Path):
    async def test(server: Server) -> None:
        connection, wire = server.connect()
        request = post("/v2/models/linear/infer", LINEAR, b"expect: 100-continue")
        head, body = request.split(b"\r\n\r\n", 1)
        connection.data_received(head + b"\r\n\r\n")
        await asyncio.sleep(0)
        assert wire.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.data_received(body)
        answer = await turned(wire)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.find(LINEAR_ANSWER) > 0

    serving(model_dir, "linear")(test)


def test_a_body_in_pieces_is_read_as_it_comes_and_a_long_one_refused_before_it_ends(
    model_dir: Path,
):
    async def test(server: Server) -> None:
        connection, wire = server.connect()
        request = post("/v2/models/linear/infer", LINEAR)
        for i in range(0, len(request), 40):
            connection.data_received(request[i : i + 40])
            await asyncio.sleep(0)
        answer = await turned(wire)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.find(LINEAR_ANSWER) > 0
        # Declared longer than the limit: refused before any of it is sent, and the
        # connection serves the next request once the client sent the body anyway.
        too_long = post("/v2/models/linear/infer", b"x" * 1500)
        head, body = too_long.split(b"\r\n\r\n", 1)
        connection.data_received(head + b"\r\n\r\n")
        answer = await turned(wire)
        assert answer.startswith(b"HTTP/1.1 413 ") and b"MLSCALE_MAX_BODY_BYTES" in answer
        connection.data_received(body + post("/v2/models/linear/infer", LINEAR))
        assert (await turned(wire)).find(LINEAR_ANSWER) > 0 and not wire.closed

    serving(model_dir, "linear")(test)


def test_a_big_body_pauses_reading_until_it_is_read_then_is_answered(model_dir: Path):
    rows = 50_000  # 200 kB of JSON: over uvicorn's 64 KiB high-water mark
    tensor = b'"name": "input-0", "shape": [%d, 1], "datatype": "FP64"' % rows
    body = b'{"inputs": [{%s, "data": [%s]}]}' % (tensor, b",".join([b"2.0"] * rows))

    async def test(server: Server) -> None:
        connection, wire = server.connect()
        request = post("/v2/models/linear/infer", body)
        paused = False
        for i in range(0, len(request), 16_384):
            connection.data_received(request[i : i + 16_384])
            paused |= not wire.reading
        answer = await turned(wire)
        assert paused and wire.reading  # paused while the body piled up, resumed once read
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"4.99") == rows

    serving(model_dir, "linear", limit=1_000_000)(test)


def test_a_client_gone_before_its_body_came_leaves_nothing_running(model_dir: Path):
    async def test(server: Server) -> None:
        connection, wire = server.connect()
        connection.data_received(post("/v2/models/linear/infer", LINEAR)[:-10])
        assert server.app.metrics.in_flight == 1  # waiting for the rest of the body
        wire.closed = True
        connection.connection_lost(None)
        assert await turned(wire) == b""
        assert server.app.metrics.in_flight == 0 and server.state.tasks == set()

    serving(model_dir, "linear")(test)


def test_at_shutdown_an_exchange_still_reading_answers_then_closes(model_dir: Path):
    async def test(server: Server) -> None:
        connection, wire = server.connect()
        request = post("/v2/models/linear/infer", LINEAR)
        connection.data_received(request[:-10])
        connection.shutdown()
        assert not wire.closed  # the request being read is answered first
        connection.data_received(request[-10:])
        answer = await turned(wire)
        assert b"connection: close\r\n" in answer and answer.find(LINEAR_ANSWER) > 0
        assert wire.closed

    serving(model_dir, "linear")(test)


def test_an_app_that_fails_gets_500_and_a_closed_connection(
    model_dir: Path, caplog: pytest.LogCaptureFixture
):
    async def test(server: Server) -> None:
        async def fails(*args: Any) -> Any:
            raise RuntimeError("broken")

        server.app._answer = fails  # type: ignore[method-assign]
        connection, wire = server.connect()
        connection.data_received(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
        answer = await turned(wire)
        assert answer.startswith(b"HTTP/1.1 500 ") and answer.endswith(b"Internal Server Error")
        assert b"connection: close\r\n" in answer and wire.closed

    serving(model_dir, "linear")(test)
    assert "unexpected error answering GET /v2/health/live" in caplog.text
    assert "RuntimeError: broken" in caplog.text
