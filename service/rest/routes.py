"""The one route table: every path the server answers, with its method, its handler (in
`endpoints.py`) and its OpenAPI description. A versioned path (`.../versions/{version}/...`)
is the twin of an unversioned one and shares its handler; FastAPI only serves the docs pages.

`Router.match` finds a request's route by comparing path segments, without regular
expressions: about half a microsecond for the infer route, what the hand-written checks it
replaced took.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from pydantic import BaseModel
from starlette.types import Receive, Scope

from mlscale.service import contract
from mlscale.service.codecs import protocol
from mlscale.service.rest import openapi
from mlscale.service.rest.answer import Answer
from mlscale.service.rest.endpoints import Endpoints

# (scope, receive, model name, version) -> Answer; name is "" on paths without one.
Handler = Callable[[Scope, Receive, str, str | None], Awaitable[Answer]]
SERVER_METADATA = "/v2"
METRICS = "/metrics"
INFERENCE = "inference"  # the tag of the routes that run a model
MODEL_ERRORS = (404, 503)
INFER_ERRORS = (400, 404, 413, 415, 422, 500, 503)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the template, as the request metrics label it
    handler: Handler
    summary: str
    tag: str
    ok: type[BaseModel] | None  # the 200 body; None: not JSON (the Prometheus text)
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None  # the request body, parsed by the handler itself
    twin: str | None = None  # the same route for one version of the model


def table(e: Endpoints) -> list[Route]:
    """Every route, hot ones first."""
    return [
        Route("POST", contract.INFER, e.infer, "Infer", INFERENCE, protocol.InferenceResponse,
              INFER_ERRORS, protocol.InferenceRequest, twin=contract.INFER_VERSION),
        Route("GET", contract.LIVE, e.live, "Server live", "health", protocol.LiveResponse),
        Route("GET", contract.READY, e.ready, "Server ready", "health", protocol.ReadyResponse,
              (503,)),
        Route("GET", SERVER_METADATA, e.server_metadata, "Server metadata", "metadata",
              protocol.ServerMetadata),
        Route("GET", contract.MODEL_METADATA, e.model_metadata, "Model metadata", "metadata",
              protocol.ModelMetadata, MODEL_ERRORS, twin=contract.VERSION_METADATA),
        Route("GET", contract.MODEL_READY, e.model_ready, "Model ready", "health",
              protocol.ModelReadyResponse, MODEL_ERRORS, twin=contract.VERSION_READY),
        Route("POST", contract.V1_PREDICT, e.v1_predict, "Predict (KServe v1)", INFERENCE,
              protocol.PredictionsResponse, INFER_ERRORS, protocol.InstancesRequest),
        Route("GET", contract.V1_MODELS, e.v1_models, "List models (KServe v1)", "metadata",
              protocol.V1ModelsResponse),
        Route("GET", contract.V1_MODEL_READY, e.v1_model_ready, "Model ready (KServe v1)",
              "health", protocol.V1ModelReadyResponse, MODEL_ERRORS),
        Route("POST", contract.SIMPLE_PREDICT, e.simple_predict, "Predict", INFERENCE,
              protocol.PredictionsResponse, INFER_ERRORS, protocol.InstancesRequest),
        Route("GET", contract.STORE_VERSIONS, e.store_versions,
              "Versions in the store (mlscale extension; the rollout operator's quality gate)",
              "metadata", protocol.StoreVersions, MODEL_ERRORS),
        Route("GET", METRICS, e.prometheus, "Prometheus metrics", "metrics", None),
    ]  # fmt: skip


Match = tuple[str, Route, str, str | None]  # (template, route, name, version)


@dataclass(frozen=True)
class _Pattern:
    """A template with parameters, compiled for `Router.match`: the literal segments are
    compared all at once (one itemgetter, one tuple comparison), then the parameters read."""

    literals_of: Callable[[list[str]], tuple[str, ...]]
    literals: tuple[str, ...]
    name_at: int
    suffix: str  # after the name in its segment, e.g. ":predict"
    version_at: int  # 0: no version in this template
    template: str
    route: Route


def _compile(template: str, route: Route) -> _Pattern:
    at: list[int] = []
    literals: list[str] = []
    name_at = version_at = 0
    suffix = ""
    for i, part in enumerate(template.split("/")):
        if part.startswith("{name}"):
            name_at, suffix = i, part.removeprefix("{name}")
        elif part == "{version}":
            version_at = i
        else:
            at.append(i)
            literals.append(part)
    # At least two literals (the empty one before the leading "/", and one more), so the
    # getter returns a tuple.
    return _Pattern(itemgetter(*at), tuple(literals), name_at, suffix, version_at, template,
                    route)  # fmt: skip


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._static: dict[str, Match] = {}
        self._by_length: dict[int, list[_Pattern]] = {}
        for route in routes:
            for template in (route.path, route.twin):
                if template is None:
                    continue
                if "{" not in template:
                    self._static[template] = (template, route, "", None)
                else:
                    pattern = _compile(template, route)
                    self._by_length.setdefault(template.count("/") + 1, []).append(pattern)
        # `{name}:predict` before `{name}`, which would take "iris:predict" for a name.
        for patterns in self._by_length.values():
            patterns.sort(key=lambda p: not p.suffix)

    def match(self, path: str) -> Match | None:
        """The route whose template fits the path, whatever the method, with the path's model
        name and version."""
        found = self._static.get(path)
        if found is not None:
            return found
        parts = path.split("/")
        for p in self._by_length.get(len(parts), ()):
            if p.literals_of(parts) != p.literals:
                continue
            name = parts[p.name_at]
            if p.suffix:
                if not name.endswith(p.suffix):
                    continue
                name = name[: -len(p.suffix)]
            version = parts[p.version_at] if p.version_at else None
            if name and version != "":
                return p.template, p.route, name, version
        return None

    def docs(self) -> dict[str, Any]:
        """The OpenAPI `paths` and `components` of every route."""
        paths: dict[str, Any] = {}
        models: set[type[BaseModel]] = {protocol.ErrorResponse}
        for r in self.routes:
            doc = openapi.operation(r.summary, r.tag, r.ok, list(r.errors), r.body)
            models |= {m for m in (r.ok, r.body) if m is not None}
            for template in (r.path, r.twin):
                if template is None:
                    continue
                params = [p for p in ("name", "version") if f"{{{p}}}" in template]
                op = {**doc, "parameters": openapi.name_params(*params)} if params else doc
                if template == r.twin:
                    op = {**op, "summary": f"{r.summary}, of one version"}
                paths[template] = {r.method.lower(): op}
        return {"paths": paths, "components": {"schemas": openapi.components(models)}}
