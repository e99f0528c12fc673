"""`make bench-faults`: what each fault costs the clients, under load, on the kind cluster of
`make kind-up` with the demo release (`make deploy`).

A steady load (keep-alive clients in threads, every answer recorded) runs through each fault,
and each fault reports: requests sent and failed, the longest gap between two successful
answers, and seconds from the fault to the release's Ready pods being back to what they were.

- `kill`: a serving pod's process SIGKILLed inside its node (as the OOM killer or a crash
  does), with the load through the gateway (its route sends a request again, whole, when the
  pod's connection failed before an answer), through the Service's NodePort (kube-proxy:
  nothing retries for the client), and each again with clients that send a request again
  once when no pod answered it (its connection failed, or the gateway answered 502-504).
- `drain`: `kubectl drain` of the worker with the most of 3 pods, the PodDisruptionBudget on.
- `node`: a worker's container stopped outright (`docker stop`), started again afterwards.
- `bodies`: a body over the size limit, JSON nested 10,000 deep, a binary tensor whose header
  claims 10 GB: each one's status and time to answer, the pods' memory before and after, and
  their restarts.
- `slowloris`: connections that open and send half a request head, then nothing: how long the
  pods hold them, while the load goes on.

Leaves the release as k8s/values-kind.yaml has it. Writes bench/results/faults-<time>.json and
prints a table.
"""

import argparse
import contextlib
import itertools
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench.cluster import (
    CONTEXT,
    GATEWAY,
    INFER,
    NAMESPACE,
    NODE_PORT,
    ROOT,
    helm_demo_values,
    helm_set,
    in_threads,
    is_ready,
    kubectl,
    pods,
    tool,
)
from bench.run import v2_body

console = Console()
# A client's pause before its one retry: kube-proxy may send the retry to the same dead pod
# until the kubelet has seen it die and the endpoints drop it (about a second).
RETRY_AFTER = 0.5
GATEWAY_GAVE_UP = (502, 503, 504)  # no pod's answer: sent again by a client that retries
PARTS = ("kill", "drain", "node", "bodies", "slowloris")


