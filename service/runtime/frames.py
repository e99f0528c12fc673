"""Typed tables for models fitted on a pandas DataFrame: each column's values checked against
the dtype it had in training, and held as a numpy array. The codecs (`codecs/columns.py`)
decode requests into these; the warm-up builds one from the row recorded at publish. Batching
joins the arrays; a DataFrame with the training dtypes is made once per batch for scikit-learn,
which sees what it saw in `fit`, and never for a compiled graph, which takes the arrays. A JSON
`null` in a float column is a missing value (NaN): imputers in the pipeline can handle it, and
JSON has no NaN. Checking needs numpy only: pandas is imported where a DataFrame is made (the
slim image, which serves compiled versions, has none).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlscale.service.artifacts.manifest import Columns, nullable
from mlscale.service.errors import InvalidInput, InvalidModel

if TYPE_CHECKING:
    import pandas as pd


def dtype_of(columns: Columns, name: str) -> Any:
    """A column's pandas dtype in training."""
    import pandas as pd

    if name in columns.categories:
        return pd.CategoricalDtype(columns.categories[name])
    return pd.api.types.pandas_dtype(columns.dtypes[name])


def storage_of(columns: Columns, name: str) -> tuple[str, np.dtype[Any] | None, bool]:
    """How a column's values are checked and held: the kind of its values (numpy's letters,
    O for strings), the numpy dtype of its array (None: an array of objects, for strings,
    categories and nullable columns), and whether it is nullable (a null is pd.NA, not NaN).
    The same as pandas' dtype says, without pandas for numpy dtypes."""
    if name in columns.categories:  # a category's values are of its categories' kind
        categories = columns.categories[name]
        kind = np.asarray(categories).dtype.kind if categories else "O"
        return ("O" if kind in "USO" else kind), None, False
    text = columns.dtypes[name]
    try:
        dtype = np.dtype(text)
    except TypeError:  # pandas' own dtypes ("string", "Int64", ...)
        try:
            pandas_dtype = dtype_of(columns, name)
        except ImportError:
            raise InvalidModel(
                f"column {name!r} has the pandas dtype {text!r}, which only an image with "
                "pandas can check: serve this version with the full image"
            ) from None
        return _storage_kind(pandas_dtype), None, nullable(pandas_dtype)
    if dtype.kind in "fiub":
        return dtype.kind, dtype, False
    return ("O" if dtype.kind in "USO" else dtype.kind), None, False  # pandas 3 names strings "str"


# Columns -> (name, kind, dtype, nullable) per column: a manifest's columns are made once per
# version, and their storage, worked out from dtype strings, is asked for by every request. The
# Columns are held, so an id cannot be reused while it is a key.
Storage = tuple[str, str, np.dtype[Any] | None, bool]
_STORAGE: dict[int, tuple[Columns, list[Storage]]] = {}


def storage(columns: Columns) -> list[Storage]:
    """`storage_of` every column, in the model's order, worked out once per Columns."""
    held = _STORAGE.get(id(columns))
    if held is None:
        held = _STORAGE[id(columns)] = (
            columns, [(name, *storage_of(columns, name)) for name in columns.dtypes])  # fmt: skip
    return held[1]


@dataclass(frozen=True)
class Table:
    """Rows by column: each column's checked values, as an array of its training dtype (floats,
    integers, booleans) or of objects (strings and categories, None where missing)."""

    columns: Columns
    data: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def frame(self) -> "pd.DataFrame":
        """The DataFrame of the training dtypes, for scikit-learn."""
        import pandas as pd

        return pd.DataFrame({name: pd.Series(values, dtype=dtype_of(self.columns, name))
                             for name, values in self.data.items()})  # fmt: skip

    @staticmethod
    def concat(tables: list["Table"]) -> "Table":
        """Several requests' rows as one batch, in order."""
        first = tables[0]
        return Table(first.columns, {name: np.concatenate([t.data[name] for t in tables])
                                     for name in first.data})  # fmt: skip


