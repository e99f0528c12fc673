"""`make bench-image`: image size and cold start, against the tutorial-style single-stage image.

The naive image is built the way FastAPI's docs teach (`pip install -r requirements.txt` of
fastapi, uvicorn, scikit-learn, numpy, joblib, then the app and model) from the same base image
as ours, in the same run. Cold start: `docker run` to the first successful answer, median of 5.
The slim image (compiled models only) is measured serving the flowers pipeline compiled, from a
mounted store, beside the full image serving the same.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from examples import flowers
from mlscale.service.artifacts.manifest import ARTIFACT
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.artifacts.train import train_version
from mlscale.service.publish import publish

ROOT = Path(__file__).resolve().parent.parent
console = Console()
NAIVE_DOCKERFILE = """\
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
WORKDIR /app
COPY requirements.txt .
RUN --mount=type=secret,id=pipcert python3 -m venv /venv \\
 && if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \\
 && /venv/bin/pip install --no-cache-dir --upgrade -r requirements.txt
COPY naive_app.py model.joblib ./
ENV MODEL=/app/model.joblib
CMD ["/venv/bin/uvicorn", "naive_app:app", "--host", "0.0.0.0", "--port", "8080"]
"""


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def cold_start(
    docker: str, image: str, probe: tuple[str, str, dict | None], runs: int, args: list[str]
) -> float:
    method, path, body = probe
    times = []
    for _ in range(runs):
        start = time.monotonic()
        cid = sh(docker, "run", "-d", "-p", "127.0.0.1::8080", *args, image)
        try:
            port = sh(docker, "port", cid, "8080/tcp").splitlines()[0].rsplit(":", 1)[1]
            while True:
                if sh(docker, "inspect", "--format", "{{.State.Running}}", cid) != "true":
                    raise SystemExit(f"{image} exited:\n{sh(docker, 'logs', cid)}")
                try:
                    r = httpx.request(
                        method, f"http://127.0.0.1:{port}{path}", json=body, timeout=1
                    )
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
            times.append(time.monotonic() - start)
        finally:
            sh(docker, "rm", "-f", cid)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    docker = sh(str(ROOT / "scripts" / "docker-engine.sh"))
    ours = sh(str(ROOT / "scripts" / "build-image.sh"))
    local_base = "mlscale-base/debian-python:bookworm"  # what build-image.sh makes offline
    has_local = subprocess.run([docker, "image", "inspect", local_base], capture_output=True)
    base_image = os.environ.get("BASE_IMAGE") or (
        local_base if has_local.returncode == 0 else "python:3.12-slim"
    )
    with tempfile.TemporaryDirectory() as ctx:
        context = Path(ctx)
        (context / "Dockerfile").write_text(NAIVE_DOCKERFILE)
        (context / "requirements.txt").write_text("fastapi\nuvicorn\nscikit-learn\nnumpy\njoblib\n")
        shutil.copy(ROOT / "bench" / "naive_app.py", context)
        store = ModelStore(context / "store")
        train_version(store, "multilinear", "1")
        shutil.copy(store.root / "multilinear" / "1" / ARTIFACT, context / "model.joblib")
        secret = ["--secret", "id=pipcert,src=/etc/ssl/certs/ca-certificates.crt"]
        subprocess.run([docker, "build", "-q", *secret, "--build-arg", f"BASE_IMAGE={base_image}",
                        "-t", "mlscale-naive:bench", str(context)], check=True,
                       env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True)  # fmt: skip
    one_row = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                           "data": [1, 2, 3, 4]}]}  # fmt: skip
    with tempfile.TemporaryDirectory() as mounted:
        # The slim image holds no models: the flowers pipeline, compiled, in a mounted store
        # (as a model image fills a pod's); the full image answers the same, from the same.
        store = Path(mounted) / "models"
        pipe, x_train, x_test, y_test = flowers.train()
        publish(pipe, "flowers", model_dir=store, sample=x_train.head(), holdout=(x_test, y_test))
        Path(mounted).chmod(0o755)
        served = ["-v", f"{store}:/models:ro", "-e", "MLSCALE_MODEL_DIR=/models",
                  "-e", "MLSCALE_MODEL_NAME=flowers"]  # fmt: skip
        flowers_row = ("POST", "/predict", {"instances": x_test.head(1).to_dict(orient="records")})
        rows = []
        for name, image, probe, extra in [
            ("mlscale (multi-stage)", ours, ("GET", "/v2/health/ready", None), []),
            ("mlscale, first inference", ours, ("POST", "/v2/models/iris/infer", one_row), []),
            ("mlscale, compiled flowers", ours, flowers_row, served),
            ("mlscale slim, compiled flowers", f"{ours}-slim", flowers_row, served),
            ("naive single-stage", "mlscale-naive:bench",
             ("POST", "/predict", {"instances": [[1, 2, 3, 4]]}), []),
        ]:  # fmt: skip
            size = int(sh(docker, "image", "inspect", "--format", "{{.Size}}", image))
            rows.append((name, size / 1e6, cold_start(docker, image, probe, args.runs, extra)))
    base_size = int(sh(docker, "image", "inspect", "--format", "{{.Size}}", base_image)) / 1e6
    table = Table("image", "size MB", f"cold start s (median of {args.runs})",
                  title=f"base {base_image}: {base_size:.0f} MB")  # fmt: skip
    for name, size, start in rows:
        table.add_row(name, f"{size:.0f}", f"{start:.2f}")
    console.print(table)
    naive_mb = rows[-1][1]
    for name, mb in (("mlscale", rows[0][1]), ("mlscale slim", rows[3][1])):
        console.print(
            f"{name} / naive: size {mb / naive_mb:.2f}x; above the base "
            f"{(mb - base_size) / (naive_mb - base_size):.2f}x ({mb - base_size:.0f} MB vs "
            f"{naive_mb - base_size:.0f} MB)"
        )


if __name__ == "__main__":
    main()
