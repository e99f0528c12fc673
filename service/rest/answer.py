"""One way out. Every handler (`endpoints.py`) returns an `Answer`: status, body, and which
model version answered. `error_answer` is the one translation of a domain error into the
protocol's `{"error": ...}` body, and `response_headers` the one place response headers are
written, the `x-model-*` headers included. Who answered travels as data to the request
metrics, never parsed back out of the headers.
"""

import functools
from typing import Any, NamedTuple

import orjson

from mlscale.service import contract
from mlscale.service.codecs import binary
from mlscale.service.errors import MLScaleError

AnsweredBy = tuple[str, str]  # (model, version); ("", "") where no model answered
NOBODY: AnsweredBy = ("", "")
JSON = b"application/json"
BINARY_HEADER = (b"content-type", b"application/octet-stream")


class Answer(NamedTuple):
    status: int
    body: bytes
    answered: AnsweredBy = NOBODY
    json_length: int | None = None  # set when binary tensor data follows the JSON
    media: bytes = JSON  # the content type, unless binary data follows
    error: str | None = None  # a domain error's message, for the log of rejected requests


def json_answer(body: Any, status: int = 200, answered: AnsweredBy = NOBODY) -> Answer:
    return Answer(status, body if isinstance(body, bytes) else orjson.dumps(body), answered)


def error_answer(exc: MLScaleError, answered: AnsweredBy = NOBODY) -> Answer:
    """A domain error in the protocol's shape; `answered` once the request reached a version,
    so that error responses name the version, like successful ones."""
    return Answer(exc.status_code, error_body(exc.message), answered, error=exc.message)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


@functools.cache
def model_headers(answered: AnsweredBy) -> tuple[tuple[bytes, bytes], ...]:
    if answered == NOBODY:
        return ()
    return (
        (contract.MODEL_HEADER.encode(), answered[0].encode()),
        (contract.VERSION_HEADER.encode(), answered[1].encode()),
    )


def response_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", answer.media) if answer.json_length is None else BINARY_HEADER,
        (b"content-length", str(len(answer.body)).encode()),
    ]
    if answer.json_length is not None:
        headers.append((binary.HEADER, str(answer.json_length).encode()))
    headers += model_headers(answer.answered)
    return headers
