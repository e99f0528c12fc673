"""The V2 codec: what it accepts, and the 4xx message for what it refuses."""

from pathlib import Path

import numpy as np
import orjson
import pytest

from mlscale.service.artifacts.manifest import Manifest
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.codecs.protocol import (
    SMALL_REQUEST_VALUES,
    decode_infer_request,
    decode_instances,
    encode_infer_response,
)
from mlscale.service.errors import InvalidInput


@pytest.fixture(scope="module")
def iris(model_dir: Path) -> Manifest:
    return ModelStore(model_dir).manifest("iris", "1")


@pytest.fixture(scope="module")
def linear(model_dir: Path) -> Manifest:
    return ModelStore(model_dir).manifest("linear", "1")


def tensor(shape, data, datatype="FP64", name="input-0") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def body(*inputs, **extra) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def decoded(payload: bytes, manifest: Manifest) -> np.ndarray:
    """The request's rows as an array, whichever form the decoder chose."""
    x = decode_infer_request(payload, manifest).x
    if isinstance(x, list):  # small requests stay Python floats
        assert all(type(v) is float for row in x for v in row)
    return np.asarray(x)


@pytest.mark.parametrize("rows", [2, SMALL_REQUEST_VALUES // 4 + 1])  # Python rows, then numpy
def test_flat_and_nested_data_decode_the_same(iris: Manifest, rows: int):
    values = list(range(rows * 4))
    nested = [values[i : i + 4] for i in range(0, len(values), 4)]
    flat_x = decoded(body(tensor([rows, 4], values)), iris)
    np.testing.assert_array_equal(flat_x, decoded(body(tensor([rows, 4], nested)), iris))
    assert flat_x.shape == (rows, 4) and flat_x.dtype == np.float64
    assert flat_x[-1, -1] == rows * 4 - 1


def test_small_requests_stay_python_and_big_ones_become_arrays(iris: Manifest):
    small = decode_infer_request(body(tensor([1, 4], [0.5, 2, 3, 4])), iris)
    assert small.x == [[0.5, 2.0, 3.0, 4.0]] and small.outputs == ["predict"]
    rows = SMALL_REQUEST_VALUES // 4 + 1
    big = decode_infer_request(body(tensor([rows, 4], [0.5] * rows * 4)), iris)
    assert isinstance(big.x, np.ndarray) and big.x.shape == (rows, 4)


def test_id_and_requested_outputs(iris: Manifest):
    req = decode_infer_request(
        body(tensor([1, 4], [1, 2, 3, 4]), id="r-1", outputs=[{"name": "predict_proba"}]), iris
    )
    assert req.id == "r-1" and req.outputs == ["predict_proba"]


def test_integer_and_fp32_inputs_are_accepted(iris: Manifest):
    assert decoded(body(tensor([1, 4], [1, 2, 3, 4], "INT32")), iris).sum() == 10
    assert decoded(body(tensor([1, 4], [1.5, 2, 3, 4], "FP32")), iris)[0, 0] == 1.5


def test_single_feature_model_takes_a_flat_batch(linear: Manifest):
    assert decoded(body(tensor([3], [1, 2, 3])), linear).shape == (3, 1)
    assert decode_instances(b'{"instances": [1, 2, 3]}', linear).shape == (3, 1)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "JSON object"),
        (b"{}", "non-empty list"),
        (body(), "non-empty list"),
        (body(tensor([1, 4], [1, 2, 3, 4], name="x")), "unknown input 'x'"),
        (body(tensor([1, 4], [1, 2, 3])), "needs 4 values, got 3"),
        (body(tensor([1, 3], [1, 2, 3])), r"does not match the model's \[-1, 4\]"),
        (body(tensor([0, 4], [])), "empty batch"),
        (body(tensor([1, 4], [1, 2, 3, 4], "FP128")), "unknown datatype"),
        (body(tensor([1, 4], [1, 2, 3, 4], ["FP64"])), "unknown datatype"),  # not a 500
        (body(tensor([1, 4], [1, 2, 3, 4], {})), "unknown datatype"),
        (body(tensor([1, 4], ["a", "b", "c", "d"], "BYTES")), "not numeric"),
        (body(tensor([1, 4], ["a", "b", "c", "d"])), "must be numbers"),
        (body(tensor([1, 4], [True, False, True, True])), "must be numbers"),
        (body(tensor([1, 4], [[1, 2], [3, 4]])), "nested data of shape"),
        (body(tensor([2, 4], [[1, 2, 3, 4], 5, 6, 7, 8])), "ragged"),
        (body(tensor([1, 4], [1.5, 2, 3, 4], "INT64")), "has fractions"),
        (body(tensor([2, 4], [[1, 2, 3, 4], [5, 6, 7]])), "ragged"),
        (body(tensor([2, 4], [[1, 2], [3, 4], [5, 6], [7, 8]])), "nested data of shape"),
        *[
            (body(tensor([1, 4], "DATA")).replace(b'"DATA"', literal), "malformed JSON")
            for literal in (b"[1e999,2,3,4]", b"[NaN,2,3,4]", b"[Infinity,2,3,4]")
        ],
        (body(tensor([1, 4], [None, 2, 3, 4])), "must be numbers"),
        (body(tensor([-1, 4], [1, 2, 3, 4])), "non-negative integers"),
        (body(tensor("1,4", [1, 2, 3, 4])), "non-negative integers"),
        (body(tensor([1, 4], "1,2,3,4")), "must be a list"),
        (body(tensor([1, 4], [1, 2, 3, 4]), id=5), "'id' must be a string"),
        (body(tensor([1, 4], [1, 2, 3, 4]), outputs=[{"name": "x"}]), "unknown output"),
        (body(tensor([1, 4], [1, 2, 3, 4]), outputs="predict"), "list of objects"),
        (body(tensor([1, 4], [1, 2, 3, 4]), tensor([1, 4], [1, 2, 3, 4])), "expected 1 input"),
        (body("input-0"), "must be an object"),
        (b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "depth limit exceeded"),
    ],
)
def test_bad_requests_get_a_clear_message(iris: Manifest, payload: bytes, message: str):
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request(payload, iris)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"instances": 5}', "'instances' list"),
        (b'{"instances": [[1, 2, 3]]}', "does not match"),
        (b'{"instances": []}', "does not match|empty batch"),
    ],
)
def test_bad_instances(iris: Manifest, payload: bytes, message: str):
    with pytest.raises(InvalidInput, match=message):
        decode_instances(payload, iris)


def test_response_shape(iris: Manifest):
    outputs = {"predict": np.array([0, 2]), "predict_proba": np.full((2, 3), 1 / 3)}
    raw = encode_infer_response(iris, outputs, ["predict_proba", "predict"], "abc")
    assert orjson.loads(raw) == {
        "model_name": "iris",
        "model_version": "1",
        "id": "abc",
        "outputs": [
            {"name": "predict_proba", "datatype": "FP64", "shape": [2, 3], "data": [1 / 3] * 6},
            {"name": "predict", "datatype": "INT64", "shape": [2], "data": [0, 2]},
        ],
    }


def test_python_row_outputs_encode_like_arrays(iris: Manifest):
    as_list = encode_infer_response(iris, {"predict": [0, 2]}, ["predict"], None)
    as_array = encode_infer_response(iris, {"predict": np.array([0, 2])}, ["predict"], None)
    assert as_list == as_array
