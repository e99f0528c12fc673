"""The app: cold routes in FastAPI, hot routes in `fastpath.py`, assembled by `create_app`.

`create_app(settings)` builds everything from explicit settings; nothing is read from globals.
"""

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from mlscale.service import __version__, contract, protocol
from mlscale.service.contract import SETTINGS_ENV
from mlscale.service.dataplane import DataPlane
from mlscale.service.errors import MLScaleError
from mlscale.service.fastpath import AnsweredBy, FastPath, model_headers, read_body
from mlscale.service.metrics import Metrics
from mlscale.service.runtime import LoadedModel
from mlscale.service.settings import Settings
from mlscale.service.shutdown import DrainOnSigterm

log = logging.getLogger("mlscale")

JSON = "application/json"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": protocol.ErrorResponse, "description": text}
    for code, text in [
        (400, "Invalid input"), (404, "Unknown model or version"), (413, "Body too large"),
        (415, "Not JSON"), (500, "The model failed"), (503, "Not ready"),
    ]
}  # fmt: skip


def json_response(body: Any, status: int = 200, answered: AnsweredBy | None = None) -> Response:
    """A JSON answer; `answered` (model, version) adds the headers naming who answered."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    response = Response(raw, status_code=status, media_type=JSON)
    if answered:
        response.raw_headers.extend(model_headers(answered))
    return response


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for a handler that parses the raw body itself."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": _ref(model)}}}}


def _operation(
    summary: str, tag: str, ok: type[BaseModel], errors: list[int], body: type[BaseModel] | None
) -> dict[str, Any]:
    responses = {"200": {"description": "OK", "content": {JSON: {"schema": _ref(ok)}}}}
    for code in errors:
        doc = ERRORS[code]
        schema = _ref(protocol.ErrorResponse)
        responses[str(code)] = {
            "description": doc["description"],
            "content": {JSON: {"schema": schema}},
        }
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op.update(_body_doc(body))
    return op


def _name_params(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


def hot_route_docs() -> dict[str, Any]:
    """OpenAPI paths of the routes `fastpath.py` answers (FastAPI never sees them)."""
    infer_errors = [400, 404, 413, 415, 500, 503]
    infer = _operation(
        "Infer", "inference", protocol.InferenceResponse, infer_errors, protocol.InferenceRequest
    )
    return {
        contract.LIVE: {
            "get": _operation("Server live", "health", protocol.LiveResponse, [], None)
        },
        contract.READY: {
            "get": _operation("Server ready", "health", protocol.ReadyResponse, [503], None)
        },
        contract.INFER: {"post": {**infer, "parameters": _name_params("name")}},
        contract.INFER_VERSION: {
            "post": {
                **infer,
                "summary": "Infer with a version",
                "parameters": _name_params("name", "version"),
            }
        },
    }


def build_api(settings: Settings, plane: DataPlane, metrics: Metrics) -> FastAPI:
    """The FastAPI app: metadata, model readiness, v1 and simple predict, metrics, docs."""
    limit = settings.server.max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            plane.load()
        except MLScaleError as exc:
            log.error("cannot serve: %s", exc.message)
            raise
        # Everything loaded so far lives as long as the process; keep the collector from
        # rescanning it, or full collections add tens of milliseconds to the p99.
        gc.freeze()
        DrainOnSigterm(plane, settings.server.shutdown_delay_s).install()
        yield
        await plane.close()

    api = FastAPI(
        title="mlscale",
        version=__version__,
        summary="Open Inference Protocol v2 server for scikit-learn models.",
        lifespan=lifespan,
    )

    @api.exception_handler(MLScaleError)
    async def domain_error(request: Request, exc: MLScaleError) -> Response:
        return json_response({"error": exc.message}, exc.status_code, exc.answered_by)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return json_response({"error": str(exc.detail)}, exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return json_response({"error": str(exc.errors())}, 400)

    @api.get("/v2", response_model=protocol.ServerMetadata, tags=["metadata"])
    async def server_metadata() -> Response:
        return json_response(
            {"name": "mlscale", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    def metadata(name: str, version: str | None) -> Response:
        body, answered = plane.metadata(name, version)
        return json_response(body, answered=answered)

    @api.get(
        contract.MODEL_METADATA, response_model=protocol.ModelMetadata, responses=ERRORS,
        tags=["metadata"],
    )  # fmt: skip
    async def model_metadata(name: str) -> Response:
        return metadata(name, None)

    @api.get(
        contract.VERSION_METADATA, response_model=protocol.ModelMetadata,
        responses=ERRORS, tags=["metadata"],
    )  # fmt: skip
    async def version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    def readiness(name: str, version: str | None) -> Response:
        body, answered = plane.model_ready(name, version)
        return json_response(body, 200 if body["ready"] else 503, answered=answered)

    @api.get(
        contract.MODEL_READY, response_model=protocol.ModelReadyResponse, responses=ERRORS,
        tags=["health"],
    )  # fmt: skip
    async def model_ready(name: str) -> Response:
        return readiness(name, None)

    @api.get(
        contract.VERSION_READY, response_model=protocol.ModelReadyResponse,
        responses=ERRORS, tags=["health"],
    )  # fmt: skip
    async def version_ready(name: str, version: str) -> Response:
        return readiness(name, version)

    async def predict_instances(request: Request, model: LoadedModel) -> Response:
        try:
            x = protocol.decode_instances(
                await read_body(request.scope, request.receive, limit), model.manifest
            )
            outputs = await plane.predict(model, x, ["predict"])
        except MLScaleError as exc:
            exc.answered_by = model.identity
            raise
        body = protocol.encode_predictions(model.manifest, outputs["predict"])
        return json_response(body, answered=model.identity)

    @api.post(
        contract.V1_PREDICT, response_model=protocol.PredictionsResponse,
        responses=ERRORS, openapi_extra=_body_doc(protocol.InstancesRequest), tags=["inference"],
    )  # fmt: skip
    async def v1_predict(request: Request, name: str) -> Response:
        return await predict_instances(request, plane.model(name))

    @api.post(
        contract.SIMPLE_PREDICT, response_model=protocol.PredictionsResponse, responses=ERRORS,
        openapi_extra=_body_doc(protocol.InstancesRequest), tags=["inference"],
    )  # fmt: skip
    async def simple_predict(request: Request) -> Response:
        return await predict_instances(request, plane.model(None))

    @api.get(
        contract.STORE_VERSIONS, response_model=protocol.StoreVersions,
        responses=ERRORS, tags=["metadata"],
    )  # fmt: skip
    async def store_versions(name: str) -> Response:
        """mlscale extension: every version of the model in this server's store (loaded or
        not), with offline metrics; the rollout operator's quality gate reads it."""
        return json_response(plane.store_versions(name))

    @api.get("/metrics", tags=["metrics"], response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version, routes=api.routes,
                                 summary=api.summary)  # fmt: skip
            schema["paths"] = {**hot_route_docs(), **schema["paths"]}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (
                protocol.InferenceRequest, protocol.InferenceResponse, protocol.InstancesRequest,
                protocol.LiveResponse, protocol.ReadyResponse, protocol.ErrorResponse,
            ):  # fmt: skip
                doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(doc.pop("$defs", {}))
                components[model.__name__] = doc
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api


def create_app(settings: Settings) -> FastPath:
    metrics = Metrics()
    plane = DataPlane(settings.model, settings.batching, metrics)
    api = build_api(settings, plane, metrics)
    return FastPath(api, plane, metrics, settings.server.max_body_bytes)


def app_from_settings_env() -> FastPath:
    """Factory for uvicorn's worker processes: the settings `server.run` serialized."""
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))
