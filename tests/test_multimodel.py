"""One server serving a set of models: each with its own versions, readiness, metrics and
memory; a model that fails to load does not stop the others."""

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from typer.testing import CliRunner

from mlscale.service.artifacts.manifest import ARTIFACT
from mlscale.service.artifacts.store import ModelStore, sha256_of
from mlscale.service.cli import app, until_connected
from mlscale.service.contract import format_models, parse_models
from mlscale.service.publish import publish
from mlscale.service.settings import ModelSettings
from tests.conftest import free_port, run_server
from tests.helpers import v2

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def test_models_setting_reads_names_with_or_without_versions():
    assert parse_models(" flowers:2, linear ,,") == {"flowers": "2", "linear": "latest"}
    assert format_models(parse_models("flowers:2,linear")) == "flowers:2,linear:latest"
    assert ModelSettings(model_name="iris", models="linear:1").models == {"linear": "1"}
    with pytest.raises(ValueError, match="models lists 'iris', which is model_name already"):
        ModelSettings(model_name="iris", models="iris:1")


@pytest.fixture(scope="module")
def three(model_dir: Path):
    with run_server(model_dir, model_name="iris", model_version="2", extra_versions="1",
                    models="linear:1,multilinear") as server:  # fmt: skip
        yield server


def test_each_model_of_the_set_answers_for_itself(three, model_dir: Path):
    with three.client() as c:
        iris = c.post("/v2/models/iris/infer", json=v2([IRIS_ROW], [1, 4]))
        linear = c.post("/v2/models/linear/infer", json=v2([[2.0]], [1, 1]))
        multi = c.post("/v2/models/multilinear/infer", json=v2([[1.0, 2.0, 3.0, 4.0]], [1, 4]))
        old_iris = c.post("/v2/models/iris/versions/1/infer", json=v2([IRIS_ROW], [1, 4]))
        simple = c.post("/predict", json={"instances": [IRIS_ROW]})
    assert [r.status_code for r in (iris, linear, multi, old_iris, simple)] == [200] * 5
    assert (iris.json()["model_name"], iris.json()["model_version"]) == ("iris", "2")
    assert (linear.json()["model_name"], linear.json()["model_version"]) == ("linear", "1")
    assert multi.json()["model_name"] == "multilinear"
    assert multi.json()["model_version"] == ModelStore(model_dir).resolve("multilinear", "latest")
    assert old_iris.json()["model_version"] == "1"
    assert simple.json()["model_name"] == "iris"  # the unnamed path: the first model of the set


def test_each_model_has_its_own_metadata_and_readiness(three):
    with three.client() as c:
        for name in ("iris", "linear", "multilinear"):
            assert c.get(f"/v2/models/{name}/ready").json()["ready"] is True
            assert c.get(f"/v2/models/{name}").json()["name"] == name
        assert c.get("/v2/models/linear").json()["versions"] == ["1"]
        assert c.get("/v2/models/iris").json()["versions"] == ["2", "1"]
        unknown = c.get("/v2/models/wine")
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": "model 'wine' not found; this server serves 'iris', 'linear', 'multilinear'"
        }
        assert c.get("/v2/models/linear/versions/2/ready").status_code == 404  # not loaded


def test_metrics_are_labelled_by_model_and_memory_is_accounted_per_model(three):
    with three.client() as c:
        c.post("/v2/models/linear/infer", json=v2([[2.0]], [1, 1]))
        text = c.get("/metrics").text
    for name, version in (("iris", "2"), ("iris", "1"), ("linear", "1")):
        assert metric(text, "mlscale_model_memory_bytes", model=name, version=version) > 0
    for name in ("iris", "linear", "multilinear"):
        assert metric(text, "mlscale_model_ready", model=name) == 1
    assert metric(text, "mlscale_requests_total", model="linear", version="1", code="200") >= 1


def test_a_bigger_model_accounts_more_memory(tmp_path: Path, model_dir: Path):
    store = tmp_path / "models"
    shutil.copytree(model_dir, store)
    x, y = make_classification(500, 8, random_state=0)
    forest = RandomForestClassifier(100, random_state=0).fit(x, y)
    publish(forest, "forest", model_dir=store, runtime="sklearn")  # held by Python's allocator
    publish(forest, "graphs", model_dir=store)  # compiled: held by onnxruntime, natively
    assert ModelStore(store).manifest("graphs", "1").runtime == "onnx"
    served = run_server(store, model_name="linear", models="forest,graphs")
    with served as server, server.client() as c:
        text = c.get("/metrics").text
    linear = metric(text, "mlscale_model_memory_bytes", model="linear", version="2")
    for name in ("forest", "graphs"):
        held = metric(text, "mlscale_model_memory_bytes", model=name, version="1")
        assert held > 100 * 1024 and held > 20 * linear, (name, held, linear)


