"""Fast paths: what scikit-learn's predict gives, independent of the batch, and the same
bits whether a request is answered in Python or with numpy."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeRegressor

from mlscale.service.artifacts.manifest import Manifest
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.runtime.model import LoadedModel, pairwise_sum


@pytest.mark.parametrize("name", ["linear", "multilinear", "iris"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_fast_path_agrees_with_predict(model_dir: Path, name: str, version: str):
    model = LoadedModel(*ModelStore(model_dir).load(name, version))
    assert model.has_fast_path
    features = model.manifest.inputs[0].shape[1]
    rng = np.random.default_rng(42)
    for rows in (1, 2, 7, 64, 1000):
        x = rng.normal(scale=rng.choice([0.1, 1, 100]), size=(rows, features))
        fast, slow = model.predict(x), model.predict_slow(x)
        assert fast.keys() == slow.keys()
        for key in fast:
            assert fast[key].dtype == slow[key].dtype
            if fast[key].dtype.kind == "f":  # rounding of a different summation order only
                scale = np.abs(slow[key]).max()
                np.testing.assert_allclose(fast[key], slow[key], rtol=1e-12, atol=1e-12 * scale)
            else:
                np.testing.assert_array_equal(fast[key], slow[key])


@pytest.mark.parametrize("name", ["linear", "multilinear", "iris"])
def test_fast_path_answer_does_not_depend_on_the_batch(model_dir: Path, name: str):
    model = LoadedModel(*ModelStore(model_dir).load(name, "1"))
    x = np.random.default_rng(7).normal(size=(500, model.manifest.inputs[0].shape[1]))
    batch = model.predict(x)
    for i in range(len(x)):
        alone = model.predict(x[i : i + 1])
        for key in batch:
            np.testing.assert_array_equal(batch[key][i], alone[key][0])


def test_estimators_without_fast_path_use_predict(model_dir: Path):
    manifest = ModelStore(model_dir).manifest("multilinear", "1")
    tree = DecisionTreeRegressor(max_depth=3).fit(np.eye(4), [1.0, 2.0, 3.0, 4.0])
    model = LoadedModel(manifest, tree)
    assert not model.has_fast_path
    np.testing.assert_array_equal(model.predict(np.eye(4))["predict"], [1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize("n", [*range(1, 40), 127, 128, 129, 255, 256, 300, 1000])
def test_pairwise_sum_has_numpy_bits(n: int):
    rng = np.random.default_rng(n)
    for _ in range(20):
        x = rng.normal(size=(3, n)) * 10.0 ** rng.uniform(-8, 8, size=(3, n))
        for row, total in zip(x.tolist(), x.sum(axis=1).tolist(), strict=True):
            assert pairwise_sum(row) == total


def _assert_rows_match_batch(model: LoadedModel, x: np.ndarray) -> None:
    """predict_rows on each row alone has the bits predict gives the whole batch."""
    batch = model.predict(x)
    for key in model._fast.row_outputs:  # type: ignore[union-attr]
        rows = [model.predict_rows([row], [key])[key][0] for row in x.tolist()]  # type: ignore[index]
        expected = batch[key]
        assert np.asarray(rows, dtype=expected.dtype).tobytes() == expected.tobytes(), key


@pytest.mark.filterwarnings("ignore:overflow|invalid value:RuntimeWarning")
@pytest.mark.parametrize("name", ["linear", "multilinear", "iris"])
def test_python_rows_have_the_bits_of_the_numpy_path(model_dir: Path, name: str):
    model = LoadedModel(*ModelStore(model_dir).load(name, "1"))
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, model.manifest.inputs[0].shape[1]))
    _assert_rows_match_batch(model, x * 10.0 ** rng.uniform(-3, 3, size=x.shape))
    # Large magnitudes, exact ties and an overflow to inf/NaN scores follow numpy too.
    _assert_rows_match_batch(model, np.vstack([np.zeros_like(x[:2]), np.full_like(x[:2], 1e308)]))


@pytest.mark.parametrize("features", [2, 7, 8, 9, 17, 130, 300])
def test_python_rows_match_for_any_width(model_dir: Path, features: int):
    """Widths past numpy's 8-way unrolling and its 128-value blocks, on fitted models."""
    rng = np.random.default_rng(features)
    x = rng.normal(size=(200, features))
    y = x @ rng.normal(size=features)
    manifest = Manifest.model_validate(
        {**ModelStore(model_dir).manifest("multilinear", "1").model_dump(), "inputs": [
            {"name": "input-0", "datatype": "FP64", "shape": [-1, features]}
        ]}
    )  # fmt: skip
    _assert_rows_match_batch(LoadedModel(manifest, LinearRegression().fit(x, y)), x)
    classes = np.digitize(y, np.quantile(y, [0.25, 0.5, 0.75]))  # four classes
    _assert_rows_match_batch(LoadedModel(manifest, LogisticRegression().fit(x, classes)), x)


def test_outputs_without_an_exact_python_formula_go_to_numpy(model_dir: Path):
    iris = LoadedModel(*ModelStore(model_dir).load("iris", "1"))
    assert iris.predict_rows([[1.0, 2.0, 3.0, 4.0]], ["predict_proba"]) is None
    slow = LoadedModel(*ModelStore(model_dir).load("iris", "1"), fast_path=False)
    assert slow.predict_rows([[1.0, 2.0, 3.0, 4.0]], ["predict"]) is None
