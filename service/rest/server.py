"""Run the app under uvicorn (uvloop + httptools) with graceful-shutdown timing from settings."""

import copy
import os
import signal
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from mlscale.service.contract import SETTINGS_ENV
from mlscale.service.rest.app import create_app
from mlscale.service.rest.exchange import ProtocolFactory
from mlscale.service.rest.transport import ConnectionLimits
from mlscale.service.settings import Settings


def logging_config(level: str) -> dict[str, Any]:
    """uvicorn's own logging set-up, plus the `mlscale` logger through the same handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mlscale"] = {
        "handlers": ["default"], "level": level.upper(), "propagate": False,
    }  # fmt: skip
    return config


def run(settings: Settings) -> None:
    """Serve until stopped, with these settings. One process gets the app built here; with
    `--workers`, uvicorn starts each worker from an import string, so the same settings reach
    them as one serialized value (SETTINGS_ENV), not re-read piecemeal from the environment."""
    # uvicorn re-raises a SIGTERM it handled once shutdown is complete, under the handler that
    # was in place before it started. The drain has finished by then: end with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if settings.server.workers > 1:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        app: Any = "mlscale.service.rest.app:app_from_settings_env"
    else:
        app = create_app(settings)
    uvicorn.run(
        app,
        factory=settings.server.workers > 1,
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        log_level=settings.server.log_level,
        log_config=logging_config(settings.server.log_level),
        loop="uvloop",
        # httptools, the table's requests answered without an ASGI cycle, one write per
        # response and turn, connections closed at their limits
        http=ProtocolFactory(
            ConnectionLimits(
                settings.server.max_requests_per_connection,
                settings.server.max_connection_age_s,
                settings.server.request_head_timeout_s,
            )
        ),
        timeout_keep_alive=settings.server.keep_alive_s,
        lifespan="on",
        access_log=False,  # per-request logs cost ~10% throughput; /metrics counts requests
        # No client address is used, so X-Forwarded-For needs no parsing on every request;
        # and the response need not name the server software.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=settings.server.grace_period_s,
    )
