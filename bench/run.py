"""`make bench`: requests/s and latency of mlscale against a naive FastAPI app and the floor.

Each server runs pinned to core 0 and wrk to core 1 (a C load generator: Python ones top out
below the server). All rows come from one run, in rounds: this machine is noisy, so compare
the ratios, which are taken within each round and then the median over rounds. Besides
requests/s, each run records the server's CPU time per request (user + system, from /proc),
which a busy neighbour on the host disturbs less than throughput.
Writes bench/results/<time>.json and prints a table.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from examples import flowers
from mlscale.service.artifacts.manifest import ARTIFACT
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.artifacts.train import ensure_versions
from mlscale.service.publish import publish

ROOT = Path(__file__).resolve().parent.parent
MODEL = "multilinear"
ROW = [0.1, 0.2, 0.3, 0.4]
NAIVE = "naive FastAPI (pydantic, sync, predict)"
NAIVE_PIPELINE = "naive FastAPI, flowers pipeline (DataFrame per request)"
PIPELINE = "mlscale, flowers pipeline (batching)"
COMPILED = "mlscale, flowers pipeline compiled (onnxruntime, batching)"
BOOSTED = "mlscale, scaled histogram boosting (scikit-learn, batching)"
BOOSTED_COMPILED = "mlscale, scaled histogram boosting compiled (onnxruntime, batching)"
FLOOR_GATHERED = "floor through mlscale's transport"
LIVE = "mlscale, liveness probe (GET, no model)"
IRIS, IRIS_SKLEARN = "mlscale, iris (exact formula)", "mlscale, iris (scikit-learn, batching)"
console = Console()


def publish_models(store_dir: Path) -> list[dict]:
    """The benched models, in a store: the linear MODEL, the iris example, the flowers pipeline
    and "boosted", both compiled. Returns a flowers test row, by column."""
    for name in (MODEL, "iris"):
        ensure_versions(ModelStore(store_dir), name, 1)
    pipe, x_train, x_test, _ = flowers.train()
    publish(pipe, "flowers", model_dir=store_dir, sample=x_train.head())
    # A numeric pipeline of the kind people fit to tables of numbers: iris's four features,
    # scaled, into histogram gradient boosting (the same four-number rows as the linear model).
    x, y = load_iris(return_X_y=True)
    boosted = make_pipeline(StandardScaler(), HistGradientBoostingClassifier(random_state=0))
    publish(boosted.fit(x, y), "boosted", model_dir=store_dir, sample=x[:5], holdout=(x, y))
    return x_test.head(1).to_dict(orient="records")


def v2_body(rows: int) -> dict:
    data = ROW * rows
    return {"inputs": [{"name": "input-0", "shape": [rows, 4], "datatype": "FP64", "data": data}]}


@dataclass(frozen=True)
class Raw:
    """A request body as bytes, with its headers (the binary tensor data extension)."""

    body: bytes
    headers: dict[str, str]


def precise_rows(rows: int) -> list[float]:
    """Full-precision doubles (what real features look like), where JSON spends ~19 bytes on
    each number that binary sends in 8."""
    return [1 / (i + 3) for i in range(rows * 4)]


def binary_body(data: list[float]) -> Raw:
    header = {"inputs": [{"name": "input-0", "shape": [len(data) // 4, 4], "datatype": "FP64",
                          "parameters": {"binary_data_size": 8 * len(data)}}],
              "parameters": {"binary_data_output": True}}  # fmt: skip
    head = json.dumps(header).encode()
    return Raw(
        head + struct.pack(f"<{len(data)}d", *data),
        {"Content-Type": "application/octet-stream",
         "Inference-Header-Content-Length": str(len(head))},
    )  # fmt: skip


def by_column_body(rows: list[dict]) -> dict:
    columns = list(rows[0])
    return {"inputs": [{"name": c, "shape": [len(rows)],
                        "datatype": "BYTES" if isinstance(rows[0][c], str) else "FP64",
                        "data": [r[c] for r in rows]} for c in columns]}  # fmt: skip


def lua_request(body: dict | Raw) -> str:
    """wrk's request: a JSON body in a long string, raw bytes as decimal escapes."""
    if isinstance(body, dict):  # [==[ ]==]: [[ ]] would end at a JSON ']]'
        return (
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{json.dumps(body)}]==]\n"
        )
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in body.headers.items())
    escaped = "".join(f"\\{b}" for b in body.body)
    return f'wrk.method = "POST"\n{headers}wrk.body = "{escaped}"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Running:
    url: str
    pid: int  # taskset execs the server, so this is the server's own process


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(cmd: list[str], env: dict[str, str], probe: str) -> Iterator[Running]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, **env, "MLSCALE_PORT": str(port), "MLSCALE_HOST": "127.0.0.1"}
    cmd = ["taskset", "-c", "0", *[c.replace("{port}", str(port)) for c in cmd]]
    proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + probe, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{cmd} did not start")
            time.sleep(0.1)
        yield Running(url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wrk(
    target: Running, path: str, body: dict | Raw | None, connections: int, seconds: int
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            script.write(lua_request(body))
    url = target.url + path
    cpu_before = cpu_seconds(target.pid)
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(target.pid) - cpu_before
    os.unlink(script.name)

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"bench: {url} answered {errors.group(1)} requests with errors; numbers invalid")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "cpu_us": cpu / requests * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each configuration")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("wrk and taskset are needed: apt-get install wrk util-linux")

    store_dir = Path(tempfile.mkdtemp(prefix="mlscale-bench-"))
    pipeline_row = publish_models(store_dir)
    artifact = str(store_dir / MODEL / "1" / ARTIFACT)
    pipeline_artifact = str(store_dir / "flowers" / "1" / ARTIFACT)
    mlscale_env = {"MLSCALE_MODEL_DIR": str(store_dir), "MLSCALE_MODEL_NAME": MODEL,
                   "MLSCALE_LOG_LEVEL": "warning"}  # fmt: skip
    python = sys.executable
    serve = [python, "-m", "mlscale.service"]
    uvicorn = [python, "-m", "uvicorn", "--port", "{port}", "--log-level", "warning",
               "--no-access-log", "--loop", "uvloop", "--http", "httptools"]  # fmt: skip
    infer = f"/v2/models/{MODEL}/infer"
    one, many = v2_body(1), v2_body(64)
    precise = precise_rows(64)
    precise_json = {"inputs": [{**many["inputs"][0], "data": precise}]}
    naive_one, naive_many = {"instances": [ROW]}, {"instances": [ROW] * 64}
    # (row name, command, env, probe path, request path, bodies by scenario)
    # The floor again, but sending through mlscale's transport (service/rest/transport.py): how
    # much of mlscale's standing against the floor is its app, and how much its writes.
    floor_gathered = [python, "-c", "import uvicorn; from mlscale.service.rest.transport import "
                      "GatheredWritesProtocol as P; uvicorn.run('bench.floor_app:app', "
                      "port={port}, log_level='warning', access_log=False, loop='uvloop', "
                      "http=P, lifespan='off')"]  # fmt: skip
    servers = [
        ("floor: bare ASGI, fixed JSON", [*uvicorn, "--lifespan", "off", "bench.floor_app:app"],
         {}, "/", "/", {"1 row": None}),
        (FLOOR_GATHERED, floor_gathered, {}, "/", "/", {"1 row": None}),
        (NAIVE, [*uvicorn, "bench.naive_app:app"],
         {"MODEL": artifact}, "/docs", "/predict", {"1 row": naive_one, "64 rows": naive_many}),
        # mlscale's request path without a body or a model: its routing and request metrics.
        (LIVE, serve, mlscale_env, "/v2/health/ready", "/v2/health/live", {"1 row": None}),
        ("mlscale (default)", serve, mlscale_env, "/v2/health/ready", infer,
         {"1 row": one, "64 rows": many, "64 precise rows, JSON": precise_json,
          "64 precise rows, binary": binary_body(precise)}),
        (NAIVE_PIPELINE, [*uvicorn, "bench.naive_app:app"], {"MODEL": pipeline_artifact},
         "/docs", "/predict-frame", {"pipeline, 1 row": {"instances": pipeline_row}}),
        (PIPELINE, serve, {**mlscale_env, "MLSCALE_MODEL_NAME": "flowers",
                           "MLSCALE_RUNTIME": "sklearn"},
         "/v2/health/ready", "/v2/models/flowers/infer",
         {"pipeline, 1 row": by_column_body(pipeline_row)}),
        # The same version, published compiled, on its ONNX graphs.
        (COMPILED, serve, {**mlscale_env, "MLSCALE_MODEL_NAME": "flowers"},
         "/v2/health/ready", "/v2/models/flowers/infer",
         {"pipeline, 1 row": by_column_body(pipeline_row)}),
        (BOOSTED, serve, {**mlscale_env, "MLSCALE_MODEL_NAME": "boosted",
                          "MLSCALE_RUNTIME": "sklearn"},
         "/v2/health/ready", "/v2/models/boosted/infer", {"1 row": one}),
        (BOOSTED_COMPILED, serve, {**mlscale_env, "MLSCALE_MODEL_NAME": "boosted"},
         "/v2/health/ready", "/v2/models/boosted/infer", {"1 row": one}),
        # The iris example (logistic regression) on its formula, and on scikit-learn's predict:
        # a linear model is not compiled, the formula being its faster runtime.
        (IRIS, serve, {**mlscale_env, "MLSCALE_MODEL_NAME": "iris"}, "/v2/health/ready",
         "/v2/models/iris/infer", {"1 row": one}),
        (IRIS_SKLEARN, serve, {**mlscale_env, "MLSCALE_MODEL_NAME": "iris",
                               "MLSCALE_FAST_PATH": "false"},
         "/v2/health/ready", "/v2/models/iris/infer", {"1 row": one}),
        ("mlscale, sklearn predict, batching off", serve,
         {**mlscale_env, "MLSCALE_FAST_PATH": "false", "MLSCALE_BATCH_ENABLED": "false"},
         "/v2/health/ready", infer, {"1 row": one}),
        ("mlscale, sklearn predict, batching on", serve,
         {**mlscale_env, "MLSCALE_FAST_PATH": "false"},
         "/v2/health/ready", infer, {"1 row": one}),
    ]  # fmt: skip
    # All servers run at once (idle ones cost nothing) and the runs go round-robin, so the
    # machine's drift over minutes hits every configuration alike; medians are reported.
    runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    with ExitStack() as stack:
        running = {name: stack.enter_context(server(cmd, env, probe))
                for name, cmd, env, probe, _, _ in servers}  # fmt: skip
        plan = [(name, path, scenario, body, connections)
                for name, _, _, _, path, bodies in servers
                for scenario, body in bodies.items() for connections in (8, 64)]  # fmt: skip
        for round_ in range(1, args.rounds + 1):
            for name, path, scenario, body, connections in plan:
                console.print(f"[dim]round {round_}/{args.rounds} · {name} · {scenario} · "
                              f"c={connections}[/]")  # fmt: skip
                r = wrk(running[name], path, body, connections, args.seconds)
                runs.setdefault((name, scenario, connections), []).append(r)
    results = [
        {"server": name, "scenario": scenario, "connections": connections,
         **{k: statistics.median(r[k] for r in rs) for k in rs[0]}, "runs": rs}
        for (name, scenario, connections), rs in runs.items()
    ]  # fmt: skip
    shutil.rmtree(store_dir)

    def ratio(a: str, b: str, scenario: str = "1 row", key: str = "rps", versus: str = "") -> float:
        """Median over rounds of a/b at 64 connections, both taken in the same round;
        `versus`: b's scenario, where it differs from a's."""
        pairs = zip(runs[(a, scenario, 64)], runs[(b, versus or scenario, 64)], strict=True)
        if key == "cpu_us":  # less CPU per request is better: floor/mlscale, like req/s
            return statistics.median(y[key] / x[key] for x, y in pairs)
        return statistics.median(x[key] / y[key] for x, y in pairs)

    mlscale, floor, naive = "mlscale (default)", "floor: bare ASGI, fixed JSON", NAIVE
    ratios = {
        "mlscale / naive, req/s, 1 row, c=64": ratio(mlscale, naive),
        "mlscale / floor, req/s, 1 row, c=64": ratio(mlscale, floor),
        "mlscale / floor, CPU per request, 1 row, c=64": ratio(mlscale, floor, key="cpu_us"),
        "mlscale / floor through mlscale's transport, req/s, c=64": ratio(mlscale, FLOOR_GATHERED),
        "liveness probe / floor through mlscale's transport, req/s, c=64": ratio(
            LIVE, FLOOR_GATHERED),
        "iris: formula / scikit-learn, req/s, 1 row, c=64": ratio(IRIS, IRIS_SKLEARN),
        "pipeline: mlscale / naive, req/s, 1 row, c=64": ratio(
            PIPELINE, NAIVE_PIPELINE, "pipeline, 1 row"),
        "pipeline: compiled / scikit-learn, req/s, 1 row, c=64": ratio(
            COMPILED, PIPELINE, "pipeline, 1 row"),
        "pipeline: compiled / scikit-learn, CPU per request, 1 row, c=64": ratio(
            COMPILED, PIPELINE, "pipeline, 1 row", "cpu_us"),
        "histogram boosting: compiled / scikit-learn, req/s, 1 row, c=64": ratio(
            BOOSTED_COMPILED, BOOSTED),
        "histogram boosting: compiled / scikit-learn, CPU per request, 1 row, c=64": ratio(
            BOOSTED_COMPILED, BOOSTED, key="cpu_us"),
        "64 precise rows: binary / JSON, req/s, c=64": ratio(
            mlscale, mlscale, "64 precise rows, binary", versus="64 precise rows, JSON"),
        "64 precise rows: binary / JSON, CPU per request, c=64": ratio(
            mlscale, mlscale, "64 precise rows, binary", "cpu_us", "64 precise rows, JSON"),
        "batching on / off (sklearn predict), req/s, c=64": ratio(
            "mlscale, sklearn predict, batching on", "mlscale, sklearn predict, batching off"),
    }  # fmt: skip
    title = f"server on one core, wrk on the other; median of {args.rounds} runs"
    table = Table("server", "request", "conns", "req/s", "p50 ms", "p99 ms", "CPU µs/req",
                  title=title)  # fmt: skip
    for r in results:
        table.add_row(r["server"], r["scenario"], str(r["connections"]), f"{r['rps']:,.0f}",
                      f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['cpu_us']:.0f}")  # fmt: skip
    console.print(table)
    for label, value in ratios.items():
        console.print(f"{label}: [bold]{value:.2f}x[/]")
    sizes = {
        "JSON": len(json.dumps(precise_json).encode()),
        "binary": len(binary_body(precise).body),
    }
    console.print(
        f"request bytes, 64 precise rows: JSON {sizes['JSON']:,}, binary {sizes['binary']:,}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(
        json.dumps({"results": results, "ratios": ratios, "request_bytes": sizes}, indent=2) + "\n"
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
