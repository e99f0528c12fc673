"""One write per response and loop turn: the transport alone, then under a real server."""

import asyncio
import socket
import struct
from pathlib import Path

import httpx
import pytest

from service.transport import GatheredWrites
from tests.conftest import run_server


class Recorder:
    """The part of an asyncio transport GatheredWrites uses, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))

    def is_closing(self) -> bool:
        return False


def gathered() -> tuple[GatheredWrites, Recorder]:
    recorder = Recorder()
    return GatheredWrites(recorder, asyncio.get_running_loop()), recorder  # type: ignore[arg-type]


def test_a_turns_writes_go_out_together_when_the_loop_turns():
    async def main() -> None:
        transport, recorder = gathered()
        transport.write(b"head")
        transport.write(b"body")
        assert recorder.calls == []
        await asyncio.sleep(0)
        assert recorder.calls == [("write", b"headbody")]
        transport.write(b"next")
        await asyncio.sleep(0)
        assert recorder.calls == [("write", b"headbody"), ("write", b"next")]

    asyncio.run(main())


def test_close_sends_what_is_pending_first():
    async def main() -> list[tuple[str, bytes]]:
        transport, recorder = gathered()
        transport.write(b"bye")
        transport.close()
        assert transport.is_closing() is False  # the rest is the real transport's
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return recorder.calls

    assert asyncio.run(main()) == [("write", b"bye"), ("close", b"")]


def _request(body: bytes) -> bytes:
    return (
        b"POST /v2/models/linear/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )


def test_pipelined_requests_get_whole_responses_in_order(model_dir: Path):
    bodies = [
        b'{"id": "%d", "inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", '
        b'"data": [%d]}]}' % (i, i)
        for i in range(5)
    ]
    with run_server(model_dir, model_name="linear") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"".join(_request(b) for b in bodies))  # all five in one segment
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < 5 or not received.endswith(b"}]}"):
                chunk = sock.recv(65536)
                if not chunk:
                    pytest.fail(f"connection closed after {received!r}")
                received += chunk
    answers = received.split(b"HTTP/1.1 200 OK")[1:]
    assert [b'"id":"%d"' % i in answer for i, answer in enumerate(answers)] == [True] * 5


def test_clients_that_reset_before_their_answers_leave_no_errors(model_dir: Path):
    """Answers gathered for a connection the client reset in the same turn are dropped."""
    body = b'{"inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}'
    with run_server(model_dir, model_name="linear") as server:
        host, port = server.url.removeprefix("http://").split(":")
        for _ in range(50):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(_request(body) * 3)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # closing with linger 0 sends a reset instead of a FIN
        response = httpx.post(server.url + "/v2/models/linear/infer", content=body)
        assert response.status_code == 200
        assert "Traceback" not in server.log(), server.log()
