"""The data plane: the set of models a server serves (runtime/registry.py), readiness, and
inference.

Transport-free: `rest/endpoints.py` translates requests to calls here, and answers back.
"""

import logging
from typing import Any

import numpy as np

from mlscale.service.artifacts.store import ModelStore
from mlscale.service.errors import (
    InferenceFailed,
    MLScaleError,
    ModelNotFound,
    ModelNotReady,
    ModelRefused,
    NothingToServe,
    StoreError,
)
from mlscale.service.metrics import Metrics
from mlscale.service.runtime import registry
from mlscale.service.runtime.model import LoadedModel, Outputs, RowOutputs
from mlscale.service.runtime.registry import ServedModel, configured, resolve
from mlscale.service.settings import BatchingSettings, ModelSettings

log = logging.getLogger("mlscale")


def preflight(settings: ModelSettings) -> list[str]:
    """Everything loading checks short of unpickling, so that a server which cannot serve says
    why in one sentence before it starts, instead of in a startup traceback. Raises when no
    model of the set would serve; otherwise returns why each of the others will not."""
    store = ModelStore(settings.model_dir)
    failures: list[StoreError] = []
    models = configured(settings)
    for model in models:
        try:
            for version in resolve(store, model):
                store.check(model.name, version, settings.runtime)
        except StoreError as exc:
            failures.append(exc)
    if len(failures) == len(models):
        raise failures[0]
    return [exc.message for exc in failures]


