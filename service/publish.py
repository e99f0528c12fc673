"""Publish a user's fitted estimator into the store as a new immutable version.

One call after `fit` in a training script:

    from mlscale.service.publish import publish
    publish(pipeline, "churn", sample=X_train.head(), holdout=(X_test, y_test))

`mlscale publish FILE` does the same from a joblib or pickle file. The manifest is inferred
(see signature.py); holdout data gives the offline metrics the rollout's quality gate
compares. Nothing is written unless every check passed.
"""

import io
import pickle
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FunctionType
from typing import Any

import joblib
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.base import is_classifier
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error, r2_score

from mlscale.service.artifacts import signature
from mlscale.service.artifacts.manifest import ONNX, SKLEARN, Columns, Manifest, check_label
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.compile import (
    Compilation,
    CompileFailed,
    compile_estimator,
    verification_rows,
)
from mlscale.service.errors import InvalidModel
from mlscale.service.runtime.model import formula

RUNTIMES = ("auto", ONNX, SKLEARN)


class _References(pickle.Pickler):
    """Pickles to nowhere, noting the functions and classes of the training script itself
    (`__main__`) that the pickle would name: no server can import them."""

    def __init__(self) -> None:
        super().__init__(_Nowhere(), protocol=pickle.HIGHEST_PROTOCOL)
        self.in_main: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type | FunctionType) and obj.__module__ == "__main__":
            self.in_main.append(obj.__qualname__)
        return NotImplemented  # pickled as usual


class _Nowhere:
    def write(self, data: bytes | pickle.PickleBuffer) -> int:
        return memoryview(data).nbytes  # a large array comes as a PickleBuffer


def check_importable(estimator: Any) -> None:
    """Refuse a model whose pickle would name code no server can import: a function or class
    defined in the script or notebook that trained it, or a lambda. (From a file, the CLI
    unpickled it, so the code it names was importable there.)"""
    references = _References()
    unpicklable = None
    try:
        references.dump(estimator)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        unpicklable = exc
    if references.in_main:
        names = ", ".join(sorted(set(references.in_main)))
        raise InvalidModel(
            f"the model uses {names}, defined in the script or notebook that trained it "
            "(__main__), which no server can import: define it in a package installed in the "
            "server's image, or use scikit-learn's and numpy's own functions"
        )
    if unpicklable is not None:
        raise InvalidModel(f"the model cannot be pickled ({unpicklable}); a lambda cannot be: "
                           "define the function with def, in a module")  # fmt: skip


def load_file(path: Path) -> tuple[Any, bytes]:
    """A fitted estimator from a joblib or pickle file, and the file's bytes: the version
    stores exactly what was published, so the same file published twice has the same sha256.
    Unpickling runs code: only load files you made or trust, as with any pickle."""
    try:
        data = path.read_bytes()
        return joblib.load(io.BytesIO(data)), data
    except (FileNotFoundError, IsADirectoryError):
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


def restore_categories(estimator: Any, sample: pd.DataFrame) -> pd.DataFrame:
    """A CSV sample cannot say a column was `category`: give its string columns the
    categories the fitted pipeline's encoders learnt for them, as a training frame would."""
    learnt = signature.encoder_categories(estimator)
    restored = sample.copy()
    for name in sample.columns:
        if name in learnt and pd.api.types.is_string_dtype(sample[name].dtype):
            restored[name] = sample[name].astype(pd.CategoricalDtype(learnt[name]))
    return restored


def holdout_metrics(estimator: Any, x: Any, y: Any) -> dict[str, float]:
    """Offline metrics on held-out rows: accuracy and macro F1 for a classifier, mse and r2
    otherwise. The quality gate compares them between versions."""
    if not len(x):
        raise InvalidModel("the holdout has no rows; give held-out rows, or publish without")
    missing = pd.isna(pd.DataFrame(np.asarray(y, dtype=object))).any(axis=1).to_numpy()
    if missing.any():
        rows = [int(i) for i in np.flatnonzero(missing)[:5]]
        raise InvalidModel(f"the holdout's target is missing in {int(missing.sum())} row(s) "
                           f"(e.g. {rows}); drop them, there is nothing to compare "
                           "them with")  # fmt: skip
    try:
        predicted = estimator.predict(x)
    except Exception as exc:
        raise InvalidModel(f"the model cannot predict the holdout rows: {exc}") from exc
    try:
        if is_classifier(estimator):
            y = np.asarray(y).astype(np.asarray(predicted).dtype, copy=False)
            return {
                "accuracy": float(accuracy_score(y, predicted)),
                "f1_macro": float(f1_score(y, predicted, average="macro")),
            }
        return {"mse": float(mean_squared_error(y, predicted)), "r2": float(r2_score(y, predicted))}
    except ValueError as exc:  # a multi-output classifier's answers, a target of another kind
        raise InvalidModel(
            f"the holdout's metrics cannot be computed ({exc}); publish without a holdout, and "
            "deploy with --force, as the quality gate has nothing to compare"
        ) from None


