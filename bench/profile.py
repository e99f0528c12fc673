"""`make profile`: where an inference request's time goes inside the server, without HTTP.

Drives the server's ASGI app in-process with waves of concurrent single-row V2 requests (so
batching forms batches, as under load), on the models `make bench` serves, and prints the
app's wall time per request. With `--profile`, a second pass under cProfile: its functions by
their own time, and the shares of the request's stages. What the app costs here, plus what
uvicorn costs the bench's floor app (its CPU µs per request), is about what a request costs
under wrk.
"""

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.run import MODEL, by_column_body, publish_models, v2_body
from mlscale.service.rest.app import create_app
from mlscale.service.rest.fastpath import FastPath
from mlscale.service.settings import ModelSettings, Settings

# The request's stages, by the function that does each: (its file, its name). Cumulative
# time, so a stage nested in another (the prediction metrics inside inference) overlaps it.
WHOLE = ("rest/fastpath.py", "__call__")
STAGES = {
    "read the body": ("rest/endpoints.py", "read_body"),
    "decode and check the request": ("codecs/protocol.py", "decode_infer_request"),
    "infer (the model, batching, the prediction metrics)": ("runtime/dataplane.py", "infer"),
    "count the answer in the prediction metrics": ("runtime/dataplane.py", "_count"),
    "encode the answer": ("codecs/protocol.py", "encode_infer_response"),
    "write the headers": ("rest/answer.py", "response_headers"),
    "find the route": ("rest/routes.py", "match"),
    "count and time the request": ("service/metrics.py", "request"),
}


async def drive(app: FastPath, path: str, body: bytes, requests: int, concurrency: int) -> float:
    """Seconds the app took for `requests` requests, sent `concurrency` at a time."""
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}  # fmt: skip
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def one() -> None:
        status = 0

        async def send(sent: dict[str, Any]) -> None:
            nonlocal status
            status = sent.get("status", status)

        await app(scope, receive, send)
        if status != 200:
            raise SystemExit(f"{path} answered {status}: the request is wrong, not slow")

    waves = max(1, requests // concurrency)
    start = time.perf_counter()
    for _ in range(waves):
        await asyncio.gather(*[one() for _ in range(concurrency)])
    return (time.perf_counter() - start) / (waves * concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=[MODEL, "flowers", "boosted"], default=MODEL)
    parser.add_argument(
        "--runtime", choices=["auto", "sklearn"], default="auto",
        help="auto: flowers and boosted run compiled; sklearn: their joblib files",
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", action="store_true",
                        help="then run again under cProfile: the stages' shares")  # fmt: skip
    args = parser.parse_args()

    store = Path(tempfile.mkdtemp(prefix="mlscale-profile-"))
    row = publish_models(store)
    body = v2_body(1) if args.model != "flowers" else by_column_body(row)
    model = ModelSettings(model_dir=store, model_name=args.model, runtime=args.runtime)
    app = create_app(Settings(model=model))
    path = f"/v2/models/{args.model}/infer"

    async def run() -> None:
        app.plane.load()
        gc.freeze()  # as the server does after loading
        payload = json.dumps(body).encode()
        await drive(app, path, payload, 10 * args.concurrency, args.concurrency)  # warm up
        seconds = await drive(app, path, payload, args.requests, args.concurrency)
        if args.profile:  # a second pass: cProfile slows every call, so it is timed apart
            profiler = cProfile.Profile()
            profiler.enable()
            await drive(app, path, payload, args.requests, args.concurrency)
            profiler.disable()
            report(pstats.Stats(profiler))
        print(f"{args.model} ({args.runtime}): {seconds * 1e6:.1f} µs per request in the app")
        await app.plane.close()

    uvloop.run(run())


def report(stats: pstats.Stats) -> None:
    stats.sort_stats("tottime").print_stats(25)
    rows = stats.stats.items()  # type: ignore[attr-defined]
    cumulative = {(file, name): row[3] for (file, _, name), row in rows}

    def seconds(where: tuple[str, str]) -> float:
        return sum(t for (file, name), t in cumulative.items()
                   if name == where[1] and file.endswith(where[0]))  # fmt: skip

    whole = seconds(WHOLE)
    for stage, where in STAGES.items():
        print(f"{stage}: {seconds(where) / whole:.0%}")


if __name__ == "__main__":
    main()
