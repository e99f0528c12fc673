"""One write per response and loop turn: the transport alone, then under a real server."""

import asyncio
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest

from mlscale.service.rest.transport import GatheredWrites
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


BODY = b'{"inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}'


def _ask(sock: socket.socket) -> bytes:
    """One request on an open connection, and its whole response."""
    sock.sendall(_request(BODY))
    received = b""
    while b"\r\n\r\n" not in received or not received.endswith(b"}]}"):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response after {received!r}"
        received += chunk
    return received


def _exchange(sock: socket.socket) -> tuple[bytes, bool]:
    """One request on an open connection: the response's head, and whether the server closed
    the connection after it."""
    head = _ask(sock).split(b"\r\n\r\n", 1)[0].lower()
    sock.settimeout(1)
    try:
        closed = sock.recv(1) == b""  # EOF: the server closed; a timeout: still open
    except TimeoutError:
        closed = False
    sock.settimeout(10)
    return head, closed


@pytest.mark.parametrize("limit", [1, 3])
def test_a_connection_closes_after_its_request_limit_never_before(model_dir: Path, limit: int):
    with run_server(model_dir, model_name="linear", max_requests_per_connection=str(limit)) as s:
        host, port = s.url.removeprefix("http://").split(":")
        for _ in range(2):  # and again on a new connection
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                for n in range(1, limit + 1):
                    head, closed = _exchange(sock)
                    assert head.startswith(b"http/1.1 200")
                    assert (b"connection: close" in head) == (n == limit) == closed, (n, head)


def test_a_connection_closes_at_its_first_response_past_its_age(model_dir: Path):
    with run_server(model_dir, model_name="linear", max_connection_age_s="1") as s:
        host, port = s.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            opened = time.monotonic()
            head, closed = _exchange(sock)
            assert not closed and b"connection: close" not in head
            time.sleep(max(0.0, 1.1 - (time.monotonic() - opened)))  # the age is the subject here
            head, closed = _exchange(sock)
            assert closed and b"connection: close" in head and head.startswith(b"http/1.1 200")


def test_without_limits_connections_stay_open(model_dir: Path):
    with run_server(model_dir, model_name="linear") as s:
        host, port = s.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            for _ in range(5):
                head, closed = _exchange(sock)
                assert not closed and b"connection: close" not in head


def test_an_idle_connection_closes_after_the_keep_alive_timeout_a_busy_one_never(
    model_dir: Path,
):
    """One timer per connection: it must measure idleness from the last response, not the
    first, and still close a connection that went quiet."""
    with run_server(model_dir, model_name="linear", keep_alive_s="2") as s:
        host, port = s.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            opened = time.monotonic()
            while time.monotonic() - opened < 3 * 2:  # three timeouts' worth of requests
                assert _ask(sock).startswith(b"HTTP/1.1 200")  # not closed while busy
                answered = time.monotonic()
                time.sleep(0.5)  # the gap between requests is the subject here
            assert _read_until_closed(sock) == b""  # then idle: closed, with nothing sent
            # The server's 2 s began as it sent the last answer, a moment before it arrived.
            idle = time.monotonic() - answered
            assert 1.5 < idle < 4, idle


def _read_until_closed(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def test_a_slow_or_silent_client_gets_408_and_the_server_serves_others(model_dir: Path):
    """Slowloris: connections that never finish a request head are closed after the head
    timeout; meanwhile, and after, everyone else is answered."""
    with run_server(model_dir, model_name="linear", request_head_timeout_s="1") as s:
        host, port = s.url.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)), timeout=10)
        trickle = socket.create_connection((host, int(port)), timeout=10)
        opened = time.monotonic()
        trickle.sendall(b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n")
        with httpx.Client(base_url=s.url, timeout=5) as c:
            answered = 0
            while time.monotonic() - opened < 1.5:  # across the timeout
                if time.monotonic() - opened < 0.8:  # bytes now and then, never the head's end
                    trickle.sendall(b"X")  # (stopped before the server closes: no reset)
                answered += c.get("/v2/health/ready").status_code == 200
            for sock in (silent, trickle):
                with sock:
                    answer = _read_until_closed(sock)
                    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
                    assert b'"error":"no complete request head within 1s"' in answer
            assert time.monotonic() - opened < 5
            assert answered > 10 and c.get("/v2/health/ready").status_code == 200
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head, closed = _exchange(sock)  # a whole head in time: answered as usual
            assert head.startswith(b"http/1.1 200") and not closed