def frame(by_name: dict[str, Any], columns: Columns) -> Table:
    """Check each column's values against its training dtype: the typed table."""
    data = {}
    for name, kind, dtype, held_null in storage(columns):
        values = by_name[name]
        where = f"column {name!r}"
        if isinstance(values, np.ndarray):  # binary tensor data: already typed
            if kind in "iu" and values.dtype.kind == "f" and not _integral(values).all():
                raise InvalidInput(f"{where}: expects whole numbers{_NO_NULL}")
            if kind == "f" and not columns.missing and np.isnan(values).any():
                raise InvalidInput(f"{where}: {_NO_MISSING}")
            data[name] = _array(values, dtype, kind, where)
        elif held_null and None in values:  # a pandas nullable column: null is pd.NA
            if not columns.missing:
                raise InvalidInput(f"{where}: {_NO_MISSING}")
            known = [v for v in values if v is not None]
            present = iter(_checked(known, kind, columns, where, held_null))
            data[name] = _array([None if v is None else next(present) for v in values],
                                dtype, kind, where)  # fmt: skip
        else:
            checked = _checked(values, kind, columns, where, held_null)
            data[name] = _array(checked, dtype, kind, where)
    return Table(columns, data)


def _checked(
    values: list[Any], kind: str, columns: Columns, where: str, held_null: bool
) -> list[Any]:
    """A column's JSON values, checked against its kind: a null in a float column as NaN,
    whole floats in an integer column as ints."""
    if kind == "b":
        if not all(type(v) is bool for v in values):
            raise InvalidInput(f"{where}: expects booleans (true/false)")
    elif kind == "f":
        if not all(type(v) in (int, float) or v is None for v in values):
            raise InvalidInput(f"{where}: expects numbers or null")
        if None in values:
            if not columns.missing:
                raise InvalidInput(f"{where}: {_NO_MISSING}")
            return [np.nan if v is None else v for v in values]
    elif kind in "iu":
        if not all(type(v) is int for v in values):
            return _whole(values, where, "" if held_null else _NO_NULL)
    elif not all(type(v) is str or v is None for v in values):
        raise InvalidInput(f"{where}: expects strings (BYTES) or null")
    return values


def _array(values: Any, dtype: np.dtype[Any] | None, kind: str, where: str) -> np.ndarray:
    """Values as an array: of the column's own numpy dtype for numbers and booleans, of
    objects for strings, categories and nullable columns (pandas types those once per
    batch)."""
    try:
        if dtype is not None:
            return np.asarray(values).astype(dtype) if isinstance(values, np.ndarray) else (
                np.array(values, dtype=dtype))  # fmt: skip
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"{where}: cannot be read as {dtype}: {exc}") from None


_NO_MISSING = (
    "null is not allowed: this model does not answer missing values (it refused them when "
    "published; a pipeline with an imputer takes them)"
)
# An integer column has no missing value: its training data had none, or it would be floats.
_NO_NULL = "; null is not allowed (the column held integers in training)"


def _whole(values: list[Any], where: str, no_null: str) -> list[int]:
    """Numbers for an integer column: 3 and 3.0 (what `df.to_numpy().tolist()` sends), not 3.5."""
    whole = []
    for v in values:
        if type(v) is int:
            whole.append(v)
        elif type(v) is float and v.is_integer():
            whole.append(int(v))
        elif type(v) is float:
            raise InvalidInput(f"{where}: expects whole numbers ({v!r} is not){no_null}")
        else:
            raise InvalidInput(f"{where}: expects whole numbers{no_null}")
    return whole


def _integral(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (np.round(values) == values)


def _storage_kind(dtype: Any) -> str:
    import pandas as pd

    if nullable(dtype):
        return _storage_kind(dtype.numpy_dtype)
    if isinstance(dtype, pd.CategoricalDtype):
        return _storage_kind(dtype.categories.dtype)
    if isinstance(dtype, pd.StringDtype):
        return "O"
    return np.dtype(dtype).kind
