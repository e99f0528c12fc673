"""Open Inference Protocol v2 (and KServe v1) bodies: the codec and the documented shapes.

The hot path does not validate with pydantic: it parses with orjson and checks the request
against the model's manifest by hand, which is several times cheaper for tensor bodies. The
pydantic models at the bottom exist to document the real bodies in the OpenAPI schema.
"""

from math import prod
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson
from pydantic import BaseModel, Field

from mlscale.service.artifacts.manifest import Manifest, TensorSpec
from mlscale.service.codecs import binary
from mlscale.service.contract import DATATYPES, INTEGER_TYPES, NUMERIC_TYPES
from mlscale.service.errors import InvalidInput
from mlscale.service.runtime.model import Outputs, RowOutputs, Rows

if TYPE_CHECKING:
    from mlscale.service.runtime.frames import Table

# Requests up to this many numbers stay Python lists (see runtime/model.py); bigger ones, where
# numpy's per-call cost pays off, become arrays. Python was faster in-process up to ~40
# values for the 4-feature regressor and ~60 for the iris classifier.
SMALL_REQUEST_VALUES = 32


class InferRequest(NamedTuple):
    # Validated rows: float64 (rows, features), Rows when small; a typed table (frames.Table)
    # for models fitted on a DataFrame.
    x: "np.ndarray | Rows | Table"
    outputs: list[str]  # names of the outputs to return, in order
    id: str | None = None
    binary: frozenset[str] | bool = frozenset()  # outputs wanted as binary data; True: all


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def _as_rows(data: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """Turn JSON numbers into a float64 array. NaN and infinity cannot get here: orjson
    refuses `NaN`, `Infinity` and literals that overflow a double as malformed JSON."""
    try:
        arr = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{where}: data is ragged; every row needs the same length") from None
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(f"{where}: data must be numbers (expected {spec.datatype})")
    return arr.astype(np.float64, copy=False)


def _check_shape(shape: list[int], spec: TensorSpec, where: str) -> tuple[int, ...]:
    """Match a request shape against the manifest's; a 1-feature model also takes shape [N]."""
    expected = spec.shape
    if len(shape) == 1 and len(expected) == 2 and expected[1] == 1:
        shape = [shape[0], 1]
    if len(shape) != len(expected):
        raise InvalidInput(f"{where}: shape {shape} does not match the model's {expected}")
    for got, want in zip(shape, expected, strict=True):
        if want != -1 and got != want:
            raise InvalidInput(f"{where}: shape {shape} does not match the model's {expected}")
    if shape[0] == 0:
        raise InvalidInput(f"{where}: empty batch; send at least one row")
    return tuple(shape)


def decode_infer_request(
    body: bytes, manifest: Manifest, json_length: int | None = None
) -> InferRequest:
    """Parse and check a V2 infer body. Cheap checks first, error text built only on error.
    `json_length`: the body is JSON of that length, then binary tensor data (binary.py)."""
    if json_length is None:
        payload = loads(body)
    else:
        if json_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {json_length} exceeds the body "
                f"({len(body)} bytes)"
            )
        payload = loads(body[:json_length])
        binary.attach(payload, memoryview(body)[json_length:])
    if type(payload) is not dict:
        raise InvalidInput("request body must be a JSON object with 'inputs'")
    inputs = payload.get("inputs")
    if type(inputs) is not list or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    if manifest.columns is not None:
        from mlscale.service.codecs import columns  # pandas, only for models that take DataFrames

        x = columns.decode_tensors(inputs, manifest)
    else:
        x = _decode_tensor(inputs, manifest)
    return InferRequest(
        x, _requested_outputs(payload, manifest), _request_id(payload), binary.wanted(payload)
    )


