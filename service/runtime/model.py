"""A loaded model version: verified estimator plus the fastest exact way to predict with it.

scikit-learn's `predict` spends ~100+ µs per call on input validation and config lookups,
which dwarfs the arithmetic for a few rows. The server validates input itself (against the
manifest), so for linear families we evaluate the model's own formula directly.

The fast paths reduce each row on its own (multiply, then sum along the row) instead of one
BLAS matrix product: BLAS picks kernels by shape, so `predict` gives a row different last bits
depending on the batch it arrived in. Row-wise sums make an answer independent of what it was
batched with, bit for bit; they agree with `predict` to 1e-12 relative and on every label
(tests check both).

Small requests skip numpy altogether: creating arrays costs more than the arithmetic of a
few rows. `predict_rows` evaluates the same formula on Python floats in numpy's own
summation order (`pairwise_sum`), so an answer is the same bits on either path; where an
output has no exact Python twin (`predict_proba`'s `exp`), the request goes through numpy.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from mlscale.service.artifacts.manifest import Manifest

Outputs = dict[str, np.ndarray]
Rows = list[list[float]]  # a small request, validated, rows by features
RowOutputs = dict[str, list[Any]]  # one value per row for each output


@dataclass(frozen=True)
class Formula:
    """A model family's exact formula: on numpy batches, and on small requests in Python."""

    predict: Callable[[np.ndarray], Outputs]  # every output, for a batch
    predict_rows: Callable[[Rows], RowOutputs]  # `row_outputs` only, bit-identical to predict
    row_outputs: frozenset[str]


def pairwise_sum(values: list[float]) -> float:
    """Sum in the order numpy's `add.reduce` uses along a contiguous row (pairwise, 8-way
    unrolled blocks of up to 128), so a Python sum has the same bits as a numpy one."""
    n = len(values)
    if n < 8:
        total = -0.0
        for v in values:
            total += v
        return total
    if n <= 128:
        r = values[:8]
        whole = n - n % 8
        for i in range(8, whole, 8):
            r = [a + b for a, b in zip(r, values[i : i + 8], strict=True)]
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for v in values[whole:]:
            total += v
        return total
    half = n // 2
    half -= half % 8
    return pairwise_sum(values[:half]) + pairwise_sum(values[half:])


def row_dot(coef: list[float]) -> Callable[[list[float]], float]:
    """`row · coef` with the bits of numpy's `(x * coef).sum(axis=1)` for that row."""
    if len(coef) >= 8:
        return lambda row: pairwise_sum([v * c for v, c in zip(row, coef, strict=True)])

    def dot(row: list[float]) -> float:  # under 8 terms, pairwise is left to right
        total = -0.0
        for v, c in zip(row, coef, strict=True):
            total += v * c
        return total

    return dot


def _argmax(values: list[float]) -> int:
    """numpy's argmax: the first maximum, or the first NaN."""
    best, top = 0, values[0]
    if top != top:
        return 0
    for i in range(1, len(values)):
        v = values[i]
        if v != v:
            return i
        if v > top:
            best, top = i, v
    return best


def _linear_regression(model: Any) -> Formula | None:
    coef, intercept = model.coef_, model.intercept_
    if coef.ndim != 1:  # multi-target: leave it to predict
        return None
    dot, intercept_float = row_dot(coef.tolist()), float(intercept)

    def predict(x: np.ndarray) -> Outputs:
        return {"predict": (x * coef).sum(axis=1) + intercept}

    def predict_rows(rows: Rows) -> RowOutputs:
        return {"predict": [dot(row) + intercept_float for row in rows]}

    return Formula(predict, predict_rows, frozenset({"predict"}))


