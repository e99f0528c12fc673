"""Fast paths: what scikit-learn's predict gives, and independent of the batch."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.tree import DecisionTreeRegressor

from service.runtime import LoadedModel
from service.store import ModelStore


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