def _decode_tensor(inputs: list[Any], manifest: Manifest) -> "np.ndarray | Rows":
    """The one input of a model that takes a tensor: numbers, or a text model's documents."""
    if len(inputs) != len(manifest.inputs):
        raise InvalidInput(f"expected {len(manifest.inputs)} input tensor(s), got {len(inputs)}")
    spec = manifest.inputs[0]
    tensor = inputs[0]
    if type(tensor) is not dict:
        raise InvalidInput("each input must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if name != spec.name:
        raise InvalidInput(f"unknown input {name!r}; the model's input is {spec.name!r}")
    where = f"input {name!r}"
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers")
    if manifest.takes_text:
        return _documents(data, shape, datatype, where)
    if type(datatype) is not str or datatype not in NUMERIC_TYPES:
        if type(datatype) is str and datatype in DATATYPES:
            raise InvalidInput(f"{where}: datatype {datatype} is not numeric; send {spec.datatype}")
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}")
    if type(data) is not list and not isinstance(data, np.ndarray):  # arrays: binary data
        raise InvalidInput(f"{where}: data must be a list (flat or nested)")
    dims = _check_shape(shape, spec, where)
    x = _small_rows(data, shape, dims, datatype in INTEGER_TYPES)
    if x is None:
        x = _as_array(data, shape, dims, datatype, spec, where)
    return x


def _documents(data: Any, shape: list[int], datatype: Any, where: str) -> np.ndarray:
    """A text model's documents, one string per row (shape [N], or [N, 1] with each row a
    list of one string), as a 1-D array of objects: what a vectorizer's `transform` takes."""
    if datatype != "BYTES":
        raise InvalidInput(f"{where}: this model takes text: send datatype BYTES, not {datatype!r}")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"{where}: a text model takes one document per row, shape [N], "
                           f"not {shape}")  # fmt: skip
    if type(data) is not list:  # binary BYTES data arrives decoded, as a list
        raise InvalidInput(f"{where}: data must be a list of strings")
    if data and all(type(row) is list and len(row) == 1 for row in data):
        data = [row[0] for row in data]
    if len(data) != shape[0]:
        raise InvalidInput(f"{where}: shape {shape} needs {shape[0]} documents, got {len(data)}")
    if not data:
        raise InvalidInput(f"{where}: empty batch; send at least one row")
    if not all(type(d) is str for d in data):
        raise InvalidInput(f"{where}: each document must be a string")
    array = np.empty(len(data), dtype=object)
    array[:] = data
    return array


def _small_rows(
    data: list[Any] | np.ndarray, shape: list[int], dims: tuple[int, ...], integral: bool
) -> Rows | None:
    """A small, well-formed rows-by-features tensor as Python floats; None for anything
    else, which the numpy path then takes (and explains, if it is wrong)."""
    if len(dims) != 2:
        return None
    rows, features = dims
    size = rows * features
    if size > SMALL_REQUEST_VALUES or type(data) is not list:
        return None
    if len(data) == size:
        flat = data
    elif (
        len(shape) == 2
        and len(data) == rows
        and all(type(row) is list and len(row) == features for row in data)
    ):
        flat = [v for row in data for v in row]
    else:
        return None
    has_ints = False
    for v in flat:
        if type(v) is not float:
            if type(v) is not int:  # bools, strings, lists: the numpy path says what is wrong
                return None
            has_ints = True
        elif integral:  # floats for an integer datatype: the numpy path checks for fractions
            return None
    if has_ints:
        flat = [float(v) for v in flat]
    return [flat[i : i + features] for i in range(0, size, features)]


def _as_array(
    data: list[Any] | np.ndarray,
    shape: list[int],
    dims: tuple[int, ...],
    datatype: str,
    spec: TensorSpec,
    where: str,
) -> np.ndarray:
    arr = _as_rows(data, spec, where)
    if datatype in INTEGER_TYPES and not np.array_equal(arr, np.trunc(arr)):
        raise InvalidInput(f"{where}: datatype {datatype} but data has fractions")
    size = prod(shape)
    if arr.size != size:
        raise InvalidInput(f"{where}: shape {shape} needs {size} values, got {arr.size}")
    if arr.ndim > 1 and list(arr.shape) != shape:
        raise InvalidInput(f"{where}: nested data of shape {list(arr.shape)} but shape is {shape}")
    return arr.reshape(dims)


def _request_id(payload: dict[str, Any]) -> str | None:
    rid = payload.get("id")
    if rid is not None and type(rid) is not str:
        raise InvalidInput("'id' must be a string")
    return rid


def _requested_outputs(payload: dict[str, Any], manifest: Manifest) -> list[str]:
    requested = payload.get("outputs")
    if requested is None:
        return [manifest.outputs[0].name]  # the primary output; others on request
    if type(requested) is not list or not all(
        type(o) is dict and type(o.get("name")) is str for o in requested
    ):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    known = [spec.name for spec in manifest.outputs]
    names = [o["name"] for o in requested]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; the model has {known}")
    return names


