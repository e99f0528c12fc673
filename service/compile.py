"""Compile a fitted estimator to ONNX at publish, and verify the graphs before they are kept.

skl2onnx converts the estimator (or pipeline) with one graph input per training column, or one
float64 tensor; onnxruntime then runs the graphs on the sample and the holdout rows, and their
answers are compared with the estimator's: the labels must be equal, and every number within
TOLERANCE (relative above 1, absolute below). A model that fails any step is published with the
scikit-learn runtime; `CompileFailed` says which step, and why, in a sentence.
"""

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlscale.service import converters
from mlscale.service.artifacts.manifest import (
    COMPILED,
    SCORES,
    Columns,
    Compiled,
    Manifest,
    nullable,
)
from mlscale.service.runtime.compiled import CompiledModel, input_kind, runtime_version
from mlscale.service.runtime.frames import dtype_of, frame
from mlscale.service.runtime.model import LoadedModel, probe_row

# Tree ensembles run in float32 in onnxruntime: a row within float32 rounding of a split goes
# the other way in that one tree, which moves a gradient-boosted score by about 1e-3.
TOLERANCE = 1e-3


class CompileFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


@dataclass(frozen=True)
class Compilation:
    files: dict[str, bytes]  # file name -> the serialized graph
    compiled: Compiled


