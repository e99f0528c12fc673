"""Publish a user's fitted estimator into the store as a new immutable version.

One call after `fit` in a training script:

    from mlscale.service.publish import publish
    publish(pipeline, "churn", sample=X_train.head(), holdout=(X_test, y_test))

`mlscale publish FILE` does the same from a joblib or pickle file. The manifest is inferred
(see signature.py); holdout data gives the offline metrics the rollout's quality gate
compares. Nothing is written unless every check passed.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import is_classifier
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, r2_score

from mlscale.service import signature
from mlscale.service.errors import InvalidModel
from mlscale.service.store import Columns, Manifest, ModelStore, check_label


def load_file(path: Path) -> Any:
    """A fitted estimator from a joblib or pickle file. Unpickling runs code: only load
    files you made or trust, as with any pickle."""
    try:
        return joblib.load(path)
    except FileNotFoundError:
        raise InvalidModel(f"{path}: no such file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise InvalidModel(
            f"{path} is not a joblib or pickle file of a model ({type(exc).__name__}: {exc})"
        ) from None
    except (ModuleNotFoundError, AttributeError) as exc:
        raise InvalidModel(
            f"{path} needs code this environment lacks ({exc}); install the package that "
            "defines the model's classes"
        ) from None


def read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InvalidModel(f"cannot read the {what} {path}: {exc}") from None


def holdout_metrics(estimator: Any, x: Any, y: Any) -> dict[str, float]:
    """Offline metrics on held-out rows: accuracy and macro F1 for a classifier, mse and r2
    otherwise. The quality gate compares them between versions."""
    try:
        predicted = estimator.predict(x)
    except Exception as exc:
        raise InvalidModel(f"the model cannot predict the holdout rows: {exc}") from exc
    if is_classifier(estimator):
        y = np.asarray(y).astype(np.asarray(predicted).dtype, copy=False)
        return {
            "accuracy": float(accuracy_score(y, predicted)),
            "f1_macro": float(f1_score(y, predicted, average="macro")),
        }
    return {"mse": float(mean_squared_error(y, predicted)), "r2": float(r2_score(y, predicted))}


def split_target(frame: pd.DataFrame, target: str) -> tuple[pd.DataFrame, pd.Series]:
    if target not in frame.columns:
        raise InvalidModel(f"the holdout has no column {target!r}; it has {list(frame.columns)}")
    return frame.drop(columns=[target]), frame[target]


@dataclass(frozen=True)
class Plan:
    """What publishing would write: checked, not yet written (the CLI shows it first)."""

    estimator: Any
    name: str
    version: str
    signature: signature.Signature
    metrics: dict[str, float]

    def write(self, store: ModelStore) -> Manifest:
        sig = self.signature
        columns = (
            Columns(dtypes=sig.dtypes, categories=sig.categories, example=sig.example)
            if sig.dtypes
            else None
        )
        return store.write(
            self.name,
            self.version,
            self.estimator,
            inputs=sig.inputs,
            outputs=sig.outputs,
            metrics=self.metrics,
            labels=sig.labels,
            columns=columns,
        )


def plan(
    estimator: Any,
    name: str,
    store: ModelStore,
    *,
    version: str | None = None,
    sample: pd.DataFrame | None = None,
    holdout: tuple[Any, Any] | None = None,
) -> Plan:
    """Check everything publishing needs and infer the manifest; writes nothing."""
    check_label("name", name)
    if version is not None:
        check_label("version", version)
    version = version or store.next_version(name)
    if version in store.versions(name):
        raise InvalidModel(
            f"{name}/{version} already exists in {store.root}; versions are immutable, "
            "publish under a new version"
        )
    sig = signature.infer(estimator, sample)
    metrics = holdout_metrics(estimator, *holdout) if holdout is not None else {}
    return Plan(estimator, name, version, sig, metrics)


def publish(
    estimator: Any,
    name: str,
    *,
    model_dir: Path | str = "models",
    version: str | None = None,
    sample: pd.DataFrame | None = None,
    holdout: tuple[Any, Any] | None = None,
) -> Manifest:
    """Write a fitted estimator as version `version` (default: the next number) of `name`.

    `sample`: a few rows of the training DataFrame, for the column dtypes (a model fitted on a
    DataFrame without it is assumed to take numbers). `holdout`: (X, y) for offline metrics.
    """
    store = ModelStore(Path(model_dir))
    return plan(estimator, name, store, version=version, sample=sample, holdout=holdout).write(
        store
    )