def decode_instances(body: bytes, manifest: Manifest) -> "np.ndarray | Table":
    """KServe v1 / simple predict body: {"instances": [[...], ...]} (or [x, ...] for 1 feature);
    rows of mixed types or objects keyed by column for models fitted on a DataFrame."""
    payload = loads(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInput("request body must be a JSON object with an 'instances' list")
    if manifest.columns is not None:
        from mlscale.service.codecs import columns

        return columns.decode_instances(payload["instances"], manifest)
    if manifest.takes_text:
        instances = payload["instances"]
        return _documents(instances, [len(instances)], "BYTES", "instances")
    spec = manifest.inputs[0]
    arr = _as_rows(payload["instances"], spec, "instances")
    return arr.reshape(_check_shape(list(arr.shape), spec, "instances"))


def encode_infer_response(
    manifest: Manifest,
    outputs: Outputs | RowOutputs,
    names: list[str],
    request_id: str | None,
) -> bytes:
    body: dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = [_output_tensor(manifest, name, outputs[name]) for name in names]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_binary_response(
    manifest: Manifest,
    outputs: Outputs | RowOutputs,
    names: list[str],
    request_id: str | None,
    wanted: frozenset[str] | bool,
) -> tuple[bytes, int]:
    """The response with the `wanted` outputs as binary data after the JSON; returns the
    body and the JSON's length (the Inference-Header-Content-Length)."""
    header: dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version}
    if request_id is not None:
        header["id"] = request_id
    tensors, raw = [], []
    for name in names:
        value, datatype = outputs[name], manifest.output_types[name]
        if wanted is not True and name not in wanted:  # type: ignore[operator]
            tensors.append(_output_tensor(manifest, name, value))
            continue
        data = binary.encode(value, datatype)
        shape = [len(value)] if type(value) is list else list(value.shape)
        parameters = {"binary_data_size": len(data)}
        tensors.append(
            {"name": name, "datatype": datatype, "shape": shape, "parameters": parameters}
        )
        raw.append(data)
    header["outputs"] = tensors
    return binary.response(header, raw)


def _output_tensor(manifest: Manifest, name: str, value: np.ndarray | list[Any]) -> dict[str, Any]:
    datatype = manifest.output_types[name]
    if isinstance(value, list):  # one value per row
        return {"name": name, "datatype": datatype, "shape": [len(value)], "data": value}
    shape = list(value.shape)
    return {"name": name, "datatype": datatype, "shape": shape, "data": _json_data(value)}


def _json_data(value: np.ndarray) -> np.ndarray | list[Any]:
    """orjson writes numeric and boolean arrays itself; strings (class labels) go as a list."""
    return value.ravel().tolist() if value.dtype.kind in "OUS" else value.ravel()


def encode_predictions(manifest: Manifest, predictions: np.ndarray) -> bytes:
    return orjson.dumps(
        {
            "predictions": (
                predictions.tolist()
                if predictions.dtype.kind in "OUS"
                else np.ascontiguousarray(predictions)
            ),
            "model_name": manifest.name,
            "model_version": manifest.version,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


# --- Documented shapes (OpenAPI only; the hot path above does the checking) ---------------


class RequestInput(BaseModel):
    name: str = Field(examples=["input-0"])
    shape: list[int] = Field(examples=[[2, 4]])
    datatype: str = Field(examples=["FP64"], description=f"One of {sorted(DATATYPES)}.")
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="Row-major, flat or nested.", examples=[[1, 2, 3, 4]])


class RequestOutput(BaseModel):
    name: str = Field(examples=["predict"])
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class InstancesRequest(BaseModel):
    instances: list[Any] = Field(examples=[[[1.0], [2.5]]])


class PredictionsResponse(BaseModel):
    predictions: list[Any]
    model_name: str
    model_version: str


class ErrorResponse(BaseModel):
    error: str


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class V1ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class V1ModelsResponse(BaseModel):
    models: list[str]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any] = Field(
        description="mlscale extension: the answering version, its sha256, metrics and labels."
    )


class StoreVersion(BaseModel):
    version: str
    metrics: dict[str, float]
    sha256: str
    created: str
    loaded: bool


class StoreVersions(BaseModel):
    name: str
    versions: list[StoreVersion]
