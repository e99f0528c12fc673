"""A network namespace the tests own: the simulated cluster's network, apart from the host's.

The API server's pod proxy dials pod addresses and refuses loopback ones, so the simulated pods
need addresses of their own that are local. In a namespace made here, a route makes a /16
local; the control plane listens on the namespace's loopback and the kubelet's pod servers on
the /16; the host's routing table is never touched, and the namespace is gone with its last
process. The tests reach a port inside through a relay on the host's loopback that listens on
the same port number (ports are per namespace), so one URL works on either side.
"""

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import time

CLONE_NEWNET = 0x40000000
POD_ROUTE = "10.213.0.0/16"  # local inside the namespace only
_libc = ctypes.CDLL(None, use_errno=True)


class NetNamespace:
    def __init__(self) -> None:
        # The namespace lives as long as this process (or a thread or process inside it).
        self._holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        self.path = f"/proc/{self._holder.pid}/ns/net"
        self._listeners: list[socket.socket] = []
        try:
            self._wait_created()
            subprocess.run(self.command("ip", "link", "set", "lo", "up"), check=True,
                           capture_output=True)  # fmt: skip
            subprocess.run(self.command("ip", "route", "add", "local", POD_ROUTE, "dev", "lo"),
                           check=True, capture_output=True)  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _wait_created(self) -> None:
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while True:
            if self._holder.poll() is not None:
                raise OSError(f"unshare --net exited with {self._holder.returncode}")
            try:
                if os.readlink(self.path) != ours:
                    return
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise OSError("unshare --net did not make a namespace within 10 s")
            time.sleep(0.01)

    def command(self, *argv: str) -> list[str]:
        """A command line that runs `argv` inside the namespace (nsenter execs it: no fork)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def enter(self) -> None:
        """Move the calling thread, and the threads it starts, into the namespace."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test network namespace")
        finally:
            os.close(fd)

    def relay(self, port: int) -> None:
        """Relay the host's 127.0.0.1:`port` to the namespace's 127.0.0.1:`port`."""
        listener = socket.create_server(("127.0.0.1", port))  # made here: on the host's side
        self._listeners.append(listener)

        def serve() -> None:
            self.enter()  # connections made from here on are made inside
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:  # the listener was shut down
                    return
                try:
                    upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
                _link(client, upstream)

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            listener.close()
        self._holder.kill()
        self._holder.wait()

    def __enter__(self) -> "NetNamespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _link(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both ends are done, then close both. An error on either
    side shuts both down, which wakes the other direction's recv."""
    left = [2]
    lock = threading.Lock()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            for end in (a, b):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
        finally:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                a.close()
                b.close()

    for source, sink in ((a, b), (b, a)):
        threading.Thread(target=pump, args=(source, sink), daemon=True).start()
