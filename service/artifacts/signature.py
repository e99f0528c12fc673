"""What a fitted estimator takes and gives, inferred from the estimator itself.

Inputs come from `n_features_in_` and `feature_names_in_`: a model fitted on a pandas
DataFrame takes named columns, one V2 input per column, with the dtypes of a few sample rows
of its training data; a pipeline that starts with one of scikit-learn's text vectorizers takes
documents, one string per row (a BYTES tensor of shape [N]); any other takes one
rows-by-features tensor. Outputs are whatever of `predict`, `predict_proba` and
`decision_function` the estimator offers, probed on one row so their datatypes and shapes are
the real ones. Class labels come from `classes_`.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from mlscale.service.artifacts.manifest import TensorSpec, nullable
from mlscale.service.errors import InvalidModel

OUTPUT_METHODS = ("predict", "predict_proba", "decision_function")
# numpy kind -> V2 datatype; strings and objects travel as BYTES.
_KIND_TO_DATATYPE = {"b": "BOOL", "O": "BYTES", "U": "BYTES", "S": "BYTES"}


@dataclass(frozen=True)
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str]
    dtypes: dict[str, str]  # pandas dtype per column; empty for tensor models
    categories: dict[str, list[Any]]  # the categories of `category` columns
    example: dict[str, Any] | None  # one sample row, for the warm-up and the docs
    missing: bool = True  # a missing number (NaN) in a float column is answered, not refused
    text: bool = False  # takes documents: one string per row


def datatype_of(dtype: np.dtype[Any] | pd.api.extensions.ExtensionDtype) -> str:
    """The V2 datatype that carries values of a numpy or pandas dtype."""
    if isinstance(dtype, pd.CategoricalDtype):
        return datatype_of(dtype.categories.dtype)
    if isinstance(dtype, pd.StringDtype):
        return "BYTES"
    if nullable(dtype):  # Int64, Float64, boolean
        return datatype_of(dtype.numpy_dtype)  # type: ignore[union-attr]
    dtype = np.dtype(dtype)
    if dtype.kind in _KIND_TO_DATATYPE:
        return _KIND_TO_DATATYPE[dtype.kind]
    if dtype.kind in "iu":
        return f"{'INT' if dtype.kind == 'i' else 'UINT'}{dtype.itemsize * 8}"
    if dtype.kind == "f":
        return f"FP{dtype.itemsize * 8}"
    raise InvalidModel(
        f"values of dtype {dtype} cannot travel over the inference protocol; fit the model on "
        "columns of numbers, booleans or strings (a date as a number or an ISO string, say)"
    )


def check_fitted(estimator: Any) -> None:
    if (
        hasattr(estimator, "fit")
        and hasattr(estimator, "transform")
        and not hasattr(estimator, "predict")
    ):
        raise InvalidModel(
            f"a {type(estimator).__name__} transforms rows but does not predict; publish a "
            "model, or a pipeline that ends in one"
        )
    if not hasattr(estimator, "predict") or not hasattr(estimator, "fit"):
        raise InvalidModel(
            f"a {type(estimator).__name__} is not a scikit-learn estimator (it has no "
            "fit/predict); publish the fitted model or pipeline itself"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise InvalidModel(
            f"this {type(estimator).__name__} is not fitted; call fit() before publishing"
        ) from None


def takes_text(estimator: Any) -> bool:
    """Whether the model takes documents: a pipeline whose first step is CountVectorizer,
    TfidfVectorizer or HashingVectorizer, reading the text it is given. One set to read files
    (`input="filename"` or `"file"`) would open any path a request named: refused."""
    first = estimator
    while isinstance(first, Pipeline):
        first = first.steps[0][1]
    if not isinstance(first, CountVectorizer | HashingVectorizer):
        return False
    if first.input != "content":
        raise InvalidModel(
            f"its {type(first).__name__} reads documents from files (input={first.input!r}), "
            "so a request could name any file on the server: fit it with input='content' "
            "(the default), which takes the text itself"
        )
    return True


def infer(estimator: Any, sample: pd.DataFrame | None = None) -> Signature:
    """The signature of a fitted estimator; `sample` (training rows) gives column dtypes."""
    check_fitted(estimator)
    names = getattr(estimator, "feature_names_in_", None)
    text = names is None and takes_text(estimator)
    features = int(getattr(estimator, "n_features_in_", None) or 0)
    if not text and not features:
        names, features = _from_sample(estimator, sample)
    if text:
        inputs, dtypes, categories, probe, example = _text_input()
    elif names is None:
        inputs, dtypes, categories, probe, example = _tensor_inputs(features)
    else:
        inputs, dtypes, categories, probe, example = _column_inputs([str(n) for n in names], sample)
    classes = getattr(estimator, "classes_", None)
    # One output's classes; a multi-output classifier's is a list of arrays, one per output.
    labels = (
        [str(c) for c in classes] if isinstance(classes, np.ndarray) and classes.ndim == 1 else []
    )
    outputs = _outputs(estimator, probe)
    missing = names is None or _answers_missing(estimator, probe)
    return Signature(inputs, outputs, labels, dtypes, categories, example, missing, text)


def _answers_missing(estimator: Any, probe: pd.DataFrame) -> bool:
    """Whether the estimator answers a row whose float and nullable columns are missing (NaN,
    pd.NA): imputers and HistGradientBoosting do; most others raise, which the server turns
    into a 400."""
    holes = [n for n in probe.columns if probe[n].dtype.kind == "f" or nullable(probe[n].dtype)]
    if not holes:
        return True
    missing = {n: pd.Series([None] * len(probe), dtype=probe[n].dtype) for n in holes}
    try:
        estimator.predict(probe.assign(**missing))
    except (ValueError, TypeError):  # TypeError: an encoder comparing pd.NA
        return False
    return True


def _from_sample(estimator: Any, sample: Any) -> tuple[list[str] | None, int]:
    """The columns, or the number of features, of a model that does not say what it takes: a
    pipeline whose first step is a transformer of one's own, which need not set
    `n_features_in_`. The training rows say it: a frame's columns, or an array's width. A
    frame of numbers (what a CSV sample reads as) whose model takes only arrays is taken as
    an array's width; the outputs' probe then checks the model takes what was chosen."""
    if sample is None or not hasattr(sample, "shape") or len(sample.shape) != 2:
        raise InvalidModel(
            f"{type(estimator).__name__} does not say what it takes (no n_features_in_: a "
            "transformer of your own, first in the pipeline, need not set it); give a few "
            "training rows as the sample (--sample FILE.csv; Python: sample=) and the inputs "
            "are taken from them"
        )
    if not isinstance(sample, pd.DataFrame):
        return None, int(sample.shape[1])
    columns = [str(n) for n in sample.columns]
    try:
        estimator.predict(sample.head(1))
    except Exception as exc:
        numbers = sample.select_dtypes("number").shape[1] == sample.shape[1]
        if not numbers or not _takes_array(estimator, sample):
            raise InvalidModel(f"predict failed on the sample's first row, as columns "
                               f"{columns} ({exc})") from None  # fmt: skip
        return None, sample.shape[1]
    return columns, sample.shape[1]


def _takes_array(estimator: Any, sample: pd.DataFrame) -> bool:
    try:
        estimator.predict(sample.head(1).to_numpy(dtype=np.float64))
    except Exception:
        return False
    return True


def _tensor_inputs(
    features: int,
) -> tuple[list[TensorSpec], dict[str, str], dict[str, list[Any]], Any, None]:
    spec = TensorSpec(name="input-0", datatype="FP64", shape=[-1, features])
    return [spec], {}, {}, np.zeros((1, features)), None


def _text_input() -> tuple[list[TensorSpec], dict[str, str], dict[str, list[Any]], Any, None]:
    spec = TensorSpec(name="input-0", datatype="BYTES", shape=[-1])
    return [spec], {}, {}, np.array([""], dtype=object), None  # a document every vectorizer takes


def _column_inputs(
    names: list[str], sample: pd.DataFrame | None
) -> tuple[list[TensorSpec], dict[str, str], dict[str, list[Any]], Any, dict[str, Any] | None]:
    if sample is None:  # without training rows, the columns can only be assumed numeric
        frame = pd.DataFrame({n: [0.0] for n in names})
        example = None
    else:
        missing = [n for n in names if n not in sample.columns]
        if missing:
            raise InvalidModel(f"the sample lacks the model's column(s) {missing}")
        if sample.empty:
            raise InvalidModel("the sample has no rows; give a few rows of the training data")
        # The first complete row where there is one: the warm-up and `mlscale check` send
        # it, and a model without an imputer refuses a missing value.
        rows = sample[names]
        complete = rows.dropna()
        frame = (complete if len(complete) else rows).head(1).reset_index(drop=True)
        example = {n: _plain(frame[n].iloc[0]) for n in names}
    inputs = [TensorSpec(name=n, datatype=datatype_of(frame[n].dtype), shape=[-1]) for n in names]
    dtypes = {n: str(frame[n].dtype) for n in names}
    categories = {
        n: [_plain(c) for c in frame[n].cat.categories]
        for n in names
        if isinstance(frame[n].dtype, pd.CategoricalDtype)
    }
    return inputs, dtypes, categories, frame, example


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can carry; pandas' missing value as null."""
    if value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def _outputs(estimator: Any, probe: Any) -> list[TensorSpec]:
    outputs = []
    for method in OUTPUT_METHODS:
        if not hasattr(estimator, method):  # pipelines hide what their last step lacks
            continue
        try:
            value = np.asarray(getattr(estimator, method)(probe))
        except Exception as exc:
            if method == "predict":
                raise InvalidModel(
                    f"predict failed on a sample row ({exc}); pass --sample with a few rows "
                    "of the training data so the columns get their real types"
                ) from exc
            continue  # e.g. predict_proba of an SVC fitted without probability=True
        shape = [-1, *value.shape[1:]]
        outputs.append(TensorSpec(name=method, datatype=datatype_of(value.dtype), shape=shape))
    return outputs


def encoder_categories(estimator: Any) -> dict[str, list[Any]]:
    """The categories fitted encoders (OneHotEncoder, OrdinalEncoder, and the one inside
    HistGradientBoosting) learnt, by the name of the input column they read."""
    found: dict[str, list[Any]] = {}
    seen: set[int] = set()

    def visit(part: Any) -> None:
        if id(part) in seen:
            return
        seen.add(id(part))
        if isinstance(part, list | tuple):
            for item in part:
                visit(item)
            return
        if not isinstance(part, BaseEstimator):
            return
        names, categories = (
            getattr(part, "feature_names_in_", None),
            getattr(part, "categories_", None),
        )
        if names is not None and isinstance(categories, list) and len(categories) == len(names):
            for name, values in zip(names, categories, strict=True):
                known = [_plain(v) for v in values if not pd.isna(v)]
                found.setdefault(str(name), known)
        for value in vars(part).values():  # fitted steps, transformers_, a model's own encoder
            visit(value)

    visit(estimator)
    return found