def documents_of(x: Any) -> Any:
    """A text model's holdout documents: a CSV's one column besides the target, as the 1-D
    sequence a vectorizer takes (iterating a DataFrame would give its column names)."""
    if not isinstance(x, pd.DataFrame):
        return x
    if len(x.columns) != 1:
        raise InvalidModel(
            "a text model takes one document per row: the holdout needs one column besides "
            f"the target, and it has {list(x.columns)}"
        )
    return x.iloc[:, 0]


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
    artifact: bytes | None = None  # the published file's bytes; None: dump the estimator
    compilation: Compilation | None = None  # the verified graphs: served with onnxruntime
    not_compiled: str = ""  # why not, when compiling was tried and failed

    def table(self) -> Table:
        """What will be written, as `mlscale publish` shows it."""
        sig = self.signature
        title = f"{self.name}/{self.version}: {type(self.estimator).__name__}"
        table = Table("", "", title=title, show_header=False)
        for spec in sig.inputs:
            table.add_row("input", f"{spec.name}  {spec.datatype} {spec.shape}")
        for spec in sig.outputs:
            table.add_row("output", f"{spec.name}  {spec.datatype} {spec.shape}")
        if sig.labels:
            table.add_row("labels", ", ".join(sig.labels))
        metrics = " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        table.add_row("metrics", metrics or "none (no --holdout)")
        if self.compilation is not None:
            c = self.compilation.compiled
            table.add_row("runtime", f"onnx: verified on {c.rows} rows, largest difference "
                          f"{c.max_difference:.2g} (tolerance {c.tolerance:g})")  # fmt: skip
        else:
            table.add_row("runtime", "sklearn" + (f" ({self.not_compiled})"
                                                  if self.not_compiled else ""))  # fmt: skip
        return table

    def write(self, store: ModelStore, console: Console | None = None) -> Manifest:
        """Write the version; refused if its artifact is identical to an existing version's.
        With a console, show the table first and what was written after."""
        if console is not None:
            console.print(self.table())
            if not self.metrics:
                console.print(
                    "[yellow]no holdout:[/] no offline metrics, so the rollout's quality gate "
                    "has nothing to compare (deploying this version will need --force)"
                )
        manifest = self._write(store)
        if console is not None:
            console.print(f"wrote [bold]{store.root}/{manifest.name}/{manifest.version}[/] "
                          f"sha256 {manifest.sha256[:12]}…", soft_wrap=True)  # fmt: skip
        return manifest

    def columns(self) -> Columns | None:
        sig = self.signature
        if not sig.dtypes:
            return None
        return Columns(dtypes=sig.dtypes, categories=sig.categories, example=sig.example,
                       missing=sig.missing)  # fmt: skip

    def draft(self) -> Manifest:
        """The manifest as far as it is known before writing: what compiling needs."""
        sig = self.signature
        return Manifest(name=self.name, version=self.version, sha256="", sklearn_version="",
                        numpy_version="", python_version="",
                        estimator=type(self.estimator).__name__, inputs=sig.inputs,
                        outputs=sig.outputs, metrics=self.metrics, labels=sig.labels,
                        columns=self.columns(), created=datetime.now(UTC))  # fmt: skip

    def _write(self, store: ModelStore) -> Manifest:
        sig = self.signature
        columns = self.columns()
        return store.write(
            self.name,
            self.version,
            self.estimator,
            inputs=sig.inputs,
            outputs=sig.outputs,
            metrics=self.metrics,
            labels=sig.labels,
            columns=columns,
            artifact=self.artifact,
            unique=True,
            compiled=self.compilation.compiled if self.compilation else None,
            compiled_files=self.compilation.files if self.compilation else None,
        )


