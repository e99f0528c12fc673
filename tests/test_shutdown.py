"""SIGTERM: not ready at once, serve through the delay, stop accepting, finish in-flight, exit 0."""

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import run_server

BODY = json.dumps(
    {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
).encode()


def poll(predicate, timeout: float, what: str) -> float:
    """Wait until predicate() is true; return the time it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def test_sigterm_drains_without_losing_accepted_requests(model_dir: Path):
    delay = 1.5
    with run_server(model_dir, model_name="multilinear", shutdown_delay_s=str(delay),
                    grace_period_s="10") as server:  # fmt: skip
        port = int(server.url.rsplit(":", 1)[1])
        # An in-flight request: headers and half the body sent before the signal.
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            b"POST /v2/models/multilinear/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:20]
        )
        # Concurrent load on keep-alive connections, running across the signal.
        statuses: list[int] = []
        errors: list[Exception] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                while not stop.is_set():
                    try:
                        statuses.append(c.post("/v2/models/multilinear/infer", content=BODY,
                                               headers={"content-type": "application/json"}
                                               ).status_code)  # fmt: skip
                    except httpx.HTTPError as exc:
                        errors.append(exc)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        poll(lambda: len(statuses) > 50, 10, "load")
        server.terminate()
        signalled = time.monotonic()

        # Readiness drops at once; inference keeps working through the delay.
        with httpx.Client(base_url=server.url, timeout=5) as c:
            poll(lambda: c.get("/v2/health/ready").status_code == 503, 0.5, "not ready")
            assert c.get("/v2/health/ready").json() == {"ready": False}
            assert c.get("/v2/health/live").status_code == 200
            time.sleep(delay / 3)  # the load keeps running inside the delay window
            stop.set()
            for t in threads:
                t.join()
            assert c.post("/v2/models/multilinear/infer", content=BODY).status_code == 200
        assert errors == [] and set(statuses) == {200}, (errors[:3], set(statuses))

        # After the delay: no new connections, but the in-flight request still completes.
        poll(lambda: refuses_connections(port), delay + 5, "stop accepting")
        assert time.monotonic() - signalled >= delay
        slow.sendall(BODY[20:])
        answer = b""
        while chunk := slow.recv(65536):  # the server closes the connection after answering
            answer += chunk
        slow.close()
        answer = answer.decode()
        assert answer.startswith("HTTP/1.1 200"), answer
        assert '"model_name":"multilinear"' in answer

        assert server.process.wait(timeout=15) == 0, server.log()
        assert time.monotonic() - signalled < delay + 10
        assert "SIGTERM: not ready" in server.log()


def _children(pid: int) -> list[int]:
    """Worker processes uvicorn spawned under `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_worker_processes_serve_and_all_stop_on_sigterm(model_dir: Path):
    """Both workers answer (each one's CPU time grows with the requests it took) and all
    stop on SIGTERM."""
    with run_server(model_dir, model_name="multilinear", workers="2") as server:
        workers = _children(server.process.pid)
        assert len(workers) == 2, server.log()
        before = {pid: _cpu_seconds(pid) for pid in workers}
        failures: list[int] = []

        def client() -> None:
            for _ in range(100):  # a new connection each time: the workers race to accept
                response = httpx.post(server.url + "/v2/models/multilinear/infer", content=BODY)
                if response.status_code != 200:
                    failures.append(response.status_code)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        used = {pid: _cpu_seconds(pid) - before[pid] for pid in workers}
        # 800 requests cost each worker that takes a fair part of them well over 50 ms.
        assert all(seconds >= 0.05 for seconds in used.values()), used
        server.terminate()
        assert server.process.wait(timeout=30) == 0, server.log()
        poll(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, "exit")


def test_keep_alive_clients_are_told_to_reconnect_while_draining(model_dir: Path):
    """During the delay every answer carries `Connection: close` and the connection ends after
    it: clients move to other pods by themselves, and the shutdown finds no idle connection
    that a client might be writing to."""
    with run_server(model_dir, model_name="multilinear", shutdown_delay_s="5") as server:
        port = int(server.url.rsplit(":", 1)[1])
        request = (
            b"POST /v2/models/multilinear/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
        )

        def answer(sock: socket.socket) -> bytes:
            sock.sendall(request)
            received = b""
            while not received.endswith(b"}]}"):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            return received.split(b"\r\n\r\n", 1)[0].lower()

        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert b"connection: close" not in answer(sock)  # kept open before the signal
            server.terminate()
            with httpx.Client(base_url=server.url, timeout=5) as c:
                poll(lambda: c.get("/v2/health/ready").status_code == 503, 2, "not ready")
            head = answer(sock)
            assert head.startswith(b"http/1.1 200") and b"connection: close" in head
            assert sock.recv(1) == b""  # and the server closed it
