"""`make bench-cluster`: the cluster, not only the pod, on the kind cluster of `make kind-up`.

1. Throughput with 1, 2 and 3 replicas (autoscaler off), each pod limited to `--cpu` so three
   fit in this machine's cores, measured by wrk through the NodePort (kube-proxy included), in
   interleaved rounds; scaling efficiency = throughput(3) / (3 x throughput(1)).
2. The gateway's cost: one pod, wrk through the gateway against straight to the pod's Service
   (its NodePort), in interleaved rounds: requests/s and p99.
3. Canary shares through the gateway: a canary of weights 1, 5, 25 and 50 under a steady Locust
   load (`mlscale.loadtest --canary-steps`), each step's share of the answers against its
   weight; and at weight 0, requests pinned with the x-model-version header against the rest.
4. One pod's capacity (the demo's CPU limit): wrk at 1, 2, 4 ... 64 connections; 70% of the
   req/s at the knee, within the p99 goal, is the value to set as the request-metric HPA's target.
5. Reaction to a load step (autoscaler on, one pod), once with the CPU-only HPA and once with
   the request-metric one (requests/s per pod through Prometheus, CPU beside it), side by side:
   seconds from the step to the HPA asking for more pods, to the first new pod being Ready and
   to it answering; the step's p99 and failed requests (non-2xx and socket errors). Then, under
   a light load, the scale-down: seconds from the step's end to one pod, and its failures.

Needs the release installed (`make kind-up image kind-load deploy`) and wrk. Leaves the release
as k8s/values-kind.yaml has it. Writes bench/results/cluster-<time>.json and prints a table.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from bench.run import v2_body
from mlscale.rollout.analysis import Snapshot
from mlscale.service.contract import REQUEST_RATE

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


def kubectl(*args: str, namespace: str | None = NAMESPACE) -> str:
    cmd = [tool("kubectl"), "--context", CONTEXT, *(["-n", namespace] if namespace else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def helm_set(*values: str, json_values: dict[str, object] | None = None,
             demo: bool = False) -> None:  # fmt: skip
    """Upgrade the release with these overrides over its values (and over k8s/values-kind.yaml
    with `demo`) and wait for the rollout."""
    cmd = [tool("helm"), "--kube-context", CONTEXT, "upgrade", RELEASE, "charts/mlscale",
           "-n", NAMESPACE, *(["-f", "k8s/values-kind.yaml"] if demo else []), "--reuse-values",
           "--wait", "--timeout", "5m",
           "--force-conflicts"]  # the values win over what a CLI rollout set  # fmt: skip
    for value in values:
        cmd += ["--set", value]
    for key, value in (json_values or {}).items():
        cmd += ["--set-json", f"{key}={json.dumps(value)}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"bench-cluster: helm upgrade failed: {done.stderr.strip()} "
                 "(make deploy applies the chart's CRDs, then the demo values)")  # fmt: skip


@contextmanager
def in_threads(loop: Callable[[threading.Event], None], threads: int) -> Iterator[None]:
    """`loop` running in `threads` threads for the block; told to stop by the event it is given,
    and waited for, when the block ends."""
    stop = threading.Event()
    workers = [threading.Thread(target=loop, args=(stop,)) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        yield
    finally:
        stop.set()
        for w in workers:
            w.join()


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


def wrk_script(pace_ms: int = 0) -> str:
    """wrk's Lua: one-row V2 requests; with `pace_ms`, each connection waits that long between
    its requests (a steady rate rather than as fast as the pods answer)."""
    script = ROOT / "bench" / "results" / f"cluster-infer-{pace_ms}.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{json.dumps(v2_body(1))}]==]\n"
        + (f"function delay() return {pace_ms} end\n" if pace_ms else "")
    )
    return str(script)


def wrk(seconds: float, connections: int, url: str = NODE_PORT,
        pace_ms: int = 0) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        [tool("wrk"), f"-t{min(2, connections)}", f"-c{connections}", f"-d{int(seconds)}s",
         "--latency", "-s", wrk_script(pace_ms), url + INFER],
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


def failed(output: str) -> int:
    """Requests wrk saw fail: non-2xx answers and socket errors (connect, read, write, timeout)."""
    count = 0
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("Non-2xx or 3xx responses:"):
            count += int(line.rsplit(" ", 1)[1])
        elif line.startswith("Socket errors:"):
            count += sum(int(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
    return count


def fixed_pods(cpu: str) -> None:
    """Autoscaler off, each pod limited to `cpu`: pod counts the bench sets itself."""
    helm_set("autoscaling.enabled=false", f"resources.limits.cpu={cpu}",
             f"resources.requests.cpu={cpu}")  # fmt: skip


def throughput(cpu: str, rounds: int, seconds: float, connections: int) -> dict[int, list[float]]:
    fixed_pods(cpu)
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


def gateway_cost(cpu: str, rounds: int, seconds: float, connections: int
                 ) -> dict[str, dict[str, list]]:  # fmt: skip
    """One pod (autoscaler off, limited to `cpu`), wrk through the gateway and straight to
    it, interleaved."""
    fixed_pods(cpu)
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


def capacity(seconds: float, p99_goal_ms: float) -> dict:
    """One pod (the demo's CPU limit), wrk at doubling connections: each level's req/s and p99.
    Past the knee (req/s within 5% of the most seen) more connections only queue. The target to
    set is 70% of the knee's req/s, within the p99 goal: pods ask for help with headroom left
    for the ~20 s a new pod takes to answer."""
    helm_set("autoscaling.enabled=false", "replicaCount=1")
    settle(1)
    levels = {}
    for connections in (1, 2, 4, 8, 16, 32, 64):
        out, _ = wrk(seconds, connections).communicate()
        levels[connections] = {"rps": requests_per_second(out), "p99_ms": p99_ms(out)}
        console.print(f"one pod, {connections} connections: {levels[connections]['rps']:8.1f} "
                      f"req/s, p99 {levels[connections]['p99_ms']:.1f} ms")  # fmt: skip
    most = max(level["rps"] for level in levels.values())
    knee = min(c for c, level in levels.items() if level["rps"] >= 0.95 * most)
    within = [c for c in levels if c <= knee and levels[c]["p99_ms"] <= p99_goal_ms]
    at = max(within, default=1)
    return {"levels": levels, "p99_goal_ms": p99_goal_ms, "knee_connections": at,
            "target": int(round(0.7 * levels[at]["rps"], -1))}  # fmt: skip


def reaction(connections: int, limit: float, request_metric: bool) -> dict[str, float | None]:
    """A load step on one pod; the HPA on CPU only, or on requests/s and CPU."""
    metrics = values_kind()["autoscaling"]["podsMetrics"] if request_metric else []
    helm_set("autoscaling.enabled=true", "autoscaling.minReplicas=1",
             json_values={"autoscaling.podsMetrics": metrics})  # fmt: skip
    settle(1)
    (first,) = [p["metadata"]["name"] for p in pods()]
    start = time.monotonic()
    load = wrk(limit, connections, url=GATEWAY)
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
    out, _ = load.communicate()  # the step runs its whole length: p99 and failures of all of it
    step = {"p99_ms": p99_ms(out), "failed": failed(out), "rps": requests_per_second(out)}
    return {**marks, **step, **scale_down(limit=300)}


def scale_down(limit: float) -> dict[str, float | int | None]:
    """After the step: a light load (one keep-alive client, 10 requests/s through the gateway)
    until the HPA is back to one pod: how long that took from the step's end, the most pods
    seen, and the light load's requests and failures (a pod removed under it must cost none)."""
    counts = {"sent": 0, "failed": 0}

    def light(stop: threading.Event) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(0.1):
                counts["sent"] += 1
                try:
                    ok = client.post(GATEWAY + INFER, json=v2_body(1)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                counts["failed"] += not ok

    start, peak, back = time.monotonic(), 0, None
    with in_threads(light, threads=1):
        while time.monotonic() - start < limit:
            current = len(pods())  # Terminating pods are no longer counted
            peak = max(peak, current)
            if current == 1:
                back = round(time.monotonic() - start, 1)
                break
            time.sleep(1)
    return {"back_to_one_s": back, "peak_pods": peak, "after_sent": counts["sent"],
            "after_failed": counts["failed"]}  # fmt: skip


def values_kind() -> dict:
    return yaml.safe_load((ROOT / "k8s" / "values-kind.yaml").read_text())


PARTS = ("throughput", "gateway", "shares", "capacity", "reaction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)} to run (all)"
    )
    parser.add_argument("--cpu", default="400m", help="CPU request and limit per pod")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--share-seconds", type=float, default=30, help="per canary weight")
    parser.add_argument("--users", type=int, default=20, help="Locust users for the shares")
    parser.add_argument("--p99-goal-ms", type=float, default=100, help="one pod's capacity: p99")
    parser.add_argument("--step-connections", type=int, default=64, help="the load step's size")
    parser.add_argument("--step-seconds", type=float, default=90, help="the load step's length")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if unknown := parts - set(PARTS):
        sys.exit(f"bench-cluster: no part {', '.join(sorted(unknown))}; choose from {PARTS}")
    tool("wrk")
    result: dict = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_per_pod": args.cpu,
    }
    try:
        if "throughput" in parts:
            result["throughput"] = throughput(args.cpu, args.rounds, args.seconds, args.connections)
        if "gateway" in parts:
            result["gateway_cost"] = gateway_cost(args.cpu, args.rounds, args.seconds,
                                                  args.connections)  # fmt: skip
        if "shares" in parts:
            result["shares"] = canary_shares(args.share_seconds, args.users)
        # At the demo's requests and limits from here on.
        helm_demo_values()
        if "capacity" in parts:
            result["capacity"] = capacity(args.seconds, args.p99_goal_ms)
        if "reaction" in parts:
            result["reaction"] = {
                hpa: reaction(args.step_connections, args.step_seconds, hpa == "requests")
                for hpa in ("cpu", "requests")
            }
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"cluster-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")  # whatever was measured
        helm_demo_values()
    for part, show in (("throughput", show_throughput), ("gateway_cost", show_gateway_cost),
                       ("shares", show_shares), ("capacity", show_capacity),
                       ("reaction", show_reaction)):  # fmt: skip
        if part in result:
            show(result[part], args)
    console.print(f"written: {path}")


