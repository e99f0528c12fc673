"""`make bench-cluster`: the cluster, not only the pod, on the kind cluster of `make kind-up`.

1. Throughput with 1, 2 and 3 replicas (autoscaler off), each pod limited to `--cpu` so three
   fit in this machine's cores, measured by wrk through the NodePort (kube-proxy included), in
   interleaved rounds; scaling efficiency = throughput(3) / (3 x throughput(1)).
2. Reaction to a load step (autoscaler on, one pod): seconds from the step to the HPA asking for
   more pods, to the first new pod being Ready, and to it answering its first inference request.

Needs the release installed (`make kind-up image kind-load deploy`) and wrk. Leaves the release
as k8s/values-kind.yaml has it. Writes bench/results/cluster-<time>.json and prints a table.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.run import v2_body
from mlscale.rollout.analysis import Snapshot

ROOT = Path(__file__).resolve().parent.parent
CONTEXT, NAMESPACE, RELEASE = "kind-mlscale", "mlscale", "mlscale"
NODE_PORT = "http://127.0.0.1:30080"
PODS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=model-server"
console = Console()


def tool(name: str) -> str:
    found = shutil.which(name, path=str(ROOT / ".tools" / "bin")) or shutil.which(name)
    if found is None:
        sys.exit(f"bench-cluster: {name} is needed (make tools; apt-get install wrk)")
    return found


def kubectl(*args: str) -> str:
    cmd = [tool("kubectl"), "--context", CONTEXT, "-n", NAMESPACE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def helm_set(*values: str) -> None:
    """Re-apply the demo values with these overrides and wait for the rollout."""
    cmd = [tool("helm"), "--kube-context", CONTEXT, "upgrade", RELEASE, "charts/mlscale",
           "-n", NAMESPACE, "--reuse-values", "--wait", "--timeout", "5m"]  # fmt: skip
    for value in values:
        cmd += ["--set", value]
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)


def pods() -> list[dict]:
    items = json.loads(kubectl("get", "pods", "-l", PODS, "-o", "json"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def settle(count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        current = pods()
        if len(current) == count and all(is_ready(p) for p in current):
            return
        if time.monotonic() > deadline:
            sys.exit(f"bench-cluster: {count} ready pods not reached in {timeout:.0f} s")
        time.sleep(1)


def served(pod: str) -> float:
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}:8080/proxy/metrics"
    text = subprocess.run([tool("kubectl"), "--context", CONTEXT, "get", "--raw", path],
                          capture_output=True, text=True).stdout  # fmt: skip
    snapshot = Snapshot()
    snapshot.add_scrape(text)  # the operator's own reading of the server's metrics
    return snapshot.requests


def wrk_script() -> str:
    script = ROOT / "bench" / "results" / "cluster-infer.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{json.dumps(v2_body(1))}]==]\n"
    )
    return str(script)


def wrk(seconds: float, connections: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tool("wrk"), "-t2", f"-c{connections}", f"-d{int(seconds)}s", "-s", wrk_script(),
         f"{NODE_PORT}/v2/models/iris/infer"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def requests_per_second(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    sys.exit(f"bench-cluster: wrk said:\n{output}")


def throughput(cpu: str, rounds: int, seconds: float, connections: int) -> dict[int, list[float]]:
    helm_set("autoscaling.enabled=false", f"resources.limits.cpu={cpu}",
             f"resources.requests.cpu={cpu}")  # fmt: skip
    results: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for r in range(rounds):
        for replicas in results:
            kubectl("scale", "deployment", RELEASE, f"--replicas={replicas}")
            settle(replicas)
            run = wrk(seconds, connections)
            out, _ = run.communicate()
            results[replicas].append(requests_per_second(out))
            console.print(f"round {r + 1}: {replicas} pod(s) {results[replicas][-1]:8.1f} req/s")
    return results


def reaction(connections: int, limit: float) -> dict[str, float | None]:
    helm_set("autoscaling.enabled=true", "autoscaling.minReplicas=1")
    settle(1)
    (first,) = [p["metadata"]["name"] for p in pods()]
    start = time.monotonic()
    load = wrk(limit, connections)
    marks: dict[str, float | None] = {"hpa_wants_more_s": None, "new_pod_ready_s": None,
                                      "new_pod_answers_s": None}  # fmt: skip
    while time.monotonic() - start < limit and marks["new_pod_answers_s"] is None:
        elapsed = round(time.monotonic() - start, 1)
        hpa = json.loads(kubectl("get", "hpa", RELEASE, "-o", "json"))
        if marks["hpa_wants_more_s"] is None and hpa["status"].get("desiredReplicas", 1) > 1:
            marks["hpa_wants_more_s"] = elapsed
        new = [p for p in pods() if p["metadata"]["name"] != first and is_ready(p)]
        if new and marks["new_pod_ready_s"] is None:
            marks["new_pod_ready_s"] = elapsed
        if any(served(p["metadata"]["name"]) > 0 for p in new):
            marks["new_pod_answers_s"] = elapsed
        time.sleep(0.5)
    load.terminate()
    load.wait()
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", default="400m", help="CPU request and limit per pod")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    tool("wrk")
    try:
        runs = throughput(args.cpu, args.rounds, args.seconds, args.connections)
        marks = reaction(args.connections, limit=240)
    finally:
        # Back to the demo values (HPA on, the requests and limits of k8s/values-kind.yaml).
        subprocess.run([tool("helm"), "--kube-context", CONTEXT, "upgrade", RELEASE,
                        "charts/mlscale", "-n", NAMESPACE, "-f", "k8s/values-kind.yaml",
                        "--reuse-values", "--wait"], cwd=ROOT, capture_output=True)  # fmt: skip
    medians = {n: statistics.median(v) for n, v in runs.items()}
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_per_pod": args.cpu,
        "rps_by_replicas": runs,
        "median_rps": medians,
        "scaling_efficiency_2": round(medians[2] / (2 * medians[1]), 3),
        "scaling_efficiency_3": round(medians[3] / (3 * medians[1]), 3),
        "reaction": marks,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cluster-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"kind cluster, {args.cpu} CPU per pod, wrk -c{args.connections}")
    table.add_column("replicas")
    table.add_column("req/s (median)", justify="right")
    table.add_column("vs 1 pod", justify="right")
    for n, rps in medians.items():
        table.add_row(str(n), f"{rps:.0f}", f"{rps / medians[1]:.2f}x")
    console.print(table)
    console.print(f"scaling efficiency: 2 pods {result['scaling_efficiency_2']}, "
                  f"3 pods {result['scaling_efficiency_3']}")  # fmt: skip
    console.print(
        f"load step -> HPA wants more: {marks['hpa_wants_more_s']} s, new pod ready: "
        f"{marks['new_pod_ready_s']} s, answering: {marks['new_pod_answers_s']} s"
    )
    console.print(f"written: {path}")


if __name__ == "__main__":
    main()
