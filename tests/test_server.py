"""Protocol conformance over real HTTP, against `python -m mlscale.service` in a subprocess."""

import asyncio
import gzip
import json
import shutil
import socket
import zlib
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as tritonclient
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from mlscale.service.artifacts.manifest import ARTIFACT
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.settings import ModelSettings, Settings
from tests.conftest import Server, run_server
from tests.helpers import breaks_above_two, v2, wait_for

ROW = [5.1, 3.5, 1.4, 0.2]


def assert_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and text in body["error"], body


def test_health(iris: Server):
    with iris.client() as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        r = c.get("/v2/health/ready")
        assert r.status_code == 200 and r.json() == {"ready": True}


def test_server_metadata(iris: Server):
    body = httpx.get(iris.url + "/v2").json()
    assert (
        body["name"] == "mlscale"
        and body["extensions"] == ["binary_tensor_data"]
        and body["version"]
    )


def test_model_metadata_default_and_versioned(iris: Server, model_dir: Path):
    with iris.client() as c:
        default = c.get("/v2/models/iris")
        v1 = c.get("/v2/models/iris/versions/1")
    assert default.headers["x-model-name"] == "iris"
    assert default.headers["x-model-version"] == "2"
    body = default.json()
    assert body["name"] == "iris" and body["versions"] == ["2", "1"]
    assert body["platform"].startswith("sklearn_")
    assert body["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in body["outputs"]] == ["predict", "predict_proba"]
    assert body["parameters"]["version"] == "2"
    assert body["parameters"]["sha256"] == ModelStore(model_dir).manifest("iris", "2").sha256
    assert v1.headers["x-model-version"] == "1" and v1.json()["parameters"]["version"] == "1"


def test_model_ready(iris: Server):
    with iris.client() as c:
        assert c.get("/v2/models/iris/ready").json() == {
            "name": "iris",
            "version": "2",
            "ready": True,
        }
        r = c.get("/v2/models/iris/versions/1/ready")
        assert r.json()["version"] == "1" and r.headers["x-model-version"] == "1"
        assert_error(c.get("/v2/models/iris/versions/3/ready"), 404, "loaded versions: 2, 1")


def test_infer_matches_the_model_and_names_the_version(iris: Server, model_dir: Path):
    rows = np.random.default_rng(1).uniform(0, 7, size=(5, 4))
    store = ModelStore(model_dir)
    with iris.client() as c:
        for version, path in [
            ("2", "/v2/models/iris/infer"),
            ("1", "/v2/models/iris/versions/1/infer"),
        ]:
            r = c.post(
                path,
                json=v2(
                    rows.ravel().tolist(),
                    id="req-7",
                    outputs=[{"name": "predict"}, {"name": "predict_proba"}],
                ),
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-model-version"] == version
            body = r.json()
            assert body["model_name"] == "iris" and body["model_version"] == version
            assert body["id"] == "req-7"
            _, model = store.load("iris", version)
            predict, proba = body["outputs"]
            assert predict == {
                "name": "predict",
                "datatype": "INT64",
                "shape": [5],
                "data": model.predict(rows).tolist(),
            }
            assert proba["shape"] == [5, 3]
            np.testing.assert_allclose(
                np.reshape(proba["data"], (5, 3)), model.predict_proba(rows), rtol=1e-12
            )


def test_store_versions_extension(iris: Server, model_dir: Path):
    body = httpx.get(iris.url + "/mlscale/v1/models/iris/versions").json()
    assert [v["version"] for v in body["versions"]] == ["1", "2"]
    assert all(v["loaded"] for v in body["versions"])
    stored = ModelStore(model_dir).manifest("iris", "2")
    assert body["versions"][1]["metrics"] == stored.metrics
    assert httpx.get(iris.url + "/mlscale/v1/models/nope/versions").status_code == 404


def test_v1_and_simple_predict(iris: Server):
    with iris.client() as c:
        v1 = c.post("/v1/models/iris:predict", json={"instances": [ROW, ROW]})
        simple = c.post("/predict", json={"instances": [ROW]})
    assert v1.status_code == 200 and v1.json()["predictions"] == [0, 0]
    assert v1.headers["x-model-version"] == "2"
    assert simple.json() == {"predictions": [0], "model_name": "iris", "model_version": "2"}


def test_kserve_v1_lists_models_and_says_whether_one_is_ready(iris: Server):
    """What a KServe v1 client asks besides :predict: GET /v1/models and /v1/models/NAME
    were 404s."""
    with iris.client() as c:
        listed = c.get("/v1/models")
        ready = c.get("/v1/models/iris")
        unknown = c.get("/v1/models/colour")
        predicted = c.post("/v1/models/iris:predict", json={"instances": [ROW]})
    assert listed.status_code == 200 and listed.json() == {"models": ["iris"]}
    assert ready.status_code == 200 and ready.json() == {"name": "iris", "ready": True}
    assert ready.headers["x-model-version"] == "2"
    assert unknown.status_code == 404 and "model 'colour'" in unknown.json()["error"]
    assert predicted.status_code == 200  # its :predict twin is not taken for a model's name


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "text"),
    [
        ("post", "/v2/models/iris/infer", {"json": v2(ROW, shape=[1, 3])}, 400, "does not match"),
        ("post", "/v2/models/iris/infer", {"json": v2(ROW, shape=[2, 4])}, 400, "needs 8 values"),
        ("post", "/v2/models/iris/infer", {"content": b"{oops"}, 400, "malformed JSON"),
        ("post", "/v2/models/iris/infer", {"json": v2([], shape=[0, 4])}, 400, "empty batch"),
        ("post", "/v2/models/iris/infer", {"json": v2(ROW, datatype="BYTES")}, 400, "not numeric"),
        ("post", "/v2/models/iris/infer", {"content": b"NaN"}, 400, "malformed JSON"),
        ("post", "/v2/models/iris/infer",
         {"content": b"a=1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
         415, "application/json"),
        ("post", "/v2/models/nope/infer", {"json": v2(ROW)}, 404, "serves 'iris'"),
        ("post", "/v2/models/iris/versions/9/infer", {"json": v2(ROW)}, 404, "versions: 2, 1"),
        ("get", "/v2/models/nope", {}, 404, "not found"),
        ("get", "/v2/models/iris/versions/9", {}, 404, "not loaded"),
        ("post", "/v1/models/iris:predict", {"json": {"instances": [[1]]}}, 400, "does not match"),
        ("post", "/predict", {"json": {"rows": []}}, 400, "'instances' list"),
        ("get", "/no/such/path", {}, 404, "Not Found"),
        ("put", "/v2", {}, 405, "send a GET"),
        ("get", "/v2/models/iris/infer", {}, 405, "send a POST"),
        ("delete", "/v2/models/iris/versions/1/infer", {}, 405, "send a POST"),
    ],
)  # fmt: skip
def test_errors_have_the_protocol_shape(iris: Server, method, path, kwargs, status, text):
    with iris.client() as c:
        assert_error(c.request(method.upper(), path, **kwargs), status, text)


def test_405_says_which_method_is_allowed(iris: Server):
    r = httpx.get(iris.url + "/v2/models/iris/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.post(iris.url + "/v2/models/iris/versions/2/ready")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_errors_after_routing_still_name_the_version(iris: Server):
    r = httpx.post(iris.url + "/v2/models/iris/versions/1/infer", json=v2(ROW, shape=[4, 1]))
    assert r.status_code == 400 and r.headers["x-model-version"] == "1"


def test_oversized_bodies_get_413(model_dir: Path):
    with (
        run_server(model_dir, model_name="iris", max_body_bytes="1000") as server,
        server.client() as c,
    ):
        big = v2(ROW * 100, shape=[100, 4])
        names = "the limit of 1000 bytes (the server's MLSCALE_MAX_BODY_BYTES"
        assert_error(c.post("/v2/models/iris/infer", json=big), 413, names.replace(" bytes", ""))

        def chunks():  # no content-length: counted while reading
            yield b'{"inputs": ['
            yield b" " * 2000
            yield b"]}"

        assert_error(c.post("/v2/models/iris/infer", content=chunks()), 413, names)
        assert c.post("/v2/models/iris/infer", json=v2(ROW)).status_code == 200


def test_compressed_bodies_are_inflated_within_the_limit(model_dir: Path):
    """Triton's clients compress a request on request (gzip or deflate); the limit holds for
    what a body inflates to, so a small bomb is a 413, not the server's memory."""
    plain = orjson.dumps(v2(ROW * 2, shape=[2, 4]))
    bomb = gzip.compress(b" " * 5000 + plain)  # 5 KB of JSON whitespace, ~80 bytes sent
    with (
        run_server(model_dir, model_name="iris", max_body_bytes="2000") as server,
        server.client() as c,
    ):

        def post(body: bytes, encoding: str) -> httpx.Response:
            headers = {"content-type": "application/json", "content-encoding": encoding}
            return c.post("/v2/models/iris/infer", content=body, headers=headers)

        want = c.post("/v2/models/iris/infer", content=plain).json()
        assert post(gzip.compress(plain), "gzip").json() == want
        assert post(zlib.compress(plain), "deflate").json() == want
        assert post(plain, "identity").json() == want
        assert_error(post(bomb, "gzip"), 413, "limit of 2000 bytes once inflated")
        assert_error(post(plain, "gzip"), 400, "the body is not gzip data")
        assert_error(post(gzip.compress(plain)[:-12], "gzip"), 400, "ends before its data does")
        assert_error(post(plain, "br"), 415, "Content-Encoding 'br' is not taken")
        triton = tritonclient.InferenceServerClient(server.url.removeprefix("http://"))
        tensor = tritonclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(np.array([ROW]))
        answer = triton.infer("iris", [tensor], request_compression_algorithm="gzip")
        assert answer.as_numpy("predict").tolist() == want["outputs"][0]["data"][:1]


def test_head_is_get_without_the_body(iris: Server):
    """Load balancers' health checks may send HEAD; it was a 405."""
    with iris.client() as c:
        head, get = c.head("/v2/health/ready"), c.get("/v2/health/ready")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"] != "0"
        assert c.head("/v2/models/iris/infer").status_code == 405


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format."""
    for line in text.splitlines():
        sample = line.startswith(name + "{") or line.startswith(name + " ")
        if sample and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_exposed_and_move(iris: Server):
    labels = {"endpoint": "/v2/models/{name}/infer", "model": "iris", "version": "2", "code": "200"}
    with iris.client() as c:
        before = c.get("/metrics").text
        for _ in range(5):
            c.post("/v2/models/iris/infer", json=v2(ROW))
        c.post("/v2/models/iris/infer", json=v2(ROW, shape=[2, 2]))
        r = c.get("/metrics")
    after = r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert metric(after, "mlscale_requests_total", **labels) - metric(
        before, "mlscale_requests_total", **labels) == 5  # fmt: skip
    assert metric(after, "mlscale_request_duration_seconds_count", **labels) >= 5
    assert metric(after, "mlscale_requests_total", **{**labels, "code": "400"}) >= 1
    assert metric(after, "mlscale_model_info", model="iris", version="1", default="false") == 1
    assert metric(after, "mlscale_model_info", model="iris", version="2", default="true") == 1
    assert metric(after, "mlscale_model_load_seconds", model="iris", version="2") > 0
    assert "# TYPE mlscale_batch_queue_seconds histogram" in after
    assert metric(after, "process_resident_memory_bytes") > 10 * 2**20  # the server's own


def test_in_flight_counts_inference_requests_not_scrapes_or_probes(iris: Server):
    """The HPA's request metric: inference requests being handled, read by a scrape that does
    not count itself (nor the probes beside it)."""
    host, port = iris.url.removeprefix("http://").split(":")
    body = json.dumps(v2(ROW)).encode()
    with socket.create_connection((host, int(port)), timeout=10) as held, iris.client() as c:
        assert metric(c.get("/metrics").text, "mlscale_requests_in_flight") == 0
        # An inference request whose body is still arriving is in flight.
        held.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])  # fmt: skip
        wait_for(lambda: metric(c.get("/metrics").text, "mlscale_requests_in_flight") == 1, 10,
                 "the held request to be counted")  # fmt: skip
        c.get("/v2/health/ready")
        assert metric(c.get("/metrics").text, "mlscale_requests_in_flight") == 1
        held.sendall(body[5:])
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
        assert metric(c.get("/metrics").text, "mlscale_requests_in_flight") == 0


def test_openapi_describes_the_real_bodies(iris: Server):
    spec = httpx.get(iris.url + "/openapi.json").json()
    for path in ["/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}",
                 "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
                 "/v1/models/{name}:predict", "/v1/models", "/v1/models/{name}", "/predict",
                 "/metrics"]:  # fmt: skip
        assert path in spec["paths"], path
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/InferenceRequest"}
    schemas = spec["components"]["schemas"]
    assert {"InferenceRequest", "RequestInput", "InferenceResponse", "ErrorResponse"} <= set(
        schemas
    )
    assert httpx.get(iris.url + "/docs").status_code == 200


async def _infer_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        responses = await asyncio.gather(
            *(c.post("/v2/models/multilinear/infer", json=b) for b in bodies)
        )
    assert all(r.status_code == 200 for r in responses)
    return [r.json() for r in responses]


def test_batched_answers_equal_unbatched_ones(model_dir: Path):
    """Small requests are answered in Python, bigger ones merged into numpy batches: every
    answer has the same bits either way."""
    rng = np.random.default_rng(3)
    bodies = []
    for _ in range(60):
        rows = int(rng.integers(1, 41))
        bodies.append(v2(rng.normal(size=rows * 4).tolist(), shape=[rows, 4]))
    with run_server(model_dir, model_name="multilinear", batch_enabled="false") as plain:
        alone = asyncio.run(_infer_all(plain.url, bodies))
    with run_server(model_dir, model_name="multilinear", batch_max_wait_ms="20") as batched:
        merged = asyncio.run(_infer_all(batched.url, bodies))
        text = httpx.get(batched.url + "/metrics").text
    assert merged == alone
    merges = metric(text, "mlscale_batch_requests_sum") / metric(
        text, "mlscale_batch_requests_count"
    )
    assert merges > 1, "requests were not merged"


def test_a_model_that_refuses_or_fails_to_predict_gets_422_or_500_and_the_server_lives(
    tmp_path: Path, model_dir: Path
):
    store = ModelStore(tmp_path / "models")
    io = ModelStore(model_dir).manifest("multilinear", "1")
    # Each loads and warms up on zeros. One refuses categories it never saw (any value but 0
    # or 1), with scikit-learn's ValueError; the other raises from a bug of its own.
    x = np.array([[0, 0, 0, 0], [1, 1, 1, 1]] * 2, dtype=float)
    strict = make_pipeline(OneHotEncoder(handle_unknown="error"), LinearRegression())
    broken = make_pipeline(FunctionTransformer(breaks_above_two), LinearRegression())
    for name, model in (("strict", strict), ("broken", broken)):
        model.fit(x, [0, 1] * 2)
        store.write(name, "1", model, inputs=io.inputs, outputs=io.outputs, metrics={})
    server = run_server(store.root, model_name="strict", models="broken")
    with server as served, served.client() as c:
        r = c.post("/v2/models/strict/infer", json=v2([3.0, 0, 0, 0]))
        assert_error(r, 422, "model 'strict' version '1' cannot answer this input: Found unknown")
        assert r.headers["x-model-version"] == "1"
        assert_error(c.post("/v2/models/broken/infer", json=v2([3.0, 0, 0, 0])), 500,
                     "model 'broken' version '1' failed to predict: a bug in")  # fmt: skip
        for name in ("strict", "broken"):
            ok = c.post(f"/v2/models/{name}/infer", json=v2([1.0, 1, 1, 1]))
            assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [pytest.approx(1.0)]


def test_tampered_model_never_becomes_ready(tmp_path: Path, model_dir: Path):
    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    artifact = root / "iris" / "2" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"x")
    with run_server(root, model_name="iris", model_version="2", ready=False) as server:
        assert server.process.wait(timeout=30) != 0
        assert "does not match the manifest" in server.log()


def test_unknown_version_never_becomes_ready(model_dir: Path):
    with run_server(model_dir, model_name="iris", model_version="7", ready=False) as server:
        assert server.process.wait(timeout=30) != 0
        assert "has no version '7'; the store has 1, 2" in server.log()


def test_settings_read_only_their_prefixed_variables(monkeypatch: pytest.MonkeyPatch):
    """`make serve MODEL=iris` puts MODEL in the server's environment: the settings read
    MLSCALE_* only, and never fail on the variables named like their groups."""
    for name, value in {"MODEL": "iris", "SERVER": "x", "BATCHING": "{"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLSCALE_MODEL_NAME", "multilinear")
    settings = Settings(model=ModelSettings())
    assert settings.model.model_name == "multilinear"
    assert Settings().server.port == 8080