def compile_estimator(estimator: Any, manifest: Manifest, rows: Any) -> Compilation:
    """The verified graphs of `estimator`, whose manifest (not yet written) says what it takes
    and answers; `rows` (a typed table, or float rows) are what the graphs are checked on."""
    try:
        import skl2onnx
        from skl2onnx import to_onnx
    except ImportError:
        raise CompileFailed("convert", "skl2onnx is not installed (pip install "
                            "'mlscale[compile]')") from None  # fmt: skip
    converters.install()
    if _reads_text(estimator):
        raise CompileFailed("convert", "a step reads text, which graphs tokenize and lowercase "
                            "otherwise than scikit-learn on text no verification row "
                            "holds")  # fmt: skip

    def graphs(stacked: bool) -> tuple[dict[str, bytes], float]:
        files = _graphs(to_onnx, estimator, manifest, stacked)
        draft = manifest.model_copy(update={"compiled": _placeholder(files, stacked)})
        return files, _verify(estimator, draft, files, rows)

    stacked = False
    try:
        files, difference = graphs(stacked)
    except CompileFailed:
        # An estimator fitted on a frame of numbers, not a pipeline of column transformers,
        # takes the columns as one tensor (and some transformers convert, but then index
        # their features wrongly, with one input per column): the graph does too.
        if not _all_numbers(manifest):
            raise
        stacked = True
        files, difference = graphs(stacked)
    return Compilation(
        files,
        Compiled(
            files={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            tolerance=TOLERANCE,
            max_difference=difference,
            rows=len(rows),
            stacked=stacked,
            skl2onnx_version=skl2onnx.__version__,
            onnxruntime_version=runtime_version(),
        ),
    )


def _reads_text(estimator: Any) -> bool:
    """Whether any step, however nested (a ColumnTransformer's column), is a text vectorizer."""
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

    try:
        nested = list(estimator.get_params(deep=True).values())
    except Exception:  # a model of one's own need not have scikit-learn's get_params
        nested = []
    return any(
        isinstance(step, CountVectorizer | HashingVectorizer) for step in [estimator, *nested]
    )


def _graphs(to_onnx: Any, estimator: Any, manifest: Manifest, stacked: bool) -> dict[str, bytes]:
    """The model's graph, and a second one answering raw scores for `decision_function`."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    outputs = {spec.name for spec in manifest.outputs}
    raw = "predict_proba" not in outputs
    classifier = _classifier_options(final, raw) if manifest.labels else {}
    files = {COMPILED: _convert(to_onnx, estimator, manifest, {id(final): classifier}, stacked)}
    if "decision_function" in outputs:
        scores = {id(final): {**classifier, "raw_scores": True}}
        files[SCORES] = _convert(to_onnx, estimator, manifest, scores, stacked)
    return files


def _classifier_options(final: Any, raw: bool) -> dict[str, bool]:
    """skl2onnx's options for a classifier's graph, those its converter has (it refuses others):
    probabilities as one tensor, not ONNX's list of maps; and raw scores where those are the
    only scores (skl2onnx converts `LinearSVC` and `RidgeClassifier` to float64 no other way)."""
    from skl2onnx import get_model_alias
    from skl2onnx.common._registration import get_converter

    try:
        allowed = get_converter(get_model_alias(type(final))).get_allowed_options() or {}
    except (KeyError, ValueError):  # no converter: converting says so, in its own words
        return {}
    wanted = {"zipmap": False, "raw_scores": True} if raw else {"zipmap": False}
    return {name: value for name, value in wanted.items() if name in allowed}


def _convert(
    to_onnx: Any, estimator: Any, manifest: Manifest, options: dict, stacked: bool
) -> bytes:
    types = _input_types(manifest, stacked)
    try:
        graph = to_onnx(_cast_features(estimator), initial_types=types, options=options)
        return bytes(graph.SerializeToString())
    except Exception as exc:  # skl2onnx raises many kinds: each is "cannot convert"
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = why.split(" You may raise an issue")[0].rstrip(".")
        raise CompileFailed("convert", f"skl2onnx cannot convert it ({why})") from None


def _cast_features(estimator: Any) -> Any:
    """What to convert: the estimator, with the features cast just before its final model.
    - To float32 before a tree model, or boosting or bagging of trees: onnxruntime's tree
      ensembles take and answer float32 only, and skl2onnx, given float64 features, declares
      float64 answers for all but some classifiers: the graph is then refused. The trees
      compare in float32 either way.
    - To float64 after other transformers: skl2onnx types a ColumnTransformer's output by its
      first part (a one-hot encoding's is float32) though it computes float64, and a model
      after it (logistic regression, neighbours, naive Bayes, a network) declares float32
      answers that onnxruntime refuses to load.
    Verification checks the answers. The steps are the estimator's own objects, so options
    keyed by their ids still apply."""
    from skl2onnx.sklapi import CastTransformer
    from sklearn.pipeline import Pipeline

    steps = estimator.steps if isinstance(estimator, Pipeline) else [("model", estimator)]
    if _of_trees(steps[-1][1]):
        dtype: type = np.float32
    elif len(steps) > 1:
        dtype = np.float64
    else:
        return estimator
    cast = ("mlscale_cast", CastTransformer(dtype=dtype))
    return Pipeline([*steps[:-1], cast, steps[-1]])


def _tree_models() -> tuple[type, ...]:
    from sklearn import ensemble, tree

    return (tree.BaseDecisionTree, ensemble.RandomForestClassifier,
            ensemble.RandomForestRegressor, ensemble.ExtraTreesClassifier,
            ensemble.ExtraTreesRegressor, ensemble.GradientBoostingClassifier,
            ensemble.GradientBoostingRegressor, ensemble.HistGradientBoostingClassifier,
            ensemble.HistGradientBoostingRegressor)  # fmt: skip


def _of_trees(model: Any) -> bool:
    """A tree model, or boosting or bagging of trees (their default)."""
    from sklearn import ensemble

    if isinstance(model, ensemble.AdaBoostClassifier | ensemble.AdaBoostRegressor
                  | ensemble.BaggingClassifier | ensemble.BaggingRegressor):  # fmt: skip
        return isinstance(model.estimator_, _tree_models())
    return isinstance(model, _tree_models())


def _kinds(columns: Columns) -> dict[str, str]:
    """How each training column travels into the graph (runtime/compiled.input_kind)."""
    kinds = {}
    for name in columns.dtypes:
        dtype = dtype_of(columns, name)
        if nullable(dtype):
            why = f"column {name!r} is pandas' nullable {dtype}, whose NA no graph input holds"
            raise CompileFailed("convert", why)
        kinds[name] = input_kind(dtype)
    return kinds


def _all_numbers(manifest: Manifest) -> bool:
    columns = manifest.columns
    return columns is not None and "s" not in _kinds(columns).values()


def _placeholder(files: dict[str, bytes], stacked: bool) -> Compiled:
    """What running the graphs needs to know of them, before they are verified."""
    return Compiled(files=dict.fromkeys(files, ""), tolerance=TOLERANCE, max_difference=0,
                    rows=0, stacked=stacked, skl2onnx_version="",
                    onnxruntime_version="")  # fmt: skip


def _input_types(manifest: Manifest, stacked: bool) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType, StringTensorType

    columns = manifest.columns
    if columns is None:
        return [("input", DoubleTensorType([None, manifest.inputs[0].shape[1]]))]
    if stacked:
        return [("input", DoubleTensorType([None, len(columns.dtypes)]))]
    types = {"f": DoubleTensorType, "i": Int64TensorType, "s": StringTensorType}
    return [(name, types[kind]([None, 1])) for name, kind in _kinds(columns).items()]


def _verify(estimator: Any, manifest: Manifest, files: dict[str, bytes], rows: Any) -> float:
    """The largest difference between the graphs' answers and the estimator's on `rows`."""
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        try:
            graphs = CompiledModel.open(manifest, Path(folder))
            names = [spec.name for spec in manifest.outputs]
            got = graphs.predict_slow(rows, names)
        except Exception as exc:
            raise CompileFailed("verify", f"onnxruntime cannot run the graph ({exc})") from None
    want = LoadedModel(manifest, estimator, fast_path=False).predict_slow(rows, names)
    worst = 0.0
    for name in names:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        if a.shape != b.shape:
            raise CompileFailed("verify", f"{name} has shape {list(a.shape)} compiled, "
                                f"{list(b.shape)} from the estimator")  # fmt: skip
        if b.dtype.kind not in "fc":
            differ = int((a.astype(str) != b.astype(str)).sum())
            if differ:
                raise CompileFailed("verify", f"{name} differs on {differ} of {len(b)} rows "
                                    f"(e.g. {_first_difference(a, b)})")  # fmt: skip
            continue
        scaled = np.abs(a - b) / np.maximum(1.0, np.abs(b))
        worst = max(worst, float(np.nanmax(scaled, initial=0.0)))
        if not np.array_equal(np.isnan(a), np.isnan(b)) or worst > TOLERANCE:
            raise CompileFailed("verify", f"{name} differs from the estimator's by up to "
                                f"{worst:.2g}, more than the tolerance {TOLERANCE:g}")  # fmt: skip
    return worst


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    i = int(np.flatnonzero(a.astype(str) != b.astype(str))[0])
    return f"row {i}: {a[i]!r} compiled, {b[i]!r} from the estimator"


def verification_rows(manifest: Manifest, sample: Any, holdout: Any) -> Any:
    """The rows the graphs are checked on: the sample and the holdout's features (those with
    a missing value only where the model answers them); without any, the warm-up row."""
    parts = [p for p in (sample, holdout) if p is not None and len(p)]
    if not parts:
        return probe_row(manifest)
    if manifest.columns is not None:
        names = list(manifest.columns.dtypes)
        joined = pd.concat([pd.DataFrame(p)[names] for p in parts], ignore_index=True)
        if not manifest.columns.missing:  # rows both runtimes refuse with the same 400
            joined = joined.dropna()
        if joined.empty:
            return probe_row(manifest)
        return frame({n: [None if pd.isna(v) else v for v in joined[n].tolist()] for n in names},
                     manifest.columns)  # fmt: skip
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
