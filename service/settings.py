"""Server configuration, read from `MLSCALE_*` environment variables.

One class per concern, each field documented; the objects are passed into constructors,
never read as globals.
"""

from itertools import pairwise
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mlscale.service.contract import MAX_BODY_BYTES, format_models, parse_models

# 0 and +-{1, 2, 5} x 10^k for k in -2..4: 43 bounds, from -50000 to 50000.
LOG_BUCKETS = tuple(
    sorted({s * m * 10.0**k for s in (-1, 1) for k in range(-2, 5) for m in (1, 2, 5)} | {0.0})
)


class ModelSettings(BaseSettings):
    """Which model, and which of its versions, this server loads."""

    model_config = SettingsConfigDict(env_prefix="MLSCALE_", extra="ignore")

    model_dir: Path = Field(Path("models"), description="Root of the model store.")
    model_name: str = Field("linear", description="Name of the model to serve.")
    model_version: str = Field(
        "latest",
        description="Default version, answered on unversioned paths; `latest` is the highest.",
    )
    extra_versions: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More versions to load beside the default, reachable on versioned paths "
        "(comma-separated in the environment).",
    )

    models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="More models served beside `model_name`, each `name:version` or `name` (its "
        "latest), comma-separated. Each has its own readiness and metrics; one that fails to "
        "load is not served, and says why, while the others are.",
    )

    runtime: Literal["auto", "sklearn", "onnx"] = Field(
        "auto",
        description="auto: a version published compiled runs its ONNX graphs on onnxruntime, "
        "the others scikit-learn; sklearn: every version runs its joblib file; onnx: compiled "
        "versions only, any other is refused (the slim image, which has no scikit-learn).",
    )

    fast_path: bool = Field(
        True,
        description="Evaluate linear models' formulas directly instead of calling `predict` "
        "(same answers, see runtime/model.py); false forces scikit-learn's `predict`.",
    )

    prediction_buckets: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(LOG_BUCKETS),
        description="Upper bounds of the histogram of a regressor's answers "
        "(`mlscale_prediction_value`, comma-separated in the environment), which a canary's "
        "output distribution is compared with stable's on. The default, 0 and +-1, 2, 5 x "
        "10^-2..10^4, fits any scale coarsely; bounds around your model's range resolve it finely.",
    )

    @field_validator("extra_versions", "prediction_buckets", mode="before")
    @classmethod
    def _split_list(cls, raw: object) -> object:
        if isinstance(raw, str):
            return [v.strip() for v in raw.split(",") if v.strip()]
        return raw

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, raw: object) -> object:
        return parse_models(raw) if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _one_set(self) -> "ModelSettings":
        if self.model_name in self.models:
            raise ValueError(f"models lists '{self.model_name}', which is model_name already")
        return self

    @model_validator(mode="after")
    def _buckets_increase(self) -> "ModelSettings":
        bounds = self.prediction_buckets
        if not bounds or any(a >= b for a, b in pairwise(bounds)):
            raise ValueError("prediction_buckets must be one or more strictly increasing numbers")
        return self


class BatchingSettings(BaseSettings):
    """Adaptive batching: merge concurrent requests into one `predict` call."""

    model_config = SettingsConfigDict(env_prefix="MLSCALE_BATCH_", extra="ignore")

    enabled: bool = Field(True, description="Merge concurrent requests; false predicts each alone.")
    max_size: int = Field(64, ge=1, description="Flush a batch once it holds this many rows.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="Extra time to wait for more requests after the first one. 0 still merges "
        "every request that arrived while the previous batch ran, without adding latency.",
    )


class ServerSettings(BaseSettings):
    """HTTP serving and shutdown behaviour."""

    model_config = SettingsConfigDict(env_prefix="MLSCALE_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, description="Processes; keep 1 on Kubernetes, pods scale out.")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="uvicorn log level: debug, info, warning, error."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:  # LOG_LEVEL=INFO is as good as info
        return value.lower() if isinstance(value, str) else value

    max_body_bytes: int = Field(
        MAX_BODY_BYTES,
        ge=1,
        description="Largest request body accepted; larger ones get 413.",
    )
    request_head_timeout_s: float = Field(
        10.0,
        ge=0,
        description="A connection that has not sent a whole request head (line and headers) "
        "this long after it opened, or after its request began, gets 408 and is closed "
        "(slowloris; 0: no limit).",
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        description="Close a keep-alive connection idle this long after its last response. "
        "Behind a proxy, set the proxy's idle timeout below this, or this above the proxy's: "
        "a request the proxy sends on a connection as it closes fails.",
    )
    rejection_log_per_s: float = Field(
        10,
        ge=0,
        description="Log rejected requests (4xx, 5xx), one line each with route, status, "
        "reason and client, at most this many lines a second (0: none).",
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, keep serving (not ready) this long so load balancers stop "
        "sending first. The chart sets it a little above the endpoint propagation time.",
    )
    grace_period_s: int = Field(
        20,
        gt=0,
        description="After the delay, how long in-flight requests may take before they are cut.",
    )
    max_requests_per_connection: int = Field(
        0,
        ge=0,
        description="Close a keep-alive connection after this many requests (0: never), so "
        "clients reconnect and a Service spreads them over new pods. The chart sets it.",
    )
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        description="Close a keep-alive connection at its first response after this many "
        "seconds (0: never). The chart sets it.",
    )


class Settings(BaseModel):
    """Everything the server needs, grouped by concern. A plain model, not settings: each group
    reads its own `MLSCALE_*` variables, and nothing reads `MODEL` or `SERVER` (which `make
    serve MODEL=iris` puts in the environment)."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)


GROUPS: tuple[type[BaseSettings], ...] = (ModelSettings, BatchingSettings, ServerSettings)


def _variable(group: type[BaseSettings] | None, name: str) -> str:
    """The environment variable a setting of `group` reads."""
    prefix = group.model_config.get("env_prefix", "") if group else ""
    return f"{prefix}{name}".upper()


def invalid(exc: ValidationError) -> list[str]:
    """A settings group's validation error, one sentence per setting, named as its variable
    (`mlscale serve`'s option of the same name says the same)."""
    group = next((g for g in GROUPS if g.__name__ == exc.title), None)
    return [
        _variable(group, "_".join(str(p) for p in error["loc"]))
        + f"={error.get('input')!r}: {error['msg']}"
        for error in exc.errors()
    ]


def environment() -> list[tuple[str, str, str]]:
    """Every setting as (variable, default, description): what `mlscale serve --help` lists."""
    rows = []
    for group in GROUPS:
        for name, field in group.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):
                default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
                if len(default) > 40:
                    default = f"{default[:24]}… ({default.count(',') + 1} values)"
            elif isinstance(default, dict):
                default = format_models(default)
            elif isinstance(default, bool):
                default = str(default).lower()
            rows.append((_variable(group, name), str(default), field.description or ""))
    return rows
