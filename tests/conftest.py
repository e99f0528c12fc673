"""Shared fixtures: a trained model store, real server processes on free ports, and a real
Kubernetes control plane with simulated nodes."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from mlscale.service.artifacts.store import ModelStore

if TYPE_CHECKING:
    from tests.control_plane import ControlPlane
    from tests.kubelet import Kubelet
from mlscale.service.artifacts.train import EXAMPLES, ensure_versions

ROOT = Path(__file__).resolve().parent.parent
# Routes Docker adds and removes for its networks (kind's among them) are Docker's, not a test's.
DOCKER_DEVICES = (" dev br-", " dev docker0", " dev veth")


def dockers(route: str) -> bool:
    """A route of Docker's networks, or one the kernel derives from IPv6 forwarding (each
    prefix's subnet-router anycast, on every interface), which dockerd turns on when it creates
    its first IPv6 network: kind's, on a machine that never ran kind before."""
    return any(d in route for d in DOCKER_DEVICES) or (
        route.startswith("anycast ") and " proto kernel " in route
    )


def host_routes() -> list[str] | None:
    """The host's routes in every table, IPv4 and IPv6, but Docker's; None without iproute2."""
    lines = []
    for family in ("-4", "-6"):
        try:
            shown = subprocess.run(["ip", family, "route", "show", "table", "all"],
                                   capture_output=True, text=True, check=True)  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return None
        lines += [ln for ln in shown.stdout.splitlines() if not dockers(ln)]
    return sorted(lines)


@pytest.fixture(scope="session", autouse=True)
def host_left_alone() -> Iterator[None]:
    """Tests never change the machine they run on: its routes are the same afterwards."""
    before = host_routes()
    yield
    after = host_routes()
    if before is not None and after != before:
        added = sorted(set(after or []) - set(before))
        removed = sorted(set(before) - set(after or []))
        pytest.fail(f"the tests changed the host's routes: added {added}, removed {removed}")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of every example model. Tests that change a store copy it first."""
    root = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    for name in EXAMPLES:
        ensure_versions(store, name, 2)
    return root


@pytest.fixture(scope="session")
def helm() -> str:
    found = shutil.which("helm") or shutil.which("helm", path=str(ROOT / ".tools" / "bin"))
    if found is None:
        pytest.fail("helm not found: run scripts/install-tools.sh (`make test` does)")
    return found


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator["Envtest"]:
    """etcd, kube-apiserver and kube-controller-manager, and the simulated nodes, in a network
    namespace of their own; each test takes a namespace of its own. Needs the binaries `make
    test` builds (with Go) and root (to make a network namespace)."""
    from tests.control_plane import ControlPlane, binaries
    from tests.kubelet import Kubelet
    from tests.netns import NetNamespace

    bins = binaries()
    if bins is None:
        pytest.skip("no control plane binaries: run k8s/nodeimage/build.sh control-plane "
                    "(needs Go; `make test` runs it)")  # fmt: skip
    try:
        netns = NetNamespace()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the simulated cluster runs in a network namespace of its own, and making "
                    f"one failed ({exc}): run as root, with util-linux and iproute2")  # fmt: skip
    with netns, ControlPlane(bins, tmp_path_factory.mktemp("control-plane"), netns) as plane, \
            Kubelet(plane.admin, netns) as kubelet:  # fmt: skip
        yield Envtest(plane, kubelet)


@dataclass
class Envtest:
    plane: "ControlPlane"
    kubelet: "Kubelet"


def pins() -> dict[str, str]:
    """The pinned versions of everything in the offline kind node image."""
    return dict(
        line.split("#")[0].strip().split("=", 1)
        for line in (ROOT / "k8s" / "nodeimage" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)

    def log(self) -> str:
        """Everything the server has printed so far."""
        return self.log_path.read_text()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


def wait_ready(server: Server, timeout: float = 30) -> None:
    """Poll the readiness endpoint until it says 200, or fail with the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server not ready after {timeout}s")


@contextmanager
def run_server(
    model_dir: Path, ready: bool = True, python_path: Path | None = None, **env: str
) -> Iterator[Server]:
    """Start `python -m mlscale.service` with MLSCALE_* settings; stop it on exit.
    `python_path`: a folder the interpreter searches first (tests/slim: the slim image's)."""
    port = free_port()
    environ = {
        **os.environ,
        **({"PYTHONPATH": str(python_path)} if python_path else {}),
        "MLSCALE_MODEL_DIR": str(model_dir),
        "MLSCALE_PORT": str(port),
        "MLSCALE_HOST": "127.0.0.1",
        **{f"MLSCALE_{k.upper()}": v for k, v in env.items()},
    }
    log_path = model_dir.parent / f"server-{port}.log"
    with log_path.open("wb") as log:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "mlscale.service"], env=environ, cwd=ROOT, stdout=log, stderr=log
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if ready:
            wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def iris(model_dir: Path) -> Iterator[Server]:
    """iris, default version 2, version 1 loaded too."""
    with run_server(model_dir, model_name="iris", model_version="2", extra_versions="1") as s:
        yield s