def test_a_model_that_fails_to_load_does_not_stop_the_others(tmp_path: Path, model_dir: Path):
    store = tmp_path / "models"
    shutil.copytree(model_dir, store)
    artifact = store / "linear" / "1" / ARTIFACT
    tampered = artifact.read_bytes()[:-1] + b"x"
    artifact.write_bytes(tampered)
    with run_server(store, model_name="iris", models="linear:1,multilinear") as server:
        with server.client() as c:
            assert c.get("/v2/health/ready").status_code == 200  # the others serve
            ok = c.post("/v2/models/multilinear/infer", json=v2([[1.0, 2.0, 3.0, 4.0]], [1, 4]))
            assert ok.status_code == 200
            assert c.post("/predict", json={"instances": [IRIS_ROW]}).status_code == 200
            for path in ("/v2/models/linear/ready", "/v2/models/linear/infer"):
                answer = c.request("GET" if path.endswith("ready") else "POST", path,
                                   json=v2([[2.0]], [1, 1]))  # fmt: skip
                assert answer.status_code == 503
                assert re.match(r"model 'linear' is not served: .*does not match the manifest",
                                answer.json()["error"]), answer.json()  # fmt: skip
            text = c.get("/metrics").text
        assert metric(text, "mlscale_model_ready", model="linear") == 0
        assert metric(text, "mlscale_model_ready", model="multilinear") == 1
        assert "not served: " in server.log() and "linear" in server.log()
    assert artifact.read_bytes() == tampered  # the store is left as it was found


def test_a_set_where_no_model_loads_does_not_start(model_dir: Path):
    with run_server(model_dir, model_name="iris", model_version="9", models="linear:7",
                    ready=False) as server:  # fmt: skip
        assert server.process.wait(timeout=30) != 0
        log = server.log()
    assert "cannot serve: " in log and "has no version '9'" in log
    assert "Traceback" not in log


def test_a_server_whose_only_model_cannot_be_unpickled_says_why_in_one_line(
    model_dir: Path, tmp_path: Path
):
    """An artifact that passes its sha256 check and still fails to unpickle (a class the
    server cannot import, a truncated upload republished): the server logged the reason, then
    uvicorn logged a forty-line startup traceback after it, which is what the rollout quoted of
    a crash-looping pod."""
    shutil.copytree(model_dir / "iris", tmp_path / "iris")
    artifact = tmp_path / "iris" / "1" / ARTIFACT
    artifact.write_bytes(b"not a pickle")
    manifest = artifact.parent / "manifest.json"
    fields = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**fields, "sha256": sha256_of(artifact)}))
    with run_server(tmp_path, model_name="iris", model_version="1", ready=False) as server:
        assert server.process.wait(timeout=30) != 0
        log = server.log()
    assert re.search(r"cannot serve: no model could be loaded \(iris: \w+Error\(", log), log
    assert "Traceback" not in log
    assert artifact.read_bytes() == b"not a pickle"


def test_check_smoke_tests_every_model_of_the_set(three):
    """What the chart's `helm test` runs for a release serving a set."""
    result = CliRunner().invoke(app, ["check", "iris", "linear", "multilinear", "--url", three.url])
    assert result.exit_code == 0, result.output
    assert [line.split()[:2] for line in result.output.splitlines()] == [
        ["OK", "iris"], ["OK", "linear"], ["OK", "multilinear"]
    ]  # fmt: skip
    missing = CliRunner().invoke(app, ["check", "iris", "wine", "--url", three.url])
    assert missing.exit_code == 1 and "model 'wine' not found" in " ".join(missing.output.split())


def test_check_asks_again_while_refused_until_its_deadline(three):
    """Right after an upgrade a Service can still send `helm test` to a pod going away: a refused
    connection is tried again until the deadline; an HTTP error is final."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    asked: list[str] = []

    def get(url: str) -> dict:
        asked.append(url)
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    bases = iter([closed, closed, three.url])
    meta = until_connected(time.monotonic() + 30, lambda path: get(next(bases) + path),
                           "/v2/models/iris")  # fmt: skip
    assert meta["name"] == "iris" and len(asked) == 3  # the third try answered
    with pytest.raises(urllib.error.URLError) as refused:
        until_connected(time.monotonic() + 1, get, closed + "/v2/models/iris")
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    asked.clear()
    with pytest.raises(urllib.error.HTTPError):
        until_connected(time.monotonic() + 30, get, three.url + "/v2/models/wine")
    assert len(asked) == 1
