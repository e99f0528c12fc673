"""The nodes, simulated: what a scheduler and kubelets would do, for the operator's tests on a
real API server (`tests/control_plane.py`). This is the only simulated part, and it does only:

- binds each new pod to one of three nodes, worker-1..3, in turn;
- gives it an address in the pod network, local inside the tests' own network namespace
  (`tests/netns.py`: nothing leaves it, and the host's routes stay as they are), and a container
  status that follows the test's `fate` for the pod: "ready" (Ready after READY_AFTER
  seconds), "never" (running, never Ready), "crash" (restarting in CrashLoopBackOff) or
  "pull" (its image cannot be pulled: ErrImagePull);
- answers HTTP on the pod's address and SERVER_PORT with the test's `answer`, so the API
  server's real pod proxy reaches "the pod" (a pod whose answer is None accepts and closes);
- finishes graceful deletions at once, as a kubelet does once the containers have stopped.

The Deployment, ReplicaSet, HPA and garbage-collector controllers are the real ones.
"""

import ipaddress
import itertools
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import urllib3

from mlscale.service.contract import SERVER_PORT
from tests.control_plane import Admin, ApiServerError
from tests.netns import NetNamespace

POD_NETWORK = ipaddress.ip_network("10.213.0.0/24")  # inside netns.POD_ROUTE
NODES = ("worker-1", "worker-2", "worker-3")
READY_AFTER = 0.05  # seconds from start to Ready
CRASH_EVERY = 0.2  # seconds between restarts of a crash-looping container
# The log tail a crash-looping container leaves as its termination message (the chart's policy).
CRASH_LOG = "INFO: loading\ncannot serve: a version this simulated server will not start\n"
Fate = Callable[[dict], str]  # pod -> "ready" | "never" | "crash" | "pull"
Answer = Callable[[dict, str], tuple[int, str] | None]  # (pod, path) -> (status, body)


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _PodHandler(BaseHTTPRequestHandler):
    server: "_PodServer"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        kubelet = self.server.kubelet
        pod = kubelet.pod_at(self.server.server_address[0])
        answered = kubelet.tenant(pod).answer(pod, self.path) if pod else None
        if answered is None:
            self.close_connection = True
            return
        status, body = answered
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _PodServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    kubelet: "Kubelet"


@dataclass
class _Container:
    address: str
    started: float  # monotonic seconds
    restarted: float  # when it last restarted (crash-looping ones)


class Tenant(NamedTuple):
    """What one test's pods do: their fate, and their answers over HTTP."""

    fate: Fate
    answer: Answer


NOBODY = Tenant(lambda pod: "ready", lambda pod, path: None)


class Kubelet:
    """The nodes of one control plane, shared by tests that each own a namespace (`tenants`)."""

    def __init__(self, admin: Admin, netns: NetNamespace) -> None:
        self.admin = admin
        self.netns = netns
        self.tenants: dict[str, Tenant] = {}
        self._pods: dict[str, dict] = {}  # address -> the pod there, as last listed
        self._containers: dict[str, _Container] = {}  # pod uid -> its running container
        self._free = (str(ip) for ip in POD_NETWORK.hosts())
        self._released: list[str] = []
        self._servers: dict[str, _PodServer] = {}
        self._nodes = itertools.cycle(NODES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Kubelet":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def tenant(self, pod: dict) -> Tenant:
        return self.tenants.get(pod["metadata"]["namespace"], NOBODY)

    def pod_at(self, address: str) -> dict | None:
        with self._lock:
            return self._pods.get(address)

    def _loop(self) -> None:
        # The pods' servers listen in the namespace (started from this thread, they are
        # made there); its API calls reach the API server there, on the same URL.
        self.netns.enter()
        while not self._stop.is_set():
            # A conflict, or a pod gone meanwhile: the next pass sees the news.
            with suppress(ApiServerError, urllib3.exceptions.HTTPError, OSError):
                self.sync()
            self._stop.wait(0.03)

    def sync(self) -> None:
        pods = self.admin.request("GET", "/api/v1/pods")["items"]
        live = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            for uid in [u for u in self._containers if u not in live]:
                address = self._containers.pop(uid).address
                self._pods.pop(address, None)
                self._released.append(address)
        for pod in pods:
            self._sync_pod(pod)

    def _sync_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            self.admin.delete("pods", ns, name, grace=0)  # the containers have stopped
            return
        if not pod["spec"].get("nodeName"):
            binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                       "target": {"apiVersion": "v1", "kind": "Node",
                                  "name": next(self._nodes)}}  # fmt: skip
            self.admin.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", binding)
            return
        running = self._run(pod)
        now = time.monotonic()
        fate = self.tenant(pod).fate(pod)
        ready = fate == "ready" and now - running.started >= READY_AFTER
        current = (pod["status"].get("containerStatuses") or [{}])[0]
        restarts = current.get("restartCount", 0)  # a test may have set it (a past reboot)
        if fate == "crash" and now - running.restarted >= CRASH_EVERY:
            restarts += 1
            running.restarted = now
        if current and (current.get("ready"), current.get("restartCount")) == (ready, restarts):
            return
        container = pod["spec"]["containers"][0]
        state = ({"waiting": {"reason": "CrashLoopBackOff"}} if fate == "crash"
                 else {"waiting": {"reason": "ErrImagePull", "message": "no such image"}}
                 if fate == "pull" else {"running": {"startedAt": stamp()}})  # fmt: skip
        status = {
            "phase": "Running",
            "hostIP": "10.213.255.254",  # outside every pod network
            "podIP": running.address,
            "podIPs": [{"ip": running.address}],
            "startTime": pod["status"].get("startTime") or stamp(),
            "conditions": [{"type": "Ready", "status": str(ready), "lastTransitionTime": stamp()}],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"],
                "imageID": f"{container['image']}@sha256:0", "ready": ready, "started": True,
                "restartCount": restarts, "state": state,
                **({"lastState": {"terminated": {"exitCode": 1, "message": CRASH_LOG}}}
                   if fate == "crash" else {}),
            }],
        }  # fmt: skip
        self.admin.patch("pods", ns, name, {"status": status}, sub="status")

    def _run(self, pod: dict) -> "_Container":
        """The pod's container: started once, with an address and a server listening there."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            running = self._containers.get(uid)
            if running is None:
                address = self._released.pop(0) if self._released else next(self._free)
                now = time.monotonic()
                running = self._containers[uid] = _Container(address, now, now)
            self._pods[running.address] = pod
        if running.address not in self._servers:
            server = _PodServer((running.address, SERVER_PORT), _PodHandler)
            server.kubelet = self
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers[running.address] = server
        return running
