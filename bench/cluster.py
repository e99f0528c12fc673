"""`make bench-cluster`: the cluster, not only the pod, on the kind cluster of `make kind-up`.

1. Throughput with 1, 2 and 3 replicas (autoscaler off), each pod limited to `--cpu` so three
   fit in this machine's cores, measured by wrk through the NodePort (kube-proxy included), in
   interleaved rounds; scaling efficiency = throughput(3) / (3 x throughput(1)).
2. The gateway's cost: one pod, wrk through the gateway against straight to the pod's Service
   (its NodePort), in interleaved rounds: requests/s and p99.
3. Canary shares through the gateway: a canary of weights 1, 5, 25 and 50 under a steady Locust
   load (`mlscale.loadtest --canary-steps`), each step's share of the answers against its
   weight; and at weight 0, requests pinned with the x-model-version header against the rest.
4. Reaction to a load step (autoscaler on, one pod): seconds from the step to the HPA asking for
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
NODE_PORT = "http://127.0.0.1:30080"  # the release's Service: stable pods, kube-proxy (L4)
GATEWAY = "http://127.0.0.1:30090"  # the gateway (k8s/gateway.yaml): per request (L7)
INFER = "/v2/models/iris/infer"
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


def wrk(seconds: float, connections: int, url: str = NODE_PORT) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [tool("wrk"), "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s",
         wrk_script(), url + INFER],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def requests_per_second(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    sys.exit(f"bench-cluster: wrk said:\n{output}")


def p99_ms(output: str) -> float:
    """wrk --latency's 99th percentile, in milliseconds."""
    for line in output.splitlines():
        if line.strip().startswith("99%"):
            value = line.split()[1]
            for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
                if value.endswith(unit):
                    return float(value.removesuffix(unit)) * scale
    sys.exit(f"bench-cluster: no p99 in wrk's output:\n{output}")


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


def gateway_cost(rounds: int, seconds: float, connections: int) -> dict[str, dict[str, list]]:
    """One pod (autoscaler off, the throughput phase's CPU), wrk through the gateway and
    straight to it, interleaved."""
    kubectl("scale", "deployment", RELEASE, "--replicas=1")
    settle(1)
    results: dict[str, dict[str, list]] = {"direct": {"rps": [], "p99_ms": []},
                                           "gateway": {"rps": [], "p99_ms": []}}  # fmt: skip
    for r in range(rounds):
        for path, url in (("direct", NODE_PORT), ("gateway", GATEWAY)):
            out, _ = wrk(seconds, connections, url).communicate()
            results[path]["rps"].append(requests_per_second(out))
            results[path]["p99_ms"].append(p99_ms(out))
            console.print(f"round {r + 1}: {path:8} {results[path]['rps'][-1]:8.1f} req/s, "
                          f"p99 {results[path]['p99_ms'][-1]:.1f} ms")  # fmt: skip
    return results


def rollout_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mlscale.rollout", "--context", CONTEXT, "-n", NAMESPACE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def canary_shares(seconds: float, users: int) -> dict:
    """The gateway's split as clients meet it: at weight 0, pinned requests against the rest;
    then a canary of 1, 5, 25 and 50 % under a steady Locust load, its share of the answers."""
    import httpx

    helm_set("autoscaling.enabled=true", "autoscaling.minReplicas=2")
    rollout_cli("deploy", "--version", "1", "--force", "--timeout", "300")
    started = rollout_cli("canary", "--version", "2", "--steps", "0", "--interval", "3600",
                          "--force", "--no-wait")  # fmt: skip
    if started.returncode:
        sys.exit(f"bench-cluster: {started.stderr}")
    deadline = time.monotonic() + 300
    while not (json.loads(kubectl("get", "mro", RELEASE, "-o", "json")).get("status", {})
               .get("rollout") or {}).get("stepStartedAt"):  # fmt: skip
        if time.monotonic() > deadline:
            sys.exit("bench-cluster: the canary at 0% did not start in 300 s")
        time.sleep(1)
    body = v2_body(1)
    answered: dict[str, dict[str, int]] = {"pinned": {}, "not pinned": {}}
    with httpx.Client(timeout=10) as client:
        for kind, headers in (("pinned", {"x-model-version": "2"}), ("not pinned", {})):
            for _ in range(500):
                version = client.post(GATEWAY + INFER, json=body, headers=headers).headers[
                    "x-model-version"]  # fmt: skip
                answered[kind][version] = answered[kind].get(version, 0) + 1
    rollout_cli("abort")
    out = ROOT / "bench" / "results" / "shares"
    load = subprocess.run(
        [sys.executable, "-m", "mlscale.loadtest", "--url", GATEWAY, "--model", "iris",
         "--cluster", "--release", RELEASE, "--namespace", NAMESPACE, "--context", CONTEXT,
         "--users", str(users), "--steps", "1", "--step-seconds", "5",
         "--hold-seconds", str(int(6 * seconds + 60)), "--rollout-at", "10",
         "--rollout-version", "2", "--canary-steps", "1,5,25,50",
         "--canary-interval", str(int(seconds)), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    report = sorted(out.iterdir())[-1]
    summary = json.loads((report / "summary.json").read_text())
    rollout_cli("deploy", "--version", "1", "--force", "--timeout", "300")
    return {"at_weight_0": answered, "load": summary, "report": str(report),
            "load_exit": load.returncode}  # fmt: skip


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
    parser.add_argument("--share-seconds", type=float, default=30, help="per canary weight")
    parser.add_argument("--users", type=int, default=20, help="Locust users for the shares")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    tool("wrk")
    try:
        runs = throughput(args.cpu, args.rounds, args.seconds, args.connections)
        cost = gateway_cost(args.rounds, args.seconds, args.connections)
        shares = canary_shares(args.share_seconds, args.users)
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
        "gateway_cost": cost,
        "shares": shares,
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
    ratios = [g / d for g, d in zip(cost["gateway"]["rps"], cost["direct"]["rps"], strict=True)]
    p99s = [g / d for g, d in zip(cost["gateway"]["p99_ms"], cost["direct"]["p99_ms"],
                                  strict=True)]  # fmt: skip
    console.print(
        f"one pod through the gateway: {statistics.median(ratios):.2f}x the req/s of straight "
        f"to it, p99 {statistics.median(p99s):.2f}x (medians of per-round ratios; direct "
        f"{statistics.median(cost['direct']['rps']):.0f} req/s, gateway "
        f"{statistics.median(cost['gateway']['rps']):.0f} req/s)"
    )
    shares_table = Table(title="canary share of answers through the gateway (Locust, steady)")
    for column in ("weight %", "measured %", "answers"):
        shares_table.add_column(column, justify="right")
    for weight, measured in shares["load"].get("canary_shares", {}).items():
        shares_table.add_row(str(weight), str(measured["share_pct"]), str(measured["answers"]))
    console.print(shares_table)
    console.print(f"at weight 0: {shares['at_weight_0']} (report {shares['report']})")
    console.print(
        f"load step -> HPA wants more: {marks['hpa_wants_more_s']} s, new pod ready: "
        f"{marks['new_pod_ready_s']} s, answering: {marks['new_pod_answers_s']} s"
    )
    console.print(f"written: {path}")


if __name__ == "__main__":
    main()