@dataclass
class Load:
    """Keep-alive clients sending one-row requests to `url` in a loop; every answer's time and
    whether it succeeded."""

    url: str
    threads: int = 4
    pause: float = 0.01
    answers: list[tuple[float, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def figures(self, since: float, until: float) -> dict[str, float | int]:
        """Sent, failed and the longest gap without a successful answer in [since, until]."""
        window = sorted(a for a in self.answers if since <= a[0] <= until)
        ok = [since] + [t for t, good in window if good] + [until]
        return {
            "sent": len(window),
            "failed": sum(not good for _, good in window),
            "longest_gap_s": round(max(b - a for a, b in itertools.pairwise(ok)), 2),
        }


@contextmanager
def load(url: str, threads: int = 4, retry: bool = False) -> Iterator[Load]:
    """The load of `Load`; with `retry`, each client sends a request again once when no pod
    answered it: its connection failed, or a gateway said so (inference is idempotent)."""
    running = Load(url, threads)
    body = v2_body(1)

    def send(client: httpx.Client) -> bool:
        for attempt in range(2 if retry else 1):
            try:
                answer = client.post(url + INFER, json=body)
                failure = "" if answer.status_code == 200 else f"{answer.status_code} {answer.text}"
                again = answer.status_code in GATEWAY_GAVE_UP
            except httpx.TransportError as exc:
                failure, again = repr(exc), True
            if not failure:
                return True
            if not (retry and again and attempt == 0):
                running.errors.append(failure[:200])
                return False
            time.sleep(RETRY_AFTER)
        return False

    def loop(stop: threading.Event) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(running.pause):
                good = send(client)
                running.answers.append((time.monotonic(), good))

    with in_threads(loop, threads):
        yield running


def ready_count() -> int:
    return sum(is_ready(p) for p in pods())


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `check` held; exits saying `what` was not reached."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            sys.exit(f"bench-faults: {what} not reached in {timeout:.0f} s")
        time.sleep(0.5)
    return round(time.monotonic() - start, 1)


def three_pods() -> None:
    """The HPA holding 3 pods at least, all Ready, the PodDisruptionBudget on."""
    helm_set("autoscaling.minReplicas=3", "pdb.enabled=true")

    def settled() -> bool:
        listed = pods()
        return len(listed) >= 3 and all(is_ready(p) for p in listed)

    wait_until(settled, 300, "3 Ready pods")


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def kill_in_its_node(pod: str, namespace: str = NAMESPACE) -> None:
    """SIGKILL a pod's process from inside its node, as a node's OOM killer or a crash would:
    the kubelet restarts the container; the API server is not told first."""
    found = kubectl("get", "pod", pod, "-o", "json", namespace=namespace)
    node = json.loads(found)["spec"]["nodeName"]
    sandbox = docker("exec", node, "crictl", "pods", "--name", pod, "-q").split()[0]
    (container,) = docker("exec", node, "crictl", "ps", "--pod", sandbox, "-q").split()
    pid = json.loads(docker("exec", node, "crictl", "inspect", container))["info"]["pid"]
    docker("exec", node, "kill", "-9", str(pid))


def under_load(url: str, fault: Callable[[], None], back: Callable[[], bool],
               timeout: float = 300, retry: bool = False) -> dict[str, float | int]:  # fmt: skip
    """Load for 5 s, the fault, then until `back` holds (and 5 s more): the fault's figures."""
    with load(url, retry=retry) as running:
        time.sleep(5)  # a baseline: answers before the fault
        start = time.monotonic()
        fault()
        wait_until(back, timeout, "recovery")
        recovered = round(time.monotonic() - start, 1)  # from the fault, not from its end
        time.sleep(5)
        end = time.monotonic()
    return {**running.figures(start, end), "recovery_s": recovered, "errors": running.errors[:3]}


def restarts_of(pod: dict) -> int:
    return sum(c["restartCount"] for c in pod["status"].get("containerStatuses", []))


def kill(path: str, retry: bool = False) -> dict:
    three_pods()
    # The least restarted: a container killed again soon waits out the kubelet's back-off.
    name = min((p for p in pods() if is_ready(p)), key=restarts_of)["metadata"]["name"]

    def restarts() -> int:
        return restarts_of(json.loads(kubectl("get", "pod", name, "-o", "json")))

    before = restarts()
    url = GATEWAY if path == "gateway" else NODE_PORT
    return under_load(url, lambda: kill_in_its_node(name),
                      lambda: restarts() > before and ready_count() >= 3, retry=retry)  # fmt: skip


def busiest_worker() -> str:
    nodes = [p["spec"]["nodeName"] for p in pods() if is_ready(p)]
    return max(set(nodes), key=nodes.count)


def drain() -> dict:
    three_pods()
    node = busiest_worker()
    cmd = [tool("kubectl"), "--context", CONTEXT, "drain", node, "--ignore-daemonsets",
           "--delete-emptydir-data", "--timeout", "180s"]  # fmt: skip
    try:
        figures = under_load(GATEWAY, lambda: subprocess.run(cmd, capture_output=True, check=True),
                             lambda: ready_count() >= 3 and node not in on_nodes())  # fmt: skip
    finally:
        kubectl("uncordon", node, namespace=None)
    return {**figures, "node": node}


def on_nodes() -> set[str]:
    return {p["spec"].get("nodeName", "") for p in pods()}


def node_stop() -> dict:
    three_pods()
    node = busiest_worker()
    try:
        figures = under_load(GATEWAY, lambda: docker("stop", node),
                             lambda: ready_count() >= 3 and node not in on_nodes(),
                             timeout=600)  # fmt: skip
    finally:
        docker("start", node)
        wait_until(lambda: node_ready(node), 300, f"node {node} Ready again")
    return {**figures, "node": node}


def node_ready(node: str) -> bool:
    found = json.loads(kubectl("get", "node", node, "-o", "json", namespace=None))
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in found["status"]["conditions"])  # fmt: skip


def working_sets() -> dict[str, float]:
    """Each pod's server container's working set, in bytes: the figure its memory limit and
    the OOM killer go by, from its node's container runtime."""
    found: dict[str, float] = {}
    for node in {p["spec"]["nodeName"] for p in pods() if p["spec"].get("nodeName")}:
        for stat in json.loads(docker("exec", node, "crictl", "stats", "-o", "json"))["stats"]:
            labels = stat["attributes"]["labels"]
            used = stat.get("memory", {}).get("workingSetBytes", {})  # none: exited
            if labels["io.kubernetes.pod.namespace"] == NAMESPACE and "value" in used \
                    and labels["io.kubernetes.container.name"] == "server":  # fmt: skip
                found[labels["io.kubernetes.pod.name"]] = float(used["value"])
    return found


def memory_and_restarts() -> tuple[float, int]:
    """The largest working set of the pods and their restarts."""
    return max(working_sets().values(), default=0.0), sum(map(restarts_of, pods()))


def bad_bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    as_json = {"content-type": "application/json"}
    tensor = b'{"inputs":[{"name":"input-0","shape":[1250000000,2],"datatype":"FP32",'
    header = tensor + b'"parameters":{"binary_data_size":10000000000}}]}'
    binary = {"content-type": "application/octet-stream",
              "inference-header-content-length": str(len(header))}  # fmt: skip
    return {
        "over the size limit (9 MB)": (b"x" * (9 * 1024 * 1024), as_json),
        "JSON nested 10,000 deep": (b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", as_json),
        "binary header claiming 10 GB": (header + struct.pack("<f", 1.0), binary),
    }


def bodies() -> dict:
    three_pods()
    memory_before, restarts_before = memory_and_restarts()
    answers: dict[str, dict] = {}
    with load(NODE_PORT) as running, httpx.Client(timeout=30) as client:
        start = time.monotonic()
        for name, (content, headers) in bad_bodies().items():
            for _ in range(20):  # twenty of each: memory that grew per request would show
                began = time.monotonic()
                answer = client.post(NODE_PORT + INFER, content=content, headers=headers)
                answers[name] = {"status": answer.status_code,
                                 "ms": round((time.monotonic() - began) * 1000, 1),
                                 "error": answer.json().get("error", "")[:120]}  # fmt: skip
        end = time.monotonic()
    memory_after, restarts_after = memory_and_restarts()
    return {**running.figures(start, end), "answers": answers,
            "memory_mb": [round(memory_before / 2**20, 1), round(memory_after / 2**20, 1)],
            "restarts": restarts_after - restarts_before}  # fmt: skip


def slowloris(connections: int = 200) -> dict:
    """Connections sending half a request head, then nothing: each one's seconds until a pod
    closed it (the server's head timeout), while the load goes on through the same Service."""
    three_pods()
    held: list[float] = []

    def hold() -> None:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", 30080), timeout=120) as s:
            s.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n")
            with contextlib.suppress(OSError):
                s.recv(4096)  # blocks until the server answers (408) or closes
        held.append(time.monotonic() - began)

    with load(NODE_PORT) as running:
        start = time.monotonic()
        openers = [threading.Thread(target=hold) for _ in range(connections)]
        for o in openers:
            o.start()
        for o in openers:
            o.join()
        end = time.monotonic()
    return {**running.figures(start, end), "connections": connections,
            "held_s": [round(min(held), 1), round(max(held), 1)]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"which of {', '.join(PARTS)} to run (all)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        sys.exit(f"bench-faults: no part {', '.join(sorted(unknown))}; choose from {PARTS}")
    runs: dict[str, Callable[[], dict]] = {
        "kill": lambda: {"gateway": kill("gateway"), "service": kill("service"),
                         "gateway, the client retrying once": kill("gateway", retry=True),
                         "service, the client retrying once": kill("service", retry=True)},
        "drain": drain, "node": node_stop, "bodies": bodies, "slowloris": slowloris,
    }  # fmt: skip
    result: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        for part in parts:
            console.print(f"[bold]{part}[/bold] ...")
            result[part] = runs[part]()
            console.print(json.dumps(result[part]))
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"faults-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")  # whatever was measured
        helm_demo_values()
    show(result)
    console.print(f"written: {path}")


def show(result: dict) -> None:
    table = Table(title="faults under load (kind, the demo release)")
    for column in ("fault", "sent", "failed", "longest gap s", "back in s", "notes"):
        table.add_column(column)
    rows = [(f"pod SIGKILL, {path}", r, "") for path, r in result.get("kill", {}).items()]
    rows += [(f"drain {result['drain']['node']}", result["drain"], "")] if "drain" in result else []
    if "node" in result:
        rows.append((f"docker stop {result['node']['node']}", result["node"], ""))
    if "bodies" in result:
        b = result["bodies"]
        said = "; ".join(f"{k}: {v['status']} in {v['ms']} ms" for k, v in b["answers"].items())
        rows.append(("bad bodies", b, f"{said}; memory {b['memory_mb'][0]} -> "
                     f"{b['memory_mb'][1]} MB, {b['restarts']} restarts"))  # fmt: skip
    if "slowloris" in result:
        s = result["slowloris"]
        rows.append(("slowloris", s, f"{s['connections']} held {s['held_s'][0]}-"
                     f"{s['held_s'][1]} s"))  # fmt: skip
    for name, r, notes in rows:
        table.add_row(name, str(r["sent"]), str(r["failed"]), str(r["longest_gap_s"]),
                      str(r.get("recovery_s", "")), notes)  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