def helm_demo_values() -> None:
    """The release as k8s/values-kind.yaml has it: HPA on, its requests, limits and metrics."""
    helm_set("autoscaling.enabled=true", demo=True)


def show_throughput(runs: dict[int, list[float]], args: argparse.Namespace) -> None:
    medians = {n: statistics.median(v) for n, v in runs.items()}
    table = Table(title=f"kind cluster, {args.cpu} CPU per pod, wrk -c{args.connections}")
    table.add_column("replicas")
    table.add_column("req/s (median)", justify="right")
    table.add_column("vs 1 pod", justify="right")
    for n, rps in medians.items():
        table.add_row(str(n), f"{rps:.0f}", f"{rps / medians[1]:.2f}x")
    console.print(table)
    console.print(f"scaling efficiency: 2 pods {medians[2] / (2 * medians[1]):.3f}, "
                  f"3 pods {medians[3] / (3 * medians[1]):.3f}")  # fmt: skip


def show_gateway_cost(cost: dict, args: argparse.Namespace) -> None:
    ratios = [g / d for g, d in zip(cost["gateway"]["rps"], cost["direct"]["rps"], strict=True)]
    p99s = [g / d for g, d in zip(cost["gateway"]["p99_ms"], cost["direct"]["p99_ms"],
                                  strict=True)]  # fmt: skip
    console.print(
        f"one pod through the gateway: {statistics.median(ratios):.2f}x the req/s of straight "
        f"to it, p99 {statistics.median(p99s):.2f}x (medians of per-round ratios; direct "
        f"{statistics.median(cost['direct']['rps']):.0f} req/s, gateway "
        f"{statistics.median(cost['gateway']['rps']):.0f} req/s)"
    )


