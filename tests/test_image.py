"""The container image, built and run for real (skips with the reason where Docker can't be had)."""

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from examples import flowers
from mlscale.rollout.modelimage import read_manifest
from mlscale.service.artifacts.package import package
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.publish import publish
from tests.conftest import ROOT

pytestmark = pytest.mark.docker
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", "10001:10001"]  # fmt: skip


@pytest.fixture(scope="session")
def docker() -> str:
    engine = subprocess.run([ROOT / "scripts" / "docker-engine.sh"], capture_output=True, text=True)
    if engine.returncode != 0:
        pytest.skip(f"no Docker engine: {engine.stderr.strip()}")
    return engine.stdout.strip()


@pytest.fixture(scope="session")
def image(docker: str) -> str:
    build = subprocess.run([ROOT / "scripts" / "build-image.sh"], capture_output=True, text=True,
                           env={**os.environ, "TAG": "mlscale:test"})  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    return build.stdout.strip()


def sh(*cmd: str, check: bool = True) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd}: {result.stderr}")
    return result.stdout.strip()


def state(docker: str, container: str) -> dict:
    return json.loads(sh(docker, "inspect", "--format", "{{json .State}}", container))


@contextmanager
def container(
    docker: str, image: str, *, healthy: bool = True, **env: str
) -> Iterator[tuple[str, str]]:
    """A hardened container; yields (id, base URL) once Docker's HEALTHCHECK says healthy."""
    flags = [f"--env=MLSCALE_{k.upper()}={v}" for k, v in env.items()]
    cid = sh(docker, "run", "-d", *HARDENED, "-p", "127.0.0.1::8080", *flags, image)
    try:
        port = sh(docker, "port", cid, "8080/tcp").splitlines()[0].rsplit(":", 1)[1]
        if healthy:
            deadline = time.monotonic() + 90
            while (status := state(docker, cid))["Health"]["Status"] != "healthy":
                assert status["Running"], sh(docker, "logs", cid)
                assert time.monotonic() < deadline, "not healthy in 90 s"
                time.sleep(0.2)
        yield cid, f"http://127.0.0.1:{port}"
    finally:
        sh(docker, "rm", "-f", cid, check=False)


def one_row(features: int) -> dict:
    data = [1.0] * features
    return {"inputs": [{"name": "input-0", "shape": [1, features], "datatype": "FP64",
                        "data": data}]}  # fmt: skip


@pytest.mark.parametrize(("name", "features"), [("linear", 1), ("multilinear", 4), ("iris", 4)])
def test_each_model_serves_the_version_the_environment_chose(
    docker, image, model_dir, name, features
):
    _, local = ModelStore(model_dir).load(name, "2")
    with container(docker, image, model_name=name, model_version="2") as (_, url):
        r = httpx.post(f"{url}/v2/models/{name}/infer", json=one_row(features), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "2" and r.json()["model_version"] == "2"
    expected = local.predict([[1.0] * features])[0]
    assert r.json()["outputs"][0]["data"][0] == pytest.approx(expected, rel=1e-9)


def test_runs_as_non_root_with_nothing_extra_inside(docker, image):
    with container(docker, image) as (cid, _):
        uid = sh(docker, "exec", cid, "python", "-c", "import os; print(os.getuid(), os.getgid())")
    assert uid == "10001 10001"
    probe = (
        "import importlib.util as u, shutil, pathlib, sys\n"
        "bad = [m for m in ('pip', 'locust', 'kubernetes', 'matplotlib', 'pytest', 'hypothesis')"
        " if u.find_spec(m)]\n"
        "bad += [c for c in ('gcc', 'cc', 'g++', 'make') if shutil.which(c)]\n"
        "bad += [str(p) for p in pathlib.Path('/').glob('*/.cache/pip')]\n"
        "bad += [str(p) for p in pathlib.Path(sys.prefix).rglob('site-packages/*/tests')][:3]\n"
        "bad += [p for p in ('/src', '/tests', '/opt/tests') if pathlib.Path(p).exists()]\n"
        "print(bad)\n"
    )
    assert sh(docker, "run", "--rm", *HARDENED, image, "python", "-c", probe) == "[]"
    labels = json.loads(sh(docker, "inspect", "--format", "{{json .Config.Labels}}", image))
    assert labels["org.opencontainers.image.version"] and "iris:1,2" in labels["dev.mlscale.models"]


def test_docker_stop_under_load_loses_nothing_and_exits_zero(docker, image):
    delay, grace = 2, 10
    with container(docker, image, model_name="multilinear", shutdown_delay_s=str(delay),
                   grace_period_s=str(grace)) as (cid, url):  # fmt: skip
        statuses: list[int] = []
        errors: list[Exception] = []
        stop_sending = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=url, timeout=10) as c:
                while not stop_sending.is_set():
                    try:
                        r = c.post("/v2/models/multilinear/infer", json=one_row(4))
                        statuses.append(r.status_code)
                    except httpx.HTTPError as exc:
                        errors.append(exc)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        while len(statuses) < 50:
            time.sleep(0.05)
        started = time.monotonic()
        stopper = subprocess.Popen([docker, "stop", "-t", str(delay + grace + 5), cid])
        time.sleep(delay / 2)  # load keeps flowing inside the drain window, then stops
        stop_sending.set()
        for t in threads:
            t.join()
        assert stopper.wait(timeout=60) == 0
        took = time.monotonic() - started
        final = state(docker, cid)
        logs = subprocess.run([docker, "logs", cid], capture_output=True, text=True).stderr
    assert errors == [] and set(statuses) == {200}, (errors[:3], set(statuses))
    assert final["ExitCode"] == 0, logs
    assert delay <= took < delay + grace, took
    assert "SIGTERM: not ready" in logs


