"""Train the example models and write them into the store as new versions.

`mlscale train` adds one version of each example model.
Each version's data comes from a seed derived from its version number, so versions differ
and a rebuild gives the same models.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

from mlscale.service.artifacts.manifest import Manifest, TensorSpec
from mlscale.service.artifacts.store import ModelStore


@dataclass(frozen=True)
class Trained:
    estimator: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float]
    labels: list[str]


def _regression_metrics(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = model.predict(x)
    return {"mse": float(mean_squared_error(y, pred)), "r2": float(r2_score(y, pred))}


def _regressor_io(features: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return (
        [TensorSpec(name="input-0", datatype="FP64", shape=[-1, features])],
        [TensorSpec(name="predict", datatype="FP64", shape=[-1])],
    )


def train_linear(seed: int) -> Trained:
    """The seed example: y = 2x + 1 + noise, one feature."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-10, 10, size=(200 * seed, 1))
    y = 2 * x[:, 0] + 1 + rng.normal(0, 1.0, size=len(x))
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed)
    model = LinearRegression().fit(x_train, y_train)
    inputs, outputs = _regressor_io(1)
    return Trained(model, inputs, outputs, _regression_metrics(model, x_test, y_test), [])


def train_multilinear(seed: int) -> Trained:
    """A 4-feature ridge regressor on synthetic data."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500 * seed, 4))
    y = x @ np.array([3.0, -2.0, 0.5, 1.0]) + 4.0 + rng.normal(0, 0.5, size=len(x))
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed)
    model = Ridge(alpha=1.0 / seed).fit(x_train, y_train)
    inputs, outputs = _regressor_io(4)
    return Trained(model, inputs, outputs, _regression_metrics(model, x_test, y_test), [])


def train_iris(seed: int) -> Trained:
    """A 3-class logistic regression on scikit-learn's bundled iris data (no download)."""
    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=seed, stratify=data.target
    )
    model = LogisticRegression(C=float(seed), max_iter=1000).fit(x_train, y_train)
    accuracy = float(accuracy_score(y_test, model.predict(x_test)))
    return Trained(
        model,
        [TensorSpec(name="input-0", datatype="FP64", shape=[-1, 4])],
        [
            TensorSpec(name="predict", datatype="INT64", shape=[-1]),
            TensorSpec(name="predict_proba", datatype="FP64", shape=[-1, 3]),
        ],
        {"accuracy": accuracy},
        [str(name) for name in data.target_names],
    )


EXAMPLES: dict[str, Callable[[int], Trained]] = {
    "linear": train_linear,
    "multilinear": train_multilinear,
    "iris": train_iris,
}


def train_version(store: ModelStore, name: str, version: str | None = None) -> Manifest:
    """Train example `name` and write it as `version` (default: the next free number)."""
    version = version or store.next_version(name)
    seed = int(version) if version.isdigit() else 1
    trained = EXAMPLES[name](seed)
    return store.write(
        name,
        version,
        trained.estimator,
        inputs=trained.inputs,
        outputs=trained.outputs,
        metrics=trained.metrics,
        labels=trained.labels,
    )


def ensure_versions(store: ModelStore, name: str, count: int) -> list[Manifest]:
    """Make sure versions 1..count exist; write only the missing ones."""
    have = set(store.versions(name))
    return [train_version(store, name, str(v)) for v in range(1, count + 1) if str(v) not in have]
