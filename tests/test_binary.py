"""The binary tensor data extension, spoken by a stock Triton HTTP client with its defaults
(binary inputs, binary outputs), and refused clearly when the bytes do not add up."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from examples import flowers
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.publish import publish
from tests.conftest import Server, run_server

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def iris_server(model_dir: Path) -> Iterator[Server]:
    with run_server(model_dir, model_name="iris", model_version="2") as server:
        yield server


def client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def test_a_stock_triton_client_with_default_settings(iris_server: Server, model_dir: Path):
    rows = np.random.default_rng(0).uniform(0, 7, size=(64, 4))
    tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)  # binary_data=True: the client's default
    result = client(iris_server).infer("iris", [tensor])  # no outputs: all, in binary
    _, model = ModelStore(model_dir).load("iris", "2")
    np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(rows))
    assert result.get_response()["model_version"] == "2"
    requested = [triton.InferRequestedOutput("predict_proba")]  # binary_data=True by default
    proba = client(iris_server).infer("iris", [tensor], outputs=requested).as_numpy("predict_proba")
    np.testing.assert_allclose(proba, model.predict_proba(rows), rtol=1e-12)


def test_binary_and_json_outputs_mixed(iris_server: Server):
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    tensor = triton.InferInput("input-0", [2, 4], "FP64")
    tensor.set_data_from_numpy(rows, binary_data=False)
    outputs = [
        triton.InferRequestedOutput("predict", binary_data=False),
        triton.InferRequestedOutput("predict_proba", binary_data=True),
    ]
    result = client(iris_server).infer("iris", [tensor], outputs=outputs)
    body = result.get_response()
    assert body["outputs"][0]["data"] == [0, 2]
    assert body["outputs"][1]["parameters"]["binary_data_size"] == 2 * 3 * 8
    assert result.as_numpy("predict_proba").shape == (2, 3)


def test_strings_travel_as_bytes_both_ways(tmp_path: Path):
    pipe, x_train, x_test, _ = flowers.train()
    publish(pipe, "flowers", model_dir=tmp_path, sample=x_train.head(), runtime="sklearn")
    rows = x_test.head(16)
    inputs = []
    for name in rows.columns:
        values = rows[name].to_numpy()
        datatype = "BYTES" if name == "sepal_size" else "FP64"
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(values.astype(object if datatype == "BYTES" else np.float64))
        inputs.append(tensor)
    with run_server(tmp_path, model_name="flowers") as server:
        outputs = [triton.InferRequestedOutput(n) for n in ("predict", "predict_proba")]
        result = client(server).infer("flowers", inputs, outputs=outputs)
    labels = [v.decode() for v in result.as_numpy("predict")]
    assert labels == pipe.predict(rows).tolist()
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), pipe.predict_proba(rows))


def raw_request(header: dict, data: bytes, length: int | None = None) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + data, {HEADER: str(len(head) if length is None else length)}


@pytest.mark.parametrize(
    "size, data, length, text",
    [
        (16, np.zeros(2).tobytes(), None, "needs 32 bytes, binary_data_size is 16"),
        (32, np.zeros(3).tobytes(), None, "runs past the body's end"),
        (32, np.zeros(5).tobytes(), None, "bytes after the JSON that no input claims"),
        (32, np.zeros(4).tobytes(), 10**6, "exceeds the body"),
        (-1, b"", None, "binary_data_size must be a non-negative integer"),
    ],
    ids=["short-for-shape", "past-the-end", "unclaimed", "header-too-long", "negative"],
)
def test_bytes_that_do_not_add_up_get_400(iris_server: Server, size, data, length, text):
    header = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                          "parameters": {"binary_data_size": size}}]}  # fmt: skip
    body, headers = raw_request(header, data, length)
    headers["content-type"] = "application/octet-stream"
    r = httpx.post(iris_server.url + "/v2/models/iris/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert text in r.json()["error"]


def test_a_datatype_that_is_not_a_string_gets_400(iris_server: Server):
    header = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": {"FP64": 1},
                          "parameters": {"binary_data_size": 32}}]}  # fmt: skip
    body, headers = raw_request(header, np.zeros(4).tobytes())
    headers["content-type"] = "application/octet-stream"
    r = httpx.post(iris_server.url + "/v2/models/iris/infer", content=body, headers=headers)
    assert r.status_code == 400 and "unknown datatype" in r.json()["error"], r.text


def test_octet_stream_without_the_header_is_still_refused(iris_server: Server):
    r = httpx.post(
        iris_server.url + "/v2/models/iris/infer",
        content=b"\0" * 8,
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 415


def test_a_json_client_is_unaffected(iris_server: Server):
    """Without the header or binary parameters, the answer is plain JSON."""
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                        "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
    r = httpx.post(iris_server.url + "/v2/models/iris/infer", json=body)
    assert r.headers["content-type"] == "application/json" and HEADER.lower() not in r.headers
    assert r.json()["outputs"][0]["data"] == [0]