def test_unknown_version_never_turns_healthy_and_says_why(docker, image):
    with container(docker, image, healthy=False, model_name="iris", model_version="9") as (cid, _):
        deadline = time.monotonic() + 60
        while state(docker, cid)["Running"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        final = state(docker, cid)
        logs = subprocess.run([docker, "logs", cid], capture_output=True, text=True)
    assert final["ExitCode"] != 0
    assert final.get("Health", {}).get("Status") != "healthy"
    assert "model 'iris' has no version '9'; the store has 1, 2" in logs.stdout + logs.stderr


def test_a_model_image_carries_one_version_into_a_pod_store(
    docker: str, tmp_path: Path, monkeypatch
):
    """`mlscale package` on the local busybox base, run as the chart's init container runs it:
    hardened, as the server's user, copying into an empty store the server then verifies."""
    sh(str(ROOT / "scripts" / "model-base.sh"))
    pipe, x_train, x_test, y_test = flowers.train()
    store = ModelStore(tmp_path / "models")
    publish(pipe, "flowers", model_dir=store.root, version="3", sample=x_train.head(),
            holdout=(x_test, y_test))  # fmt: skip
    monkeypatch.setenv("MLSCALE_DOCKER", docker)
    built = package(store, "flowers", "3", tag="mlscale-model/flowers:test")
    labels = read_manifest(built.tag)
    assert labels == store.manifest("flowers", "3")  # the quality gate reads these metrics
    size = int(sh(docker, "image", "inspect", "--format", "{{.Size}}", built.tag))
    artifact = (store.root / "flowers" / "3" / "model.joblib").stat().st_size
    assert size < artifact + 5_000_000, size  # busybox and the version, nothing else
    pod_store = tmp_path / "pod-store"
    pod_store.mkdir()
    pod_store.chmod(0o777)  # an emptyDir is world-writable
    sh(docker, "run", "--rm", *HARDENED, "-v", f"{pod_store}:/mnt/models", built.tag)
    copied = ModelStore(pod_store)
    assert copied.versions("flowers") == ["3"] and copied.models() == ["flowers"]
    _, model = copied.load("flowers", "3")  # sha256 verified
    assert model.predict(x_test).tolist() == pipe.predict(x_test).tolist()


def test_the_image_installs_one_namespace_and_says_which_extra_a_command_needs(
    docker: str, image: str
):
    """Only the `serve` extra is installed: `mlscale rollout` names its extra instead of failing
    on an import, and no generic top-level package (`service`) lands in site-packages."""
    run = [docker, "run", "--rm", *HARDENED, image]
    rollout = subprocess.run([*run, "mlscale", "rollout", "status"], capture_output=True, text=True)
    assert rollout.returncode == 2, rollout.stderr
    assert "pip install 'mlscale[rollout]'" in rollout.stdout
    probe = "import importlib.util as u; print(u.find_spec('service'), u.find_spec('mlscale'))"
    found = sh(*run, "python", "-c", probe)
    assert found.startswith("None ModuleSpec(name='mlscale'"), found
    # Building model images is a container engine's work, not serving's: not in the image.
    probe = ("import importlib.util as u; print([m for m in ('package', 'engine', 'store') "
             "if u.find_spec(f'mlscale.service.artifacts.{m}')])")  # fmt: skip
    assert sh(*run, "python", "-c", probe) == "['store']"
    package = subprocess.run([*run, "mlscale", "package", "iris:1"], capture_output=True,
                             text=True)  # fmt: skip
    assert package.returncode == 2 and "which this server image leaves out" in package.stdout


def test_the_operator_image_carries_the_controller_and_no_model_runtime(docker: str, image: str):
    """`make image` builds the controller's image beside the server's: non-root, the
    Kubernetes client in, scikit-learn, numpy and pandas out, its entry point answering."""
    operator = image.replace("mlscale:", "mlscale-operator:", 1)
    run = [docker, "run", "--rm", *HARDENED]
    probe = ("import importlib.util as u, os; print(os.getuid(), [m for m in ('sklearn', "
             "'numpy', 'pandas', 'scipy', 'fastapi', 'pip') if u.find_spec(m)], "
             "bool(u.find_spec('kubernetes')))")  # fmt: skip
    assert sh(*run, "--entrypoint", "python", operator, "-c", probe) == "10001 [] True"
    usage = sh(*run, operator, "--help")
    assert "Run the rollout controller" in usage and "--lease-seconds" in usage


def test_the_slim_image_serves_compiled_versions_without_scikit_learn(
    docker: str, image: str, tmp_path: Path
):
    """`make image` builds the slim server (`<tag>-slim`): onnxruntime and numpy, no
    scikit-learn, scipy, pandas or joblib, no models of its own. It serves a compiled version
    from a mounted store (as a model image fills one in a pod), and refuses one that runs on
    scikit-learn in a sentence."""
    slim = f"{image}-slim"
    run = [docker, "run", "--rm", *HARDENED]
    probe = ("import importlib.util as u, os; print(os.getuid(), os.environ['MLSCALE_RUNTIME'], "
             "[m for m in ('sklearn', 'scipy', 'pandas', 'joblib', 'pip') if u.find_spec(m)], "
             "bool(u.find_spec('onnxruntime')))")  # fmt: skip
    assert sh(*run, slim, "python", "-c", probe) == "10001 onnx [] True"
    sizes = [int(sh(docker, "image", "inspect", "--format", "{{.Size}}", i)) for i in (slim, image)]
    assert sizes[0] < sizes[1], sizes
    publishing = subprocess.run([*run, slim, "mlscale", "publish", "x.joblib", "--name", "x"],
                                capture_output=True, text=True)  # fmt: skip
    assert publishing.returncode == 2 and "needs scikit-learn" in publishing.stdout
    pipe, x_train, x_test, y_test = flowers.train()
    store = tmp_path / "models"
    publish(pipe, "flowers", model_dir=store, sample=x_train.head(), holdout=(x_test, y_test))
    publish(pipe, "sklearn-flowers", model_dir=store, sample=x_train.head(), runtime="sklearn")
    mount = ["-v", f"{store}:/models:ro", "-p", "127.0.0.1::8080"]
    cid = sh(docker, "run", "-d", *HARDENED, *mount, "-e", "MLSCALE_MODEL_NAME=flowers",
             "-e", "MLSCALE_MODELS=sklearn-flowers", slim)  # fmt: skip
    try:
        port = sh(docker, "port", cid, "8080/tcp").splitlines()[0].rsplit(":", 1)[1]
        deadline = time.monotonic() + 90
        while state(docker, cid).get("Health", {}).get("Status") != "healthy":
            assert state(docker, cid)["Running"], sh(docker, "logs", cid)
            assert time.monotonic() < deadline, "not healthy in 90 s"
            time.sleep(0.2)
        rows = x_test.head(5)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict",
                            json={"instances": rows.to_dict(orient="records")}).json()  # fmt: skip
        refused = httpx.get(f"http://127.0.0.1:{port}/v2/models/sklearn-flowers/ready")
    finally:
        sh(docker, "rm", "-f", cid, check=False)
    assert answer["predictions"] == pipe.predict(rows).tolist()
    assert refused.status_code == 503
    assert "runs on scikit-learn" in refused.json()["error"]
