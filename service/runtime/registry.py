"""The models one server serves: for each, its loaded versions and the default one, or why it
could not be loaded. Loading is all or nothing per model: a model serves every version it was
configured with, or none (a bad version never becomes ready)."""

import logging
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlscale.service.artifacts.manifest import ONNX, SKLEARN, Manifest
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.metrics import Metrics
from mlscale.service.runtime.batching import Batcher
from mlscale.service.runtime.compiled import CompiledModel
from mlscale.service.runtime.model import LoadedModel, fast_paths
from mlscale.service.settings import BatchingSettings, ModelSettings

log = logging.getLogger("mlscale")


@dataclass
class ServedModel:
    name: str
    wanted: list[str]  # versions asked for, the default first; `latest` is the highest
    default_version: str = ""
    versions: dict[str, LoadedModel] = field(default_factory=dict)
    batchers: dict[str, Batcher] = field(default_factory=dict)
    error: str = ""  # why it is not served, once loading it failed

    @property
    def ready(self) -> bool:
        return bool(self.versions)


def configured(settings: ModelSettings) -> list[ServedModel]:
    """The set a server serves: `model_name` first (its default and extra versions), then
    `models`, one version each."""
    first = ServedModel(settings.model_name, [settings.model_version, *settings.extra_versions])
    return [first, *(ServedModel(name, [version]) for name, version in settings.models.items())]


def resolve(store: ModelStore, model: ServedModel) -> list[str]:
    """A model's versions as numbers, the default first; StoreError when one is missing."""
    return list(dict.fromkeys(store.resolve(model.name, v) for v in model.wanted))


def load(
    store: ModelStore, model: ServedModel, settings: ModelSettings, batching: BatchingSettings,
    metrics: Metrics,
) -> None:  # fmt: skip
    """Verify, load and warm up every version of `model`, then make them its own; raises on
    the first that fails, leaving `model` without versions."""
    versions = resolve(store, model)
    loaded: dict[str, LoadedModel] = {}
    for version in versions:
        start = time.perf_counter()
        manifest = store.check(model.name, version, settings.runtime)
        compiled = manifest.runtime == ONNX and settings.runtime != SKLEARN
        import_runtime(compiled)  # its code, imported once, is not this version's memory
        with held_memory() as memory:
            one = open_version(store, manifest, compiled, settings)
            one.warm_up()
        one.load_seconds = time.perf_counter() - start
        loaded[version] = one
        metrics.load_seconds.labels(model.name, version).set(one.load_seconds)
        held = memory.bytes + one.native_bytes
        metrics.memory.labels(model.name, version).set(held)
        log.info(
            "loaded %s/%s (%s on %s, fast path: %s) in %.1f ms, holding %.1f KiB",
            model.name, version, one.manifest.estimator, one.platform, one.has_fast_path,
            one.load_seconds * 1000, held / 1024,
        )  # fmt: skip
    model.default_version = versions[0]
    model.versions = loaded
    for version, one in loaded.items():
        metrics.model_info.labels(
            model.name, version, one.manifest.sha256, one.manifest.sklearn_version,
            str(version == model.default_version).lower(),
        ).set(1)  # fmt: skip
        if batching.enabled:
            model.batchers[version] = Batcher(
                one.predict,
                max_size=batching.max_size,
                max_wait_s=batching.max_wait_ms / 1000,
                observer=metrics,
                concat=np.concatenate if one.manifest.columns is None else concat_tables,
            )


def import_runtime(compiled: bool) -> None:
    """The libraries a version runs on: onnxruntime, or scikit-learn and joblib (only the full
    image has them; `check` refused their versions where they are missing)."""
    if compiled:
        import onnxruntime  # noqa: F401
    else:
        import joblib  # noqa: F401

        fast_paths()  # imports scikit-learn's estimators


def open_version(
    store: ModelStore, manifest: Manifest, compiled: bool, settings: ModelSettings
) -> LoadedModel:
    """A version `check` passed: its graphs on onnxruntime, or its estimator unpickled."""
    if compiled:
        return CompiledModel.open(manifest, store.folder(manifest))
    return LoadedModel(manifest, store.unpickle(manifest), fast_path=settings.fast_path)


@dataclass
class Held:
    bytes: int = 0


@contextmanager
def held_memory() -> Iterator[Held]:
    """Bytes allocated inside the block and still held at its end, as Python's allocator and
    numpy report them to tracemalloc: what a model version keeps (its runtime's code is
    imported before; a compiled version adds the native memory its sessions took). Traced
    only while loading; requests never are."""
    held = Held()
    ours = not tracemalloc.is_tracing()  # someone tracing already keeps their tracer
    if ours:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    try:
        yield held
        held.bytes = max(0, tracemalloc.get_traced_memory()[0] - before)
    finally:
        if ours:
            tracemalloc.stop()


def concat_tables(tables: list[Any]) -> Any:
    from mlscale.service.runtime.frames import Table  # pandas, only for DataFrame models

    return Table.concat(tables)
