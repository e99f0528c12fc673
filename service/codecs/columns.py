"""Tabular input for models fitted on a pandas DataFrame, the way MLServer's pandas codec
takes it: one V2 input per named column (numbers, `BOOL`, `BYTES` strings), or one
rows-by-columns tensor in the model's column order. KServe v1 `instances` may be rows (lists in
column order, types mixed) or objects keyed by column.

The tensors' shapes, names and datatypes are checked here; their values against the training
dtypes by `runtime/frames.py`, which builds the typed table.
"""

from typing import Any

import numpy as np

from mlscale.service.artifacts.manifest import Columns, Manifest
from mlscale.service.contract import DATATYPES, NUMERIC_TYPES
from mlscale.service.errors import InvalidInput
from mlscale.service.runtime.frames import Table, frame

# The name of one rows-by-columns tensor, the name array models' single input has too.
TABLE = "input-0"


def decode_tensors(inputs: list[Any], manifest: Manifest) -> Table:
    """V2 inputs, one per column or one rows-by-columns tensor, as a typed DataFrame."""
    columns = _columns(manifest)
    types = manifest.input_types
    first = inputs[0].get("name") if type(inputs[0]) is dict else None
    if len(inputs) == 1 and len(types) > 1 and not (type(first) is str and first in types):
        return _decode_table(inputs[0], manifest)
    by_name: dict[str, list[Any] | np.ndarray] = {}
    rows = None
    for tensor in inputs:
        name, shape, datatype, data = _fields(tensor)
        want = types.get(name)
        if want is None:
            raise InvalidInput(f"unknown input {name!r}; the model's columns are {list(types)}")
        if name in by_name:
            raise InvalidInput(f"input {name!r} is sent twice")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"input {name!r}: a column has shape [N] or [N, 1], not {shape}")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise InvalidInput(f"input {name!r}: has {shape[0]} rows, other columns have {rows}")
        values = _flat(data, name)
        if len(values) != shape[0]:
            raise InvalidInput(
                f"input {name!r}: shape {shape} needs {shape[0]} values, got {len(values)}"
            )
        if not _fits(datatype, want):
            raise InvalidInput(
                f"input {name!r}: datatype {datatype!r} does not fit the column; send {want}"
            )
        by_name[name] = values
    if len(by_name) < len(types):
        missing = [n for n in types if n not in by_name]
        raise InvalidInput(f"missing input column(s) {missing}; the model takes {list(types)}")
    if not rows:
        raise InvalidInput("empty batch; send at least one row")
    return frame(by_name, columns)


def decode_instances(instances: list[Any], manifest: Manifest) -> Table:
    """KServe v1 instances: rows in column order, or objects keyed by column."""
    columns = _columns(manifest)
    names = list(columns.dtypes)
    if not instances:
        raise InvalidInput("instances: empty batch; send at least one row")
    if all(type(row) is dict for row in instances):
        unknown = sorted({k for row in instances for k in row} - set(names))
        if unknown:
            raise InvalidInput(f"instances: unknown column(s) {unknown}; the model takes {names}")
        lacking = [n for n in names if any(n not in row for row in instances)]
        if lacking:
            raise InvalidInput(f"instances: every row needs the column(s) {lacking}")
        return frame({n: [row[n] for row in instances] for n in names}, columns)
    if all(type(row) is list and len(row) == len(names) for row in instances):
        return frame({n: [row[i] for row in instances] for i, n in enumerate(names)}, columns)
    raise InvalidInput(
        f"instances: each row is a list of {len(names)} values in the order {names}, "
        "or an object keyed by column name"
    )


def _columns(manifest: Manifest) -> Columns:
    assert manifest.columns is not None  # only column models are routed here
    return manifest.columns


def _fields(tensor: Any) -> tuple[str, list[int], Any, Any]:
    if type(tensor) is not dict:
        raise InvalidInput("each input must be an object with name, shape, datatype and data")
    name, shape = tensor.get("name"), tensor.get("shape")
    if type(name) is not str:
        raise InvalidInput("each input needs a 'name'")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
    return name, shape, tensor.get("datatype"), tensor.get("data")


def _flat(data: Any, name: str) -> list[Any] | np.ndarray:
    if type(data) is list:
        if data and type(data[0]) is list and all(type(v) is list for v in data):
            if not all(len(v) == 1 for v in data):
                raise InvalidInput(f"input {name!r}: nested rows of a column hold one value each")
            return [v[0] for v in data]
        return data
    if isinstance(data, np.ndarray):
        return data.ravel()
    raise InvalidInput(f"input {name!r}: data must be a list (flat or nested)")


_CARRIES = {"numeric": "numbers", "BOOL": "booleans", "BYTES": "strings"}


def _family(datatype: Any) -> str:
    return "numeric" if datatype in NUMERIC_TYPES else datatype


def _fits(datatype: Any, want: str) -> bool:
    """Any numeric datatype fills any numeric column; the values are checked one by one. A
    datatype that is not a string (a list, an object) fits none."""
    return datatype == want or (type(datatype) is str and _family(datatype) == _family(want))


def _decode_table(tensor: Any, manifest: Manifest) -> Table:
    """One rows-by-columns tensor (mixed types travel as BYTES), columns in the model's order."""
    columns = _columns(manifest)
    name, shape, datatype, data = _fields(tensor)
    names = list(columns.dtypes)
    if name != TABLE:
        raise InvalidInput(
            f"unknown input {name!r}; send one input per column {names}, "
            f"or one [N, {len(names)}] tensor named {TABLE!r}"
        )
    where = f"input {name!r}"
    if type(datatype) is not str or datatype not in DATATYPES:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}")
    if len(shape) != 2 or shape[1] != len(names):
        raise InvalidInput(
            f"{where}: shape {shape} does not match the model's {len(names)} columns {names}; "
            "send [N, columns] or one input per column"
        )
    if shape[0] == 0:
        raise InvalidInput(f"{where}: empty batch; send at least one row")
    if isinstance(data, np.ndarray):
        flat: list[Any] = data.ravel().tolist()
    elif type(data) is list:
        flat = [v for row in data for v in row] if all(type(r) is list for r in data) else data
    else:
        raise InvalidInput(f"{where}: data must be a list (flat or nested)")
    if len(flat) != shape[0] * shape[1]:
        raise InvalidInput(f"{where}: shape {shape} needs {shape[0] * shape[1]} values")
    if datatype in NUMERIC_TYPES and not all(type(v) in (int, float) or v is None for v in flat):
        raise InvalidInput(f"{where}: datatype {datatype} holds numbers; send mixed rows as BYTES")
    if datatype != "BYTES":  # BYTES carries any mix; a typed table must suit every column
        for spec in manifest.inputs:
            if not _fits(datatype, spec.datatype):
                raise InvalidInput(
                    f"column {spec.name!r} takes {_CARRIES[_family(spec.datatype)]}; send "
                    "BYTES (any mix of values) or one input per column"
                )
    width = len(names)
    return frame({n: flat[i::width] for i, n in enumerate(names)}, columns)
