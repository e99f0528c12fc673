"""A version published with the onnx runtime: its compiled graphs, run by onnxruntime.

The graphs were checked against the estimator at publish (service/compile.py): same labels,
numbers within the manifest's tolerance. Here they get the same validated input the estimator
would (float rows, or the typed table of a model fitted on a DataFrame), as the graphs' feeds,
and answer the manifest's outputs with the estimator's dtypes and shapes, so the codecs and
every route treat both runtimes alike. One thread per session: pods scale out, not up.
"""

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from mlscale.service.artifacts.manifest import COMPILED, SCORES, Manifest
from mlscale.service.runtime.model import LoadedModel, Outputs


def session(path: Path) -> Any:
    import onnxruntime as ort  # only servers of compiled versions load it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # A graph that fails raises, with onnxruntime's message: its own log line would repeat it
    # (in red, on the terminal of whoever publishes).
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def resident_bytes() -> int:
    """This process's resident memory: what onnxruntime allocates is native, which Python's
    tracemalloc does not see."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def runtime_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


# What a graph is fed for a missing string: one no client sends, so that an imputer in the
# graph (service/converters.py) tells it from an empty string, as scikit-learn does.
MISSING = "\x00"


def feeds(x: Any, manifest: Manifest) -> list[np.ndarray]:
    """A validated batch as the graphs' inputs, in their order: the rows as one float64
    tensor, or each column of a typed table (frames.Table) as a [rows, 1] tensor (floats as
    float64, integers and booleans as int64, strings and categories as strings, a missing
    string as MISSING), or the table's numbers stacked as one float64 tensor where the graph
    was made so."""
    columns = manifest.columns
    if columns is None:
        return [np.asarray(x, dtype=np.float64)]
    if manifest.compiled is not None and manifest.compiled.stacked:
        return [np.column_stack([x[n] for n in columns.dtypes]).astype(np.float64)]
    out = []
    for name in columns.dtypes:
        values = x[name]
        if values.dtype.kind == "f":
            column = values.astype(np.float64, copy=False)
        elif values.dtype.kind in "iub":
            column = values.astype(np.int64)
        else:
            column = np.array([MISSING if v is None or v != v else str(v) for v in values],
                              dtype=object)  # fmt: skip
        out.append(column.reshape(-1, 1))
    return out


@functools.cache
def refusals() -> tuple[type[Exception], ...]:
    """onnxruntime's errors for rows a graph cannot answer: a kernel that failed on them (a
    category a one-hot encoding fitted with handle_unknown="error" never saw), or inputs it does
    not take. Raised as scikit-learn raises them, as ValueError: the same 422 on either
    runtime."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    return Fail, InvalidArgument


def input_kind(dtype: Any) -> str:
    """How a training column travels into the graph: f (float64), i (int64) or s (string)."""
    import pandas as pd

    if isinstance(dtype, pd.CategoricalDtype | pd.StringDtype):
        return "s"
    kind = np.dtype(dtype).kind
    return "f" if kind == "f" else "i" if kind in "iub" else "s"


class CompiledModel(LoadedModel):
    """`estimator` holds the sessions: {"model": ..., "scores": ... or None}."""

    input_names: list[str]  # the graphs' inputs, in the order `feeds` gives them
    ranks: dict[str, int]  # each output's rank in the manifest: [N] or [N, k]
    booleans: set[str]  # the outputs the estimator answers as booleans (labels False, True)

    @classmethod
    def open(cls, manifest: Manifest, folder: Path) -> "CompiledModel":
        assert manifest.compiled is not None
        scores = folder / SCORES if SCORES in manifest.compiled.files else None
        before = resident_bytes()
        sessions = {"model": session(folder / COMPILED), "scores": scores and session(scores)}
        opened = cls(manifest, sessions, fast_path=False)
        opened.native_bytes = max(0, resident_bytes() - before)
        # skl2onnx renames a column whose name is not an identifier ("petal length (cm)" is
        # input "petal_length__cm_"); the graph's inputs keep the columns' order.
        opened.input_names = [i.name for i in sessions["model"].get_inputs()]
        opened.ranks = {spec.name: len(spec.shape) for spec in manifest.outputs}
        opened.booleans = {spec.name for spec in manifest.outputs if spec.datatype == "BOOL"}
        return opened

    @property
    def platform(self) -> str:
        return f"onnxruntime_{runtime_version()}"

    def predict_slow(self, x: Any, names: list[str] | None = None) -> Outputs:
        names = names or [spec.name for spec in self.manifest.outputs]
        inputs = dict(zip(self.input_names, feeds(x, self.manifest), strict=True))
        out: Outputs = {}
        try:
            if set(names) - {"decision_function"}:
                first, *rest = self.estimator["model"].run(None, inputs)
                out["predict"] = first
                if rest:  # float32 sums of trees' shares reach 1.0000001
                    out["predict_proba"] = np.clip(rest[0], 0.0, 1.0)
            if "decision_function" in names:
                out["decision_function"] = self.estimator["scores"].run(None, inputs)[1]
        except refusals() as exc:  # the graph ran on the verification rows, not on these
            raise ValueError(str(exc)) from exc
        return {name: self._shaped(name, out[name]) for name in names}

    def _shaped(self, name: str, values: np.ndarray) -> np.ndarray:
        """An output with the estimator's shape and dtype: a regressor's [N, 1] as [N], a
        binary classifier's two raw scores as the positive class's one, numbers as float64,
        and labels False and True, which the graph answers as 0 and 1, as booleans."""
        if self.ranks[name] == 1 and values.ndim == 2:
            values = values[:, -1]
        if values.dtype.kind == "f":
            values = values.astype(np.float64)
        elif name in self.booleans:
            values = values.astype(bool)
        return values
