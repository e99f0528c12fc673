"""What each route does. A handler takes the request (its ASGI scope and receive) and the model
name and version from its path, asks the data plane, and returns an `Answer`; it never writes
HTTP. `routes.py` says which path reaches which handler; `fastpath.py` writes the answer.
"""

import zlib

from starlette.types import Receive, Scope

from mlscale.service import __version__
from mlscale.service.codecs import binary, protocol
from mlscale.service.errors import (
    InvalidInput,
    MLScaleError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from mlscale.service.metrics import Metrics
from mlscale.service.rest.answer import Answer, error_answer, json_answer
from mlscale.service.runtime.dataplane import DataPlane
from mlscale.service.runtime.model import LoadedModel

LIVE = Answer(200, b'{"live":true}')
READY = Answer(200, b'{"ready":true}')
NOT_READY = Answer(503, b'{"ready":false}')


def _media(content_type: bytes) -> bytes:
    return content_type.split(b";")[0].strip().lower()


def _is_json(content_type: bytes) -> bool:
    media = _media(content_type)
    return media == b"application/json" or media.endswith(b"+json")


def _is_binary(content_type: bytes) -> bool:
    return _media(content_type) == b"application/octet-stream"


_RAISE = " (the server's MLSCALE_MAX_BODY_BYTES; the chart's server.maxBodyBytes)"
_AS_IS = (b"", b"identity")  # Content-Encoding: the body as it was sent
_CODINGS = (*_AS_IS, b"gzip", b"x-gzip", b"deflate")


async def read_body(scope: Scope, receive: Receive, limit: int, binary_data: bool = False) -> bytes:
    """The request body, refusing non-JSON media types and bodies over `limit` bytes. A body
    sent without a content type is taken to be JSON; with `binary_data` (the binary tensor
    extension), application/octet-stream is accepted too. A gzip or deflate body (Triton's
    clients compress on request) is inflated, to `limit` bytes at most."""
    encoding = b""
    for key, value in scope["headers"]:
        if key == b"content-type":
            if not _is_json(value) and not (binary_data and _is_binary(value)):
                raise UnsupportedMediaType("send the body as application/json")
        elif key == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(
                f"body of {int(value)} bytes exceeds the limit of {limit}{_RAISE}"
            )
        elif key == b"content-encoding":
            encoding = value.strip().lower()
            if encoding not in _CODINGS:
                coding = value.decode("latin-1")
                raise UnsupportedMediaType(
                    f"Content-Encoding {coding!r} is not taken; send gzip, deflate or none"
                )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes{_RAISE}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return _inflated(body, encoding, limit) if encoding not in _AS_IS else body


def _inflated(body: bytes, encoding: bytes, limit: int) -> bytes:
    """A gzip or deflate body, inflated no further than `limit` bytes: a small body that would
    inflate past it (a zip bomb) is refused before it takes the memory."""
    inflate = zlib.decompressobj(47)  # 32 + 15: a gzip or a zlib header, whichever it has
    try:
        inflated = inflate.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not {encoding.decode()} data ({exc})") from None
    if len(inflated) > limit:
        raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes once inflated{_RAISE}")
    if not inflate.eof:
        raise InvalidInput(f"the {encoding.decode()} body ends before its data does")
    return inflated


class Endpoints:
    """The handlers, over one data plane. Each has the same signature (`routes.Handler`)."""

    def __init__(self, plane: DataPlane, metrics: Metrics, limit: int) -> None:
        self.plane, self.metrics, self.limit = plane, metrics, limit
        self.server_metadata_answer = json_answer(
            {"name": "mlscale", "version": __version__, "extensions": ["binary_tensor_data"]}
        )
        self.metrics_media = metrics.content_type.encode()

    async def live(self, scope: Scope, receive: Receive, name: str, version: str | None) -> Answer:
        return LIVE

    async def ready(self, scope: Scope, receive: Receive, name: str, version: str | None
                    ) -> Answer:  # fmt: skip
        return READY if self.plane.ready else NOT_READY

    async def server_metadata(self, scope: Scope, receive: Receive, name: str,
                              version: str | None) -> Answer:  # fmt: skip
        return self.server_metadata_answer

    async def model_metadata(self, scope: Scope, receive: Receive, name: str,
                             version: str | None) -> Answer:  # fmt: skip
        body, answered = self.plane.metadata(name, version)
        return json_answer(body, answered=answered)

    async def model_ready(self, scope: Scope, receive: Receive, name: str, version: str | None
                          ) -> Answer:  # fmt: skip
        body, answered = self.plane.model_ready(name, version)
        return json_answer(body, 200 if body["ready"] else 503, answered)

    async def v1_models(self, scope: Scope, receive: Receive, name: str, version: str | None
                        ) -> Answer:  # fmt: skip
        return json_answer({"models": list(self.plane.served)})

    async def v1_model_ready(self, scope: Scope, receive: Receive, name: str,
                             version: str | None) -> Answer:  # fmt: skip
        body, answered = self.plane.model_ready(name, None)
        ready = {"name": body["name"], "ready": body["ready"]}
        return json_answer(ready, 200 if body["ready"] else 503, answered)

    async def store_versions(self, scope: Scope, receive: Receive, name: str,
                             version: str | None) -> Answer:  # fmt: skip
        return json_answer(self.plane.store_versions(name))

    async def prometheus(self, scope: Scope, receive: Receive, name: str, version: str | None
                         ) -> Answer:  # fmt: skip
        return Answer(200, self.metrics.render(), media=self.metrics_media)

    async def infer(self, scope: Scope, receive: Receive, name: str, version: str | None
                    ) -> Answer:  # fmt: skip
        model = self.plane.model(name, version)
        try:
            json_length = binary.json_length(scope["headers"])
            body = await read_body(scope, receive, self.limit, json_length is not None)
            request = protocol.decode_infer_request(body, model.manifest, json_length)
            outputs = await self.plane.infer(model, request.x, request.outputs)
        except MLScaleError as exc:
            return error_answer(exc, model.identity)
        if request.binary:
            body, length = protocol.encode_binary_response(
                model.manifest, outputs, request.outputs, request.id, request.binary
            )
            return Answer(200, body, model.identity, length)
        body = protocol.encode_infer_response(model.manifest, outputs, request.outputs, request.id)
        return Answer(200, body, model.identity)

    async def v1_predict(self, scope: Scope, receive: Receive, name: str, version: str | None
                         ) -> Answer:  # fmt: skip
        return await self._predict_instances(scope, receive, self.plane.model(name))

    async def simple_predict(self, scope: Scope, receive: Receive, name: str,
                             version: str | None) -> Answer:  # fmt: skip
        return await self._predict_instances(scope, receive, self.plane.model(None))

    async def _predict_instances(self, scope: Scope, receive: Receive, model: LoadedModel
                                 ) -> Answer:  # fmt: skip
        try:
            body = await read_body(scope, receive, self.limit)
            x = protocol.decode_instances(body, model.manifest)
            outputs = await self.plane.predict(model, x, ["predict"])
        except MLScaleError as exc:
            return error_answer(exc, model.identity)
        body = protocol.encode_predictions(model.manifest, outputs["predict"])
        return json_answer(body, answered=model.identity)
