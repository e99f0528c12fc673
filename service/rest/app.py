"""The app, assembled by `create_app(settings)`: the route table's handlers over one data plane,
answered by `fastpath.py`, with FastAPI behind it for the lifespan and the docs pages.

Everything is built from explicit settings; nothing is read from globals.
"""

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.responses import Response

from mlscale.service import __version__
from mlscale.service.contract import SETTINGS_ENV
from mlscale.service.metrics import Metrics
from mlscale.service.rest.answer import error_body
from mlscale.service.rest.endpoints import Endpoints
from mlscale.service.rest.fastpath import FastPath
from mlscale.service.rest.rejections import RejectionLog
from mlscale.service.rest.routes import Router, table
from mlscale.service.rest.shutdown import DrainOnSigterm
from mlscale.service.runtime.dataplane import DataPlane
from mlscale.service.settings import Settings

log = logging.getLogger("mlscale")


def build_api(settings: Settings, plane: DataPlane, router: Router) -> FastAPI:
    """The FastAPI app: loading at startup, draining on SIGTERM, and the docs pages, which
    describe the route table."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plane.load()
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

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Paths outside the table: 404 in the protocol's error shape."""
        return Response(error_body(str(exc.detail)), exc.status_code,
                        media_type="application/json")  # fmt: skip

    def schema() -> dict[str, Any]:
        if api.openapi_schema is None:
            doc = get_openapi(title=api.title, version=api.version, routes=[],
                              summary=api.summary)  # fmt: skip
            api.openapi_schema = {**doc, **router.docs()}
        return api.openapi_schema

    api.openapi = schema  # type: ignore[method-assign]
    return api


def create_app(settings: Settings) -> FastPath:
    metrics = Metrics(settings.model.prediction_buckets)
    plane = DataPlane(settings.model, settings.batching, metrics)
    router = Router(table(Endpoints(plane, metrics, settings.server.max_body_bytes)))
    rejections = RejectionLog(settings.server.rejection_log_per_s)
    return FastPath(build_api(settings, plane, router), plane, metrics, router, rejections)


def app_from_settings_env() -> FastPath:
    """Factory for uvicorn's worker processes: the settings `server.run` serialized."""
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))