def _logistic_regression(model: Any) -> Formula | None:
    # Multinomial (the default for >2 classes) only; one-vs-rest normalises differently.
    if len(model.classes_) < 3 or getattr(model, "multi_class", "auto") == "ovr":
        return None
    coef_t, intercept, classes = model.coef_.T, model.intercept_, model.classes_
    by_class, biases, labels_of = model.coef_.tolist(), intercept.tolist(), classes.tolist()

    from sklearn.utils.extmath import softmax

    def predict(x: np.ndarray) -> Outputs:
        # numpy sums over the middle axis feature by feature, in order.
        scores = (x[:, :, None] * coef_t).sum(axis=1) + intercept
        return {
            "predict": classes[scores.argmax(axis=1)],
            "predict_proba": softmax(scores, copy=False),
        }

    def score(row: list[float], coef: list[float], bias: float) -> float:
        total = row[0] * coef[0]
        for i in range(1, len(row)):
            total += row[i] * coef[i]
        return total + bias

    def predict_rows(rows: Rows) -> RowOutputs:
        labels = []
        for row in rows:
            scores = [score(row, c, b) for c, b in zip(by_class, biases, strict=True)]
            labels.append(labels_of[_argmax(scores)])
        return {"predict": labels}

    return Formula(predict, predict_rows, frozenset({"predict"}))


@cache
def fast_paths() -> dict[type, Callable[[Any], Formula | None]]:
    """The estimator types with an exact formula (scikit-learn imported only where a version
    runs on it: the slim image has none)."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    return {
        LinearRegression: _linear_regression,
        Ridge: _linear_regression,
        LogisticRegression: _logistic_regression,
    }


def formula(estimator: Any) -> Formula | None:
    """The exact formula of a model fitted on an array, where its family has one (a binary or
    one-vs-rest logistic regression and a multi-target linear one have none). Exact type
    match: a subclass may override predict."""
    builder = fast_paths().get(type(estimator))
    return builder(estimator) if builder else None


@dataclass
class LoadedModel:
    manifest: Manifest
    estimator: Any
    fast_path: bool = True
    load_seconds: float = 0.0
    native_bytes: int = 0  # memory held outside Python's allocator (onnxruntime's sessions)
    # (model, version): who answered, for response headers and metric labels.
    identity: tuple[str, str] = field(init=False)
    _fast: Formula | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.identity = (self.manifest.name, self.manifest.version)
        tensor = self.manifest.columns is None  # the formulas take float rows, not frames
        self._fast = formula(self.estimator) if self.fast_path and tensor else None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def classifier(self) -> bool:
        """Answers labels (counted per label) rather than values (a histogram)."""
        return bool(self.manifest.labels)

    @property
    def platform(self) -> str:
        """What runs it, as the V2 metadata's `platform` says."""
        return f"sklearn_{self.manifest.sklearn_version}"

    @property
    def has_fast_path(self) -> bool:
        return self._fast is not None

    def predict(self, x: Any, names: list[str] | None = None) -> Outputs:
        """Outputs `names` (default: all the manifest declares) for a validated batch: float64
        rows, or a typed table for a model fitted on a DataFrame. The formulas give every output
        (they cost next to nothing); scikit-learn computes only those asked for."""
        if self._fast is not None:
            return self._fast.predict(x)
        return self.predict_slow(x, names)

    def predict_rows(self, rows: Rows, outputs: list[str]) -> RowOutputs | None:
        """`outputs` for a small request, without numpy; None where that cannot be exact."""
        fast = self._fast
        if fast is None or not fast.row_outputs.issuperset(outputs):
            return None
        return fast.predict_rows(rows)

    def predict_slow(self, x: Any, names: list[str] | None = None) -> Outputs:
        """Through scikit-learn's public API, for any estimator: each output is the method of
        that name (`predict`, `predict_proba`, `decision_function`)."""
        estimator = self.estimator
        names = names or [spec.name for spec in self.manifest.outputs]
        if self.manifest.columns is not None:
            x = x.frame()  # a frames.Table: one DataFrame per batch, of the training dtypes
        return {name: np.asarray(getattr(estimator, name)(x)) for name in names}

    def warm_up(self) -> None:
        """One prediction on `probe_row`; readiness waits for it."""
        self.predict(probe_row(self.manifest))


def probe_row(manifest: Manifest) -> Any:
    """The row publishing probed, validated as a request would be: zeros, an empty document
    for a text model, or the training row recorded for a model that takes a DataFrame."""
    columns = manifest.columns
    if manifest.takes_text:
        return np.array([""], dtype=object)
    if columns is None:
        return np.zeros((1, *manifest.inputs[0].shape[1:]), dtype=np.float64)
    from mlscale.service.runtime.frames import frame  # pandas, only for DataFrame models

    row = columns.example or dict.fromkeys(columns.dtypes, 0.0)
    return frame({name: [value] for name, value in row.items()}, columns)