def show_shares(shares: dict, args: argparse.Namespace) -> None:
    table = Table(title="canary share of answers through the gateway (Locust, steady)")
    for column in ("weight %", "measured %", "answers"):
        table.add_column(column, justify="right")
    for weight, measured in shares["load"].get("canary_shares", {}).items():
        table.add_row(str(weight), str(measured["share_pct"]), str(measured["answers"]))
    console.print(table)
    console.print(f"at weight 0: {shares['at_weight_0']} (report {shares['report']})")


def show_capacity(found: dict, args: argparse.Namespace) -> None:
    level = found["levels"][found["knee_connections"]]
    console.print(
        f"one pod's knee: {found['knee_connections']} connections, {level['rps']:.0f} req/s, "
        f"p99 {level['p99_ms']:.1f} ms (goal {found['p99_goal_ms']:g} ms): for real traffic set "
        f'autoscaling.podsMetrics to [{{name: {REQUEST_RATE}, averageValue: "{found["target"]}"}}]'
    )


def show_reaction(runs: dict[str, dict], args: argparse.Namespace) -> None:
    table = Table(title=f"a load step, 1 pod -> wrk -c{args.step_connections} for "
                        f"{args.step_seconds:g} s through the gateway")  # fmt: skip
    for column in ("HPA on", "asks (s)", "new pod Ready (s)", "answers (s)", "p99 ms", "req/s",
                   "failed", "pods at its end", "back to 1 (s)", "failed after"):  # fmt: skip
        table.add_column(column, justify="right")
    for hpa, m in runs.items():
        table.add_row("CPU" if hpa == "cpu" else "requests/s + CPU", str(m["hpa_wants_more_s"]),
                      str(m["new_pod_ready_s"]), str(m["new_pod_answers_s"]),
                      f"{m['p99_ms']:.1f}", f"{m['rps']:.0f}", str(m["failed"]),
                      str(m["peak_pods"]), str(m["back_to_one_s"]),
                      f"{m['after_failed']} of {m['after_sent']}")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