def plan(
    estimator: Any,
    name: str,
    store: ModelStore,
    *,
    version: str | None = None,
    sample: pd.DataFrame | None = None,
    holdout: tuple[Any, Any] | None = None,
    allow_signature_change: bool = False,
    artifact: bytes | None = None,
    runtime: str = "auto",
) -> Plan:
    """Check everything publishing needs, infer the manifest, and (runtime auto or onnx)
    compile and verify the graphs; writes nothing."""
    if runtime not in RUNTIMES:
        raise InvalidModel(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
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
    if artifact is None:  # a file was unpickled, so its code is importable
        check_importable(estimator)
    latest = _latest_readable(store, name)
    if latest is not None and not allow_signature_change:
        changes = signature_changes(latest, sig)
        if changes:
            raise InvalidModel(
                f"{name}/{version} does not take or answer what {name}/{latest.version} does: "
                f"{'; '.join(changes)}. Clients of {name} would break at the rollout: publish "
                "it under a new name, or pass --allow-signature-change (Python: "
                "allow_signature_change=True) when they are ready for it"
            )
    if sig.text and holdout is not None:
        holdout = (documents_of(holdout[0]), holdout[1])
    metrics = holdout_metrics(estimator, *holdout) if holdout is not None else {}
    checked = Plan(estimator, name, version, sig, metrics, artifact)
    if runtime == SKLEARN:
        return checked
    if sig.text:
        why = "mlscale compiles models that take numbers or columns, not text"
        if runtime == ONNX:
            raise InvalidModel(f"{name}/{version} cannot be served compiled: {why}; publish it "
                               "with --runtime sklearn (or auto)")  # fmt: skip
        return replace(checked, not_compiled=f"not compiled: {why}")
    if runtime == "auto" and not sig.dtypes and formula(estimator) is not None:
        why = f"the server evaluates a {type(estimator).__name__}'s formula, faster than a graph"
        return replace(checked, not_compiled=f"not compiled: {why}")
    try:
        draft = checked.draft()
        rows = verification_rows(draft, sample, holdout[0] if holdout is not None else None)
        compilation = compile_estimator(estimator, draft, rows)
    except CompileFailed as exc:
        if runtime == ONNX:
            raise InvalidModel(f"{name}/{version} cannot be served compiled: {exc.step} "
                               f"failed: {exc.reason}; publish it with --runtime sklearn "
                               "(or auto)") from None  # fmt: skip
        return replace(checked, not_compiled=f"not compiled: {exc.step} failed: {exc.reason}")
    return replace(checked, compilation=compilation)


def signature_changes(before: Manifest, after: signature.Signature) -> list[str]:
    """What a client of `before` would notice: inputs, outputs, labels, classifier or not."""
    changes = []
    for what, old, new in (("inputs", before.inputs, after.inputs),
                           ("outputs", before.outputs, after.outputs)):  # fmt: skip
        was = {s.name: f"{s.datatype} {s.shape}" for s in old}
        now = {s.name: f"{s.datatype} {s.shape}" for s in new}
        parts = []
        if removed := [n for n in was if n not in now]:
            parts.append(f"removed {removed}")
        if added := [n for n in now if n not in was]:
            parts.append(f"added {added}")
        parts += [f"{n!r} {was[n]} → {now[n]}" for n in was if n in now and was[n] != now[n]]
        if parts:
            changes.append(f"{what}: {', '.join(parts)}")
    if bool(before.labels) != bool(after.labels):
        changes.append(f"task: {_task(before.labels)} → {_task(after.labels)}")
    elif before.labels != after.labels:
        changes.append(f"labels: {before.labels} → {after.labels}")
    return changes


def _task(labels: list[str]) -> str:
    return f"classifier (labels {', '.join(labels)})" if labels else "regressor"


def _latest_readable(store: ModelStore, name: str) -> Manifest | None:
    """The newest version whose manifest reads (a damaged one is skipped, not compared)."""
    readable = [m for _, m in store.catalogue(name) if isinstance(m, Manifest)]
    return readable[-1] if readable else None


def publish(
    estimator: Any,
    name: str,
    *,
    model_dir: Path | str = "models",
    version: str | None = None,
    sample: pd.DataFrame | None = None,
    holdout: tuple[Any, Any] | None = None,
    allow_signature_change: bool = False,
    runtime: str = "auto",
    show: bool = False,
) -> Manifest:
    """Write a fitted estimator as version `version` (default: the next number) of `name`,
    and return its manifest.

    `sample`: a few rows of the training DataFrame, for the column dtypes (a model fitted on a
    DataFrame without it is assumed to take numbers). `holdout`: (X, y) for offline metrics.
    `allow_signature_change`: accept inputs, outputs, labels or task that differ from the
    latest version's. `runtime`: auto (compile to ONNX and serve it with onnxruntime when the
    graphs convert and verify, else scikit-learn), onnx (refuse otherwise) or sklearn. `show`:
    print what was inferred, as `mlscale publish` does.
    """
    store = ModelStore(Path(model_dir))
    checked = plan(estimator, name, store, version=version, sample=sample, holdout=holdout,
                   allow_signature_change=allow_signature_change,
                   runtime=runtime)  # fmt: skip
    return checked.write(store, Console() if show else None)
