"""The data plane: the loaded versions of one model, readiness, and inference.

Transport-free: `rest/endpoints.py` translates requests to calls here, and answers back.
"""

import logging
import time
from typing import Any

import numpy as np

from mlscale.service.artifacts.store import ModelStore
from mlscale.service.errors import InferenceFailed, ModelNotFound, ModelNotReady, StoreError
from mlscale.service.metrics import Metrics
from mlscale.service.runtime.batching import Batcher
from mlscale.service.runtime.model import LoadedModel, Outputs, RowOutputs
from mlscale.service.settings import BatchingSettings, ModelSettings

log = logging.getLogger("mlscale")


def configured_versions(store: ModelStore, model: ModelSettings) -> list[str]:
    """The versions a server loads, resolved: the default first, then the extra ones."""
    wanted = [model.model_version, *model.extra_versions]
    return list(dict.fromkeys(store.resolve(model.model_name, v) for v in wanted))


def preflight(model: ModelSettings) -> None:
    """Everything `DataPlane.load` checks short of unpickling, so that a server which cannot
    serve says why in one sentence before it starts, instead of in a startup traceback."""
    store = ModelStore(model.model_dir)
    for version in configured_versions(store, model):
        store.check(model.model_name, version)


class DataPlane:
    def __init__(self, model: ModelSettings, batching: BatchingSettings, metrics: Metrics) -> None:
        self.settings = model
        self.batching = batching
        self.metrics = metrics
        self.store = ModelStore(model.model_dir)
        self.name = model.model_name
        self.default_version = ""
        self.models: dict[str, LoadedModel] = {}
        self._batchers: dict[str, Batcher] = {}
        self.loaded = False  # every configured version verified, loaded and warmed up
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    def load(self) -> None:
        """Load, verify and warm up every configured version. Any failure is fatal: a bad
        version never becomes ready."""
        versions = configured_versions(self.store, self.settings)
        self.default_version = versions[0]
        for version in versions:
            start = time.perf_counter()
            manifest, estimator = self.store.load(self.name, version)
            loaded = LoadedModel(manifest, estimator, fast_path=self.settings.fast_path)
            loaded.warm_up()
            loaded.load_seconds = time.perf_counter() - start
            self.models[version] = loaded
            if self.batching.enabled:
                self._batchers[version] = Batcher(
                    loaded.predict,
                    max_size=self.batching.max_size,
                    max_wait_s=self.batching.max_wait_ms / 1000,
                    observer=self.metrics,
                    concat=np.concatenate if manifest.columns is None else concat_frames,
                )
            self.metrics.load_seconds.labels(self.name, version).set(loaded.load_seconds)
            self.metrics.model_info.labels(
                self.name, version, manifest.sha256, manifest.sklearn_version,
                str(version == self.default_version).lower(),
            ).set(1)  # fmt: skip
            log.info(
                "loaded %s/%s (%s, fast path: %s) in %.1f ms",
                self.name, version, manifest.estimator, loaded.has_fast_path,
                loaded.load_seconds * 1000,
            )  # fmt: skip
        self.loaded = True

    async def close(self) -> None:
        for batcher in self._batchers.values():
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
        body = {
            "name": m.name,
            "versions": list(self.models),
            "platform": f"sklearn_{m.sklearn_version}",
            "inputs": [spec.model_dump() for spec in m.inputs],
            "outputs": [spec.model_dump() for spec in m.outputs],
            "parameters": {
                "version": m.version,
                "default_version": self.default_version,
                "estimator": m.estimator,
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
        """Every version of the served model in the store (loaded or not), with offline
        metrics: what the rollout operator's quality gate compares."""
        self.model(name)  # 404 for a model this server does not serve
        versions, damaged = [], []
        for version, m in self.store.catalogue(name):
            if isinstance(m, StoreError):  # listed apart: it hides none of the others
                damaged.append({"version": version, "error": m.message})
                continue
            versions.append({"version": m.version, "metrics": m.metrics, "sha256": m.sha256,
                             "created": m.created.isoformat(),
                             "loaded": m.version in self.models})  # fmt: skip
        return {"name": name, "versions": versions, "damaged": damaged}

    def model(self, name: str | None, version: str | None = None) -> LoadedModel:
        """The loaded version that answers a path (None: the served model); 404 names what
        is served instead."""
        name = self.name if name is None else name
        if name != self.name:
            raise ModelNotFound(f"model '{name}' not found; this server serves '{self.name}'")
        if not self.loaded:
            raise ModelNotReady(f"model '{name}' is not loaded yet")
        version = version or self.default_version
        loaded = self.models.get(version)
        if loaded is None:
            raise ModelNotFound(
                f"model '{name}' version '{version}' is not loaded; loaded versions: "
                + ", ".join(self.models)
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
        batcher = self._batchers.get(model.version)
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

    def _failed(self, model: LoadedModel, exc: Exception) -> InferenceFailed:
        log.exception("%s/%s failed to predict", model.name, model.version)
        return InferenceFailed(
            f"model '{model.name}' version '{model.version}' failed to predict: {exc}"
        )


def concat_frames(frames: list[Any]) -> Any:
    import pandas as pd  # only models fitted on a DataFrame batch frames

    return pd.concat(frames, ignore_index=True)