class DataPlane:
    """The set of models a server serves, its readiness, and inference."""

    def __init__(self, model: ModelSettings, batching: BatchingSettings, metrics: Metrics) -> None:
        self.settings = model
        self.batching = batching
        self.metrics = metrics
        self.store = ModelStore(model.model_dir)
        self.served = {m.name: m for m in configured(model)}
        self.name = model.model_name  # the model unversioned, unnamed paths (/predict) answer
        self.loaded = False  # every model of the set tried: loaded, verified, warmed up, or failed
        self.draining = False
        self.cannot_serve = ""  # why the server cannot start, when no model loaded

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    def load(self) -> None:
        """Load every model of the set. One that fails is not served and says why; the others
        are. When none loads, there is nothing to serve: that is logged in one sentence with
        every reason (what the rollout reports of a crash-looping pod), and raised."""
        failures: list[Exception] = []
        for model in self.served.values():
            try:
                registry.load(self.store, model, self.settings, self.batching, self.metrics)
            except Exception as exc:  # unpickling can raise anything; none of it stops the rest
                failures.append(exc)
                model.error = exc.message if isinstance(exc, MLScaleError) else repr(exc)
                log.error("model %s is not served: %s", model.name, model.error)
            self.metrics.model_ready.labels(model.name).set(int(model.ready))
        if len(failures) == len(self.served):
            reasons = "; ".join(f"{m.name}: {m.error}" for m in self.served.values())
            self.cannot_serve = f"no model could be loaded ({reasons})"
            log.error("cannot serve: %s", self.cannot_serve)
            raise NothingToServe(self.cannot_serve)
        self.loaded = True

    async def close(self) -> None:
        for model in self.served.values():
            for batcher in model.batchers.values():
                await batcher.close()

    def drain(self) -> bool:
        """Stop being ready (SIGTERM); False when already draining."""
        if self.draining:
            return False
        self.draining = True
        return True

    def metadata(self, name: str, version: str | None) -> tuple[dict[str, Any], tuple[str, str]]:
        """The V2 model metadata of the version that answers, and who answered."""
        model = self.model(name, version)
        m = model.manifest
        served = self.served[model.name]
        body = {
            "name": m.name,
            "versions": list(served.versions),
            "platform": model.platform,
            "inputs": [spec.model_dump() for spec in m.inputs],
            "outputs": [spec.model_dump() for spec in m.outputs],
            "parameters": {
                "version": m.version,
                "default_version": served.default_version,
                "estimator": m.estimator,
                "runtime": m.runtime,
                "sha256": m.sha256,
                "metrics": m.metrics,
                "labels": m.labels,
                "created": m.created.isoformat(),
                # One training row by column (models fitted on a DataFrame, published with a
                # sample): what `mlscale check` and a user's first request can send.
                "example": m.columns.example if m.columns else None,
            },
        }
        return body, model.identity

    def model_ready(self, name: str, version: str | None) -> tuple[dict[str, Any], tuple[str, str]]:
        model = self.model(name, version)
        return {"name": name, "version": model.version, "ready": self.ready}, model.identity

    def store_versions(self, name: str) -> dict[str, Any]:
        """Every version of a served model in the store (loaded or not), with offline
        metrics: what the rollout operator's quality gate compares."""
        loaded = self._served(name).versions
        versions, damaged = [], []
        for version, m in self.store.catalogue(name):
            if isinstance(m, StoreError):  # listed apart: it hides none of the others
                damaged.append({"version": version, "error": m.message})
                continue
            versions.append({"version": m.version, "metrics": m.metrics, "sha256": m.sha256,
                             "created": m.created.isoformat(),
                             "loaded": m.version in loaded})  # fmt: skip
        return {"name": name, "versions": versions, "damaged": damaged}

    def _served(self, name: str) -> ServedModel:
        """A model of the set; 404 names the set for one outside it."""
        served = self.served.get(name)
        if served is None:
            raise ModelNotFound(f"model '{name}' not found; this server serves '"
                                + "', '".join(self.served) + "'")  # fmt: skip
        return served

    def model(self, name: str | None, version: str | None = None) -> LoadedModel:
        """The loaded version that answers a path (name None: the first model of the set);
        404 names what is served instead, 503 says why a model is not (yet)."""
        served = self._served(self.name if name is None else name)
        if served.error:
            raise ModelNotReady(f"model '{served.name}' is not served: {served.error}")
        if not self.loaded:
            raise ModelNotReady(f"model '{served.name}' is not loaded yet")
        version = version or served.default_version
        loaded = served.versions.get(version)
        if loaded is None:
            raise ModelNotFound(
                f"model '{served.name}' version '{version}' is not loaded; loaded versions: "
                + ", ".join(served.versions)
            )
        return loaded

    async def infer(self, model: LoadedModel, x: Any, outputs: list[str]) -> Outputs | RowOutputs:
        """`outputs` for a batch of rows. Small requests (Python lists) are answered at once
        where the model has an exact Python formula for those outputs: batching would save
        nothing there. The rest go through `predict`, merged with others when batching."""
        if type(x) is list:
            try:
                answer = model.predict_rows(x, outputs)
            except Exception as exc:
                raise self._failed(model, exc) from exc
            if answer is not None:
                self._count(model, answer)
                return answer
            x = np.array(x, dtype=np.float64)
        return await self.predict(model, x, outputs)

    async def predict(self, model: LoadedModel, x: Any, outputs: list[str]) -> Outputs:
        batcher = self.served[model.name].batchers.get(model.version)
        try:
            if batcher is not None:
                answer = await batcher.submit(x, outputs)
            else:
                answer = model.predict(x, outputs)
        except Exception as exc:
            raise self._failed(model, exc) from exc
        self._count(model, answer)
        return answer

    def _count(self, model: LoadedModel, answer: Outputs | RowOutputs) -> None:
        """What the model answered, for comparing versions (metrics.PredictionStats)."""
        if (predicted := answer.get("predict")) is not None:
            self.metrics.predictions.observe(model.identity, model.classifier, predicted)

    def _failed(self, model: LoadedModel, exc: Exception) -> ModelRefused | InferenceFailed:
        who = f"model '{model.name}' version '{model.version}'"
        if isinstance(exc, ValueError):
            return ModelRefused(f"{who} cannot answer this input: {exc}")
        log.exception("%s/%s failed to predict", model.name, model.version)
        return InferenceFailed(f"{who} failed to predict: {exc}")
