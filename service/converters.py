"""Faults of skl2onnx 1.20's converters that made common pipelines fall back to
scikit-learn, mended where publishing converts. Each is installed once, before converting;
verification (`compile.py`) checks every graph's answers either way.
"""

from collections.abc import Callable
from typing import Any

# A converter's arguments: skl2onnx's scope, the operator (`raw_operator` is the fitted
# step), and the container the graph's nodes are added to.
Convert = Callable[[Any, Any, Any], None]


def install() -> None:
    _leaf_flags_as_ints()
    _mend("SklearnPolynomialFeatures", _polynomial_bias_typed)
    _mend("SklearnSimpleImputer", _imputer)
    _mend("SklearnVotingClassifier", _voting_without_flattening)


def _mend(alias: str, mended: Callable[[Convert, Any, Any, Any], None]) -> None:
    """Register `mended` for `alias`: called with skl2onnx's own converter first."""
    from skl2onnx.common._registration import get_converter, register_converter

    convert = get_converter(alias)
    if getattr(convert, "mlscale_mended", False):
        return

    def converter(scope: Any, operator: Any, container: Any) -> None:
        mended(convert, scope, operator, container)

    register_converter(alias, converter, overwrite=True, options=convert.get_allowed_options())
    get_converter(alias).mlscale_mended = True


def _converted_as(convert: Convert, scope: Any, operator: Any, container: Any,
                  **changes: Any) -> None:  # fmt: skip
    """Convert a copy of the fitted step with `changes` to its parameters."""
    import copy

    step = operator.raw_operator
    operator.raw_operator = copy.copy(step)
    vars(operator.raw_operator).update(changes)
    try:
        convert(scope, operator, container)
    finally:
        operator.raw_operator = step


def _voting_without_flattening(convert: Convert, scope: Any, operator: Any,
                               container: Any) -> None:  # fmt: skip
    """A soft-voting classifier with `flatten_transform=True`, the default, was refused ("not
    implemented yet"): the parameter shapes `transform` only, which no graph answers. Its
    weights, given as a list, were taken for an array ("'list' object has no attribute
    'sum'")."""
    import numpy as np

    weights = operator.raw_operator.weights
    weights = None if weights is None else np.asarray(weights, dtype=np.float64)
    _converted_as(convert, scope, operator, container, flatten_transform=False, weights=weights)


def _float64_input(operator: Any) -> bool:
    from onnx import TensorProto

    return bool(operator.inputs[0].type._get_element_onnx_type() == TensorProto.DOUBLE)


def _polynomial_bias_typed(convert: Convert, scope: Any, operator: Any, container: Any) -> None:
    """`PolynomialFeatures`' bias column is float32 whatever its input, and the graph then
    joins it to float64 products, which onnxruntime refuses to load: give it the input's
    type."""
    from onnx import TensorProto, helper

    first = len(container.nodes)
    convert(scope, operator, container)
    if not _float64_input(operator):
        return
    one = helper.make_tensor("ONE", TensorProto.DOUBLE, [1], [1.0])
    for node in container.nodes[first:]:
        if node.op_type == "ConstantOfShape":  # the bias column, its one such node
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", one))


def _imputer(convert: Convert, scope: Any, operator: Any, container: Any) -> None:
    """A `SimpleImputer` of columns whose missing values are NaN (scikit-learn's default):
    - of strings, skl2onnx took the NaN marker for a number, and failed on the first string
      statistic ("could not convert string to float"). The graph is fed a missing string as
      `compiled.MISSING`: skl2onnx's string imputer is given that as its marker.
    - of float64 numbers, skl2onnx's `Imputer` node runs on float32 only in onnxruntime (and
      its fill values are rounded to float32): the graph failed to load. A NaN is replaced
      by its column's statistic with `IsNaN` and `Where`, in float64.
    Other imputers (another marker, an indicator, a column with no statistic, which
    scikit-learn drops) are skl2onnx's."""
    import numpy as np
    from onnx import TensorProto
    from skl2onnx.common.data_types import StringTensorType
    from skl2onnx.operator_converters.common import concatenate_variables

    from mlscale.service.runtime.compiled import MISSING

    imputer = operator.raw_operator
    marker = imputer.missing_values
    if imputer.add_indicator or not (isinstance(marker, float) and np.isnan(marker)):
        convert(scope, operator, container)
        return
    if isinstance(operator.inputs[0].type, StringTensorType):
        _converted_as(convert, scope, operator, container, missing_values=MISSING)
        return
    statistics = np.asarray(imputer.statistics_, dtype=np.float64)
    if not _float64_input(operator) or np.isnan(statistics).any():
        convert(scope, operator, container)
        return
    features = concatenate_variables(scope, operator.inputs, container)
    fill, missing = scope.get_unique_variable_name("fill"), scope.get_unique_variable_name("nan")
    container.add_initializer(fill, TensorProto.DOUBLE, [len(statistics)], statistics.tolist())
    container.add_node("IsNaN", [features], [missing], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node("Where", [missing, fill, features], [operator.outputs[0].full_name],
                       name=scope.get_unique_operator_name("Where"))  # fmt: skip


def _leaf_flags_as_ints() -> None:
    """A histogram-gradient-boosting leaf's missing-value flag comes as a Python bool among the
    branches' integers, and onnx refuses the attribute ("Expected an int, got a boolean"):
    pass the flag as the integer it stands for."""
    from skl2onnx.common import tree_ensemble

    add_node = tree_ensemble.add_node
    if getattr(add_node, "mlscale_ints", False):
        return

    def add_node_with_int_flags(*args: Any, nodes_missing_value_tracks_true: Any = 0,
                                **kwargs: Any) -> Any:  # fmt: skip
        flag = int(nodes_missing_value_tracks_true or 0)
        return add_node(*args, nodes_missing_value_tracks_true=flag, **kwargs)

    add_node_with_int_flags.mlscale_ints = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node_with_int_flags
