"""What a version is: its manifest, with the names and checks a version's folder obeys.

Only pydantic here: the rollout operator and the model images read manifests without loading
scikit-learn (`store.py` writes and verifies versions).
"""

import re
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import BaseModel, Field

from mlscale.service.errors import StoreError

ARTIFACT = "model.joblib"
# The compiled graphs of a version published with the onnx runtime: every output but
# decision_function, and decision_function (the classifier's raw scores) where declared.
COMPILED, SCORES = "model.onnx", "scores.onnx"
SKLEARN, ONNX = "sklearn", "onnx"  # runtimes
MANIFEST = "manifest.json"
# Names and versions become Kubernetes label values and folder names: the label value rule.
LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def nullable(dtype: Any) -> bool:
    """A pandas nullable dtype (Int64, Float64, boolean...): numbers or booleans under a mask,
    missing as pd.NA. Duck-typed, so that it needs no pandas: numpy's dtypes and pandas'
    others have no `numpy_dtype`."""
    return getattr(dtype, "numpy_dtype", None) is not None


class TensorSpec(BaseModel):
    """One input or output tensor, as the Open Inference Protocol describes it."""

    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable dimension (the batch).")


class Columns(BaseModel):
    """How a model fitted on a pandas DataFrame takes its input: named, typed columns."""

    dtypes: dict[str, str] = Field(description="pandas dtype per column, in the model's order.")
    categories: dict[str, list[Any]] = Field(
        default_factory=dict, description="The categories of `category` columns."
    )
    example: dict[str, Any] | None = Field(
        None, description="One row of the training data: the warm-up input, and a request example."
    )
    missing: bool = Field(
        True, description="A missing number (null) is answered; false: refused with a 400, "
        "as the estimator refused NaN at publish.",
    )  # fmt: skip


class Compiled(BaseModel):
    """A version's ONNX graphs, and how they were checked against the estimator at publish."""

    files: dict[str, str] = Field(description="sha256 per compiled file (model.onnx, scores.onnx).")
    tolerance: float = Field(
        description="Largest difference allowed between a compiled number and the estimator's, "
        "relative above 1 and absolute below (|a - b| / max(1, |b|)); labels must be equal."
    )
    max_difference: float = Field(description="The largest difference seen, measured so.")
    rows: int = Field(description="Rows verified: the sample and the holdout.")
    stacked: bool = Field(
        False, description="The graph takes a DataFrame model's columns as one float64 tensor "
        "(an estimator that is not a pipeline of column transformers), not one input each.",
    )  # fmt: skip
    skl2onnx_version: str
    onnxruntime_version: str


class Manifest(BaseModel):
    name: str
    version: str
    sha256: str
    framework: str = "sklearn"
    sklearn_version: str
    numpy_version: str
    python_version: str
    estimator: str = Field(description="Class name of the fitted estimator.")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: dict[str, float] = Field(description="Offline metrics on a holdout set.")
    labels: list[str] = Field(default_factory=list, description="Class names, for classifiers.")
    columns: Columns | None = Field(
        None, description="Set for a model that takes a DataFrame; None for one tensor."
    )
    pandas_version: str | None = None
    created: datetime
    runtime: str = Field(SKLEARN, description="What serves it: sklearn (the joblib file), or "
                         "onnx (the compiled graphs, with onnxruntime).")  # fmt: skip
    compiled: Compiled | None = Field(None, description="Set when runtime is onnx.")

    @cached_property
    def input_types(self) -> dict[str, str]:
        """Datatype by input name, in the model's order."""
        return {spec.name: spec.datatype for spec in self.inputs}

    @cached_property
    def takes_text(self) -> bool:
        """Takes documents, one string per row: one BYTES tensor of shape [-1] (a pipeline that
        starts with a text vectorizer; other tensor models take numbers)."""
        return self.columns is None and self.inputs[0].datatype == "BYTES"

    @cached_property
    def output_types(self) -> dict[str, str]:
        """Datatype by output name."""
        return {spec.name: spec.datatype for spec in self.outputs}


def check_label(what: str, value: str) -> None:
    """Refuse a model name or version that cannot be a folder name and a label value."""
    if not LABEL.fullmatch(value):
        raise StoreError(
            f"model {what} {value!r} is not valid: use up to 63 letters, digits, '-', '_' or "
            "'.', starting and ending with a letter or digit"
        )
