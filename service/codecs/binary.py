"""The Open Inference Protocol's binary tensor data extension, as Triton's HTTP client speaks it.

A request may carry tensors as raw bytes after its JSON: the `Inference-Header-Content-Length`
header gives the JSON's length, and each binary input says its byte count in
`parameters.binary_data_size`, in input order. Numbers are little-endian, row-major; BOOL is
one byte; BYTES elements are a 4-byte little-endian length, then the bytes. Outputs come back
the same way when the request asks (`parameters.binary_data_output`, or `binary_data` on one
requested output): the JSON names each output's byte count and the bytes follow it.

`tritonclient.http` sends binary inputs and asks for binary outputs by default.
"""

from math import prod
from typing import Any

import numpy as np
import orjson

from mlscale.service.errors import InvalidInput

HEADER = b"inference-header-content-length"
NONE: frozenset[str] = frozenset()
DTYPES = {
    "BOOL": np.dtype("?"),
    **{f"INT{b}": np.dtype(f"<i{b // 8}") for b in (8, 16, 32, 64)},
    **{f"UINT{b}": np.dtype(f"<u{b // 8}") for b in (8, 16, 32, 64)},
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


def json_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The JSON part's length, when the request says its tensors follow in binary."""
    for key, value in headers:
        if key == HEADER:
            if not value.isdigit():
                raise InvalidInput("Inference-Header-Content-Length must be a number of bytes")
            return int(value)
    return None


def attach(payload: Any, raw: memoryview) -> None:
    """Give each binary input its decoded data (a numpy array, or strings for BYTES)."""
    inputs = payload.get("inputs") if type(payload) is dict else None
    offset = 0
    for tensor in inputs if type(inputs) is list else []:
        size = _binary_size(tensor)
        if size is None:
            continue
        where = f"input {tensor.get('name')!r}"
        if offset + size > len(raw):
            raise InvalidInput(f"{where}: binary_data_size {size} runs past the body's end")
        tensor["data"] = _decode(raw[offset : offset + size], tensor, where)
        offset += size
    if offset != len(raw):
        raise InvalidInput(
            f"the body has {len(raw) - offset} bytes after the JSON that no input claims "
            "(binary_data_size)"
        )


def _binary_size(tensor: Any) -> int | None:
    params = tensor.get("parameters") if type(tensor) is dict else None
    size = params.get("binary_data_size") if type(params) is dict else None
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise InvalidInput("binary_data_size must be a non-negative integer")
    if "data" in tensor:
        raise InvalidInput(f"input {tensor.get('name')!r} has both data and binary_data_size")
    return size


def _decode(chunk: memoryview, tensor: dict[str, Any], where: str) -> np.ndarray | list[str]:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers")
    if datatype == "BYTES":
        return _decode_bytes(chunk, prod(shape), where)
    dtype = DTYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}")
    if len(chunk) != prod(shape) * dtype.itemsize:
        raise InvalidInput(
            f"{where}: shape {shape} of {datatype} needs {prod(shape) * dtype.itemsize} bytes, "
            f"binary_data_size is {len(chunk)}"
        )
    return np.frombuffer(chunk, dtype=dtype)


def _decode_bytes(chunk: memoryview, count: int, where: str) -> list[str]:
    values, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(chunk):
            raise InvalidInput(f"{where}: BYTES data ends before its {count} elements")
        length = int.from_bytes(chunk[offset : offset + 4], "little")
        offset += 4
        try:
            values.append(str(chunk[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"{where}: BYTES elements must be UTF-8 text") from None
        offset += length
    if offset != len(chunk):
        raise InvalidInput(f"{where}: BYTES data has bytes after its {count} elements")
    return values


def wanted(payload: dict[str, Any]) -> frozenset[str] | bool:
    """Which outputs the client wants in binary: True for all of them."""
    if "parameters" not in payload and "outputs" not in payload:
        return NONE  # the common request: nothing to look at (this runs for every inference)
    params = payload.get("parameters")
    if type(params) is dict and params.get("binary_data_output") is True:
        return True
    requested = payload.get("outputs")
    if type(requested) is not list:
        return NONE
    return frozenset(
        o["name"]
        for o in requested
        if type(o) is dict
        and type(o.get("parameters")) is dict
        and o["parameters"].get("binary_data") is True
    )


def encode(value: np.ndarray | list[Any], datatype: str) -> bytes:
    """One output tensor's raw bytes."""
    if datatype == "BYTES":
        items = value.ravel().tolist() if isinstance(value, np.ndarray) else value
        parts: list[bytes] = []
        for item in items:
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += (len(data).to_bytes(4, "little"), data)
        return b"".join(parts)
    return np.ascontiguousarray(value, dtype=DTYPES[datatype]).tobytes()


def response(header: dict[str, Any], raw: list[bytes]) -> tuple[bytes, int]:
    """The JSON header followed by the outputs' bytes, and the header's length."""
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return head + b"".join(raw), len(head)
