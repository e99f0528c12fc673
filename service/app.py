"""The app: cold routes in FastAPI, hot routes in `fastpath.py`, assembled by `create_app`.

`create_app(settings)` builds everything from explicit settings; nothing is read from globals.
"""

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.responses import Response

from mlscale.service import __version__, contract, fastpath, protocol
from mlscale.service.answer import ANSWERED, Answer, error_answer, json_answer, response_headers
from mlscale.service.contract import SETTINGS_ENV
from mlscale.service.dataplane import DataPlane
from mlscale.service.errors import MLScaleError
from mlscale.service.fastpath import FastPath, read_body
from mlscale.service.metrics import Metrics
from mlscale.service.openapi import ERRORS, body_doc
from mlscale.service.runtime import LoadedModel
from mlscale.service.settings import Settings
from mlscale.service.shutdown import DrainOnSigterm

log = logging.getLogger("mlscale")


def respond(request: Request, answer: Answer) -> Response:
    """A FastAPI route's answer as a response; who answered goes into the scope, where the
    request metrics (`fastpath.py`) read it."""
    request.scope[ANSWERED] = answer.answered
    response = Response(answer.body, status_code=answer.status)
    response.raw_headers = response_headers(answer)
    return response


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
        return respond(request, error_answer(exc))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return respond(request, json_answer({"error": str(exc.detail)}, exc.status_code))

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return respond(request, json_answer({"error": str(exc.errors())}, 400))

    @api.get("/v2", response_model=protocol.ServerMetadata, tags=["metadata"])
    async def server_metadata(request: Request) -> Response:
        body = {"name": "mlscale", "version": __version__, "extensions": ["binary_tensor_data"]}
        return respond(request, json_answer(body))

    # Each versioned path and its unversioned twin share one handler.
    def metadata(request: Request, name: str, version: str | None) -> Response:
        body, answered = plane.metadata(name, version)
        return respond(request, json_answer(body, answered=answered))

    @api.get(
        contract.MODEL_METADATA, response_model=protocol.ModelMetadata, responses=ERRORS,
        tags=["metadata"],
    )  # fmt: skip
    async def model_metadata(request: Request, name: str) -> Response:
        return metadata(request, name, None)

    @api.get(
        contract.VERSION_METADATA, response_model=protocol.ModelMetadata,
        responses=ERRORS, tags=["metadata"],
    )  # fmt: skip
    async def version_metadata(request: Request, name: str, version: str) -> Response:
        return metadata(request, name, version)

    def readiness(request: Request, name: str, version: str | None) -> Response:
        body, answered = plane.model_ready(name, version)
        return respond(request, json_answer(body, 200 if body["ready"] else 503, answered))

    @api.get(
        contract.MODEL_READY, response_model=protocol.ModelReadyResponse, responses=ERRORS,
        tags=["health"],
    )  # fmt: skip
    async def model_ready(request: Request, name: str) -> Response:
        return readiness(request, name, None)

    @api.get(
        contract.VERSION_READY, response_model=protocol.ModelReadyResponse,
        responses=ERRORS, tags=["health"],
    )  # fmt: skip
    async def version_ready(request: Request, name: str, version: str) -> Response:
        return readiness(request, name, version)

    async def predict_instances(request: Request, model: LoadedModel) -> Response:
        try:
            x = protocol.decode_instances(
                await read_body(request.scope, request.receive, limit), model.manifest
            )
            outputs = await plane.predict(model, x, ["predict"])
        except MLScaleError as exc:
            return respond(request, error_answer(exc, model.identity))
        body = protocol.encode_predictions(model.manifest, outputs["predict"])
        return respond(request, json_answer(body, answered=model.identity))

    @api.post(
        contract.V1_PREDICT, response_model=protocol.PredictionsResponse,
        responses=ERRORS, openapi_extra=body_doc(protocol.InstancesRequest), tags=["inference"],
    )  # fmt: skip
    async def v1_predict(request: Request, name: str) -> Response:
        return await predict_instances(request, plane.model(name))

    @api.post(
        contract.SIMPLE_PREDICT, response_model=protocol.PredictionsResponse, responses=ERRORS,
        openapi_extra=body_doc(protocol.InstancesRequest), tags=["inference"],
    )  # fmt: skip
    async def simple_predict(request: Request) -> Response:
        return await predict_instances(request, plane.model(None))

    @api.get(
        contract.STORE_VERSIONS, response_model=protocol.StoreVersions,
        responses=ERRORS, tags=["metadata"],
    )  # fmt: skip
    async def store_versions(request: Request, name: str) -> Response:
        """mlscale extension: every version of the model in this server's store (loaded or
        not), with offline metrics; the rollout operator's quality gate reads it."""
        return respond(request, json_answer(plane.store_versions(name)))

    @api.get("/metrics", tags=["metrics"], response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version, routes=api.routes,
                                 summary=api.summary)  # fmt: skip
            schema["paths"] = {**fastpath.route_docs(), **schema["paths"]}
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
