"""Bring your own model: a pipeline nobody wrote for mlscale, published and served.

The model: iris as a DataFrame with one column made a string (sepal size), one-hot encoded
beside scaled numbers, and a gradient-boosted classifier with string class labels. Every answer
over V2 (by column, single tensor), v1 (rows and objects) must equal the pipeline's own output.
"""

import asyncio
import pickle
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from examples import flowers
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.errors import InvalidModel, StoreError
from mlscale.service.publish import publish
from tests.conftest import Server, run_server
from tests.helpers import by_column, cli


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, Pipeline, pd.DataFrame]]:
    pipe, x_train, x_test, y_test = flowers.train()
    store = tmp_path_factory.mktemp("byo") / "models"
    publish(
        pipe,
        "flowers",
        model_dir=store,
        sample=x_train.head(),
        holdout=(x_test, y_test),
        runtime="sklearn",
    )  # the codecs, bit for bit; test_compiled.py: onnx
    with run_server(store, model_name="flowers") as server:
        yield server, pipe, x_test.reset_index(drop=True)


def outputs_of(body: dict) -> dict[str, dict]:
    return {o["name"]: o for o in body["outputs"]}


def assert_equals_pipeline(body: dict, pipe: Pipeline, rows: pd.DataFrame) -> None:
    got = outputs_of(body)
    assert got["predict"]["datatype"] == "BYTES"
    assert got["predict"]["data"] == pipe.predict(rows).tolist()
    for method in ("predict_proba", "decision_function"):
        if method in got:
            expected = getattr(pipe, method)(rows)
            assert got[method]["shape"] == list(expected.shape)
            np.testing.assert_array_equal(np.reshape(got[method]["data"], expected.shape), expected)


def test_by_column_answers_equal_the_pipeline(served):
    server, pipe, rows = served
    names = ["predict", "predict_proba", "decision_function"]
    with server.client() as c:
        r = c.post("/v2/models/flowers/infer", json=by_column(rows, names))
    assert r.status_code == 200, r.text
    assert_equals_pipeline(r.json(), pipe, rows)


def test_single_tensor_rows_in_column_order(served):
    server, pipe, rows = served
    data = rows.astype(object).values.tolist()  # mixed numbers and strings, row by row
    body = {
        "inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "BYTES", "data": data}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    with server.client() as c:
        r = c.post("/v2/models/flowers/infer", json=body)
    assert r.status_code == 200, r.text
    assert_equals_pipeline(r.json(), pipe, rows)


def test_v1_rows_of_mixed_types_and_objects_keyed_by_column(served):
    server, pipe, rows = served
    expected = pipe.predict(rows).tolist()
    as_rows = rows.astype(object).values.tolist()
    as_objects = rows.to_dict(orient="records")
    with server.client() as c:
        for instances in (as_rows, as_objects):
            r = c.post("/v1/models/flowers:predict", json={"instances": instances})
            assert r.status_code == 200, r.text
            assert r.json()["predictions"] == expected
        assert c.post("/predict", json={"instances": as_objects}).json()["predictions"] == expected


def test_metadata_describes_the_columns(served):
    server, _, _ = served
    with server.client() as c:
        meta = c.get("/v2/models/flowers").json()
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("sepal_width", "FP64"), ("petal_length", "FP64"), ("petal_width", "FP64"),
        ("sepal_size", "BYTES"),
    ]  # fmt: skip
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba", "decision_function"]
    assert meta["parameters"]["labels"] == ["setosa", "versicolor", "virginica"]
    assert set(meta["parameters"]["metrics"]) == {"accuracy", "f1_macro"}


@pytest.mark.parametrize(
    "change, text",
    [
        (lambda b: b["inputs"].pop(), "missing input column(s) ['sepal_size']"),
        (lambda b: b.update(inputs=b["inputs"][:1]), "missing input column(s) ['petal_length'"),
        (lambda b: b["inputs"][0].update(name="colour"), "unknown input 'colour'"),
        (lambda b: b["inputs"][3].update(data=[1, 2]), "column 'sepal_size': expects strings"),
        (lambda b: b["inputs"][0].update(data=["a", "b"]), "column 'sepal_width': expects numbers"),
        (lambda b: b["inputs"][1].update(shape=[3]), "has 3 rows, other columns have 2"),
        (lambda b: b["inputs"][3].update(datatype="FP64"), "does not fit the column; send BYTES"),
    ],
)
def test_bad_columns_get_400(served, change, text):
    server, _, rows = served
    body = by_column(rows.head(2), ["predict"])
    change(body)
    with server.client() as c:
        r = c.post("/v2/models/flowers/infer", json=body)
    assert r.status_code == 400, r.text
    assert text in r.json()["error"]


def test_a_null_number_is_refused_where_the_model_refused_missing_values(served):
    """JSON has no NaN; null in a float column would reach the model as NaN, which this
    pipeline's classifier refused when it was published: a 400 naming the column (it was a 500
    from inside scikit-learn). A pipeline with an imputer takes null (test_own_models.py)."""
    server, _, rows = served
    body = by_column(rows.head(2), ["predict"])
    body["inputs"][0]["data"] = [None, 3.0]
    with server.client() as c:
        r = c.post("/v2/models/flowers/infer", json=body)
    assert r.status_code == 400
    assert r.json()["error"].startswith(
        f"column {body['inputs'][0]['name']!r}: null is not allowed"
    )


async def _concurrently(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        responses = await asyncio.gather(
            *(c.post("/v2/models/flowers/infer", json=b) for b in bodies)
        )
    return [r.json() for r in responses]


def test_concurrent_requests_batched_as_frames_answer_each_row(served):
    server, pipe, rows = served
    bodies = [
        by_column(rows.iloc[i : i + 3], ["predict", "predict_proba"]) for i in range(0, 30, 3)
    ]
    answers = asyncio.run(_concurrently(server.url, bodies))
    for i, body in zip(range(0, 30, 3), answers, strict=True):
        assert_equals_pipeline(body, pipe, rows.iloc[i : i + 3])


# --- publishing ---------------------------------------------------------------------------


def test_a_model_fitted_on_arrays_takes_one_tensor(tmp_path: Path):
    x, y = load_diabetes(return_X_y=True)
    m = publish(LinearRegression().fit(x, y), "diabetes", model_dir=tmp_path, holdout=(x, y))
    assert [(s.name, s.datatype, s.shape) for s in m.inputs] == [("input-0", "FP64", [-1, 10])]
    assert [s.name for s in m.outputs] == ["predict"] and m.columns is None
    assert m.labels == [] and set(m.metrics) == {"mse", "r2"}


def test_category_and_bool_columns_keep_their_types(tmp_path: Path):
    """HistGradientBoosting reads category codes: the served frame must have the training
    categories, not ones made from the request's values. Booleans travel as BOOL."""
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    x["band"] = pd.Categorical(np.where(x["bmi"] > 0, "high", "low"), categories=["low", "high"])
    x["heavy"] = x["bmi"] > 0.05
    model = HistGradientBoostingRegressor(max_iter=20, categorical_features="from_dtype").fit(x, y)
    m = publish(model, "diabetes", model_dir=tmp_path, sample=x.head(3))
    assert m.columns is not None and m.columns.categories == {"band": ["low", "high"]}
    datatypes = {spec.name: spec.datatype for spec in m.inputs}
    assert (datatypes["band"], datatypes["heavy"], datatypes["bmi"]) == ("BYTES", "BOOL", "FP64")
    rows = x.head(4).assign(band=["high"] * 4, heavy=[True, False, True, False])  # no "low"
    with run_server(tmp_path, model_name="diabetes") as server, server.client() as c:
        body = {"instances": rows.astype(object).to_dict(orient="records")}
        r = c.post("/v1/models/diabetes:predict", json=body)
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(r.json()["predictions"], model.predict(rows))
        body["instances"][0]["heavy"] = 1  # a number is not a boolean
        refused = c.post("/v1/models/diabetes:predict", json=body)
    assert refused.status_code == 400 and "column 'heavy': expects booleans" in refused.text


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    pipe, x_train, x_test, y_test = flowers.train()
    joblib.dump(pipe, root / "flowers.joblib")
    (root / "flowers.pkl").write_bytes(pickle.dumps(pipe))
    x_train.head().to_csv(root / "sample.csv", index=False)
    x_test.assign(species=y_test).to_csv(root / "holdout.csv", index=False)
    holdout = x_test.assign(species=y_test).reset_index(drop=True)
    holdout.assign(species=holdout.species.where(holdout.index != 2)).to_csv(
        root / "unlabelled.csv", index=False
    )  # a row whose target is missing, as exports of real tables have
    holdout.head(0).to_csv(root / "empty.csv", index=False)
    joblib.dump(LogisticRegression(), root / "unfitted.joblib")
    joblib.dump({"not": "a model"}, root / "dict.joblib")
    return root


def test_cli_publishes_shows_the_manifest_and_numbers_versions(files: Path, tmp_path: Path):
    args = [
        "--name",
        "flowers",
        "--sample",
        str(files / "sample.csv"),
        "--model-dir",
        str(tmp_path),
    ]
    code, out = cli("publish", str(files / "flowers.joblib"), *args,
                    "--holdout", str(files / "holdout.csv"), "--target", "species")  # fmt: skip
    assert code == 0, out
    assert "sepal_size BYTES [-1]" in out and "predict BYTES [-1]" in out and "accuracy=" in out
    code, out = cli("publish", str(files / "flowers.pkl"), *args)
    assert code == 0, out
    assert "quality gate has nothing to compare" in out
    store = ModelStore(tmp_path)
    assert store.versions("flowers") == ["1", "2"]
    assert store.manifest("flowers", "2").metrics == {}
    manifest, loaded = store.load("flowers", "1")
    assert manifest.columns is not None and type(loaded) is Pipeline


@pytest.mark.parametrize(
    "file, extra, text",
    [
        ("unfitted.joblib", [], "is not fitted; call fit() before publishing"),
        ("dict.joblib", [], "a dict is not a scikit-learn estimator"),
        ("sample.csv", [], "is not a joblib or pickle file of a model"),
        ("missing.joblib", [], "no such file"),
        ("flowers.joblib", ["--version", "1/../x"], "is not valid"),
        (
            "flowers.joblib",
            ["--holdout", "holdout.csv", "--target", "colour"],
            "no column 'colour'",
        ),
        ("flowers.joblib", ["--version", "1"], "already exists"),
        (
            "flowers.joblib",
            ["--sample", "sample.csv", "--holdout", "unlabelled.csv", "--target", "species"],
            "the holdout's target is missing in 1 row(s) (e.g. [2]); drop them",
        ),  # was a TypeError traceback from the metrics
        (
            "flowers.joblib",
            ["--sample", "sample.csv", "--holdout", "empty.csv", "--target", "species"],
            "the holdout has no rows",
        ),
    ],
)
def test_cli_refuses_bad_input_and_writes_nothing(files: Path, tmp_path: Path, file, extra, text):
    pipe, x_train, _, _ = flowers.train()
    publish(pipe, "flowers", model_dir=tmp_path, version="1", sample=x_train.head())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    extra = [str(files / a) if a.endswith(".csv") else a for a in extra]
    code, out = cli(
        "publish", str(files / file), "--name", "flowers", "--model-dir", str(tmp_path), *extra
    )
    assert code == 1 and text in out, out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_api_refuses_a_bad_name_before_anything_is_written(tmp_path: Path):
    x, y = load_diabetes(return_X_y=True)
    with pytest.raises(StoreError, match="is not valid"):
        publish(LinearRegression().fit(x, y), "Bad Name", model_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_transformer_and_a_date_column_are_refused_saying_what_to_publish(tmp_path: Path):
    x, y = load_iris(return_X_y=True, as_frame=True)
    with pytest.raises(InvalidModel, match="a StandardScaler transforms rows but does not "
                       "predict; publish a model, or a pipeline that ends in one"):  # fmt: skip
        publish(StandardScaler().fit(x), "scaler", model_dir=tmp_path)
    dated = x.assign(seen=pd.date_range("2026-01-01", periods=len(x)))
    drop = ColumnTransformer([("dates", "drop", ["seen"])], remainder="passthrough")
    model = make_pipeline(drop, LogisticRegression(max_iter=500)).fit(dated, y)
    with pytest.raises(InvalidModel, match=r"datetime64\[\w+\] cannot travel .*a date as a "
                       "number or an ISO string"):  # fmt: skip
        publish(model, "dated", model_dir=tmp_path, sample=dated.head())
    assert not any(tmp_path.iterdir())


def test_a_sample_whose_first_row_has_a_missing_value_publishes(tmp_path: Path):
    """Real training data has holes, filled before `fit`: publishing probed the sample's first
    row and checked the graph on every row, and failed on the hole ("Input X contains NaN")
    for a model that never sees one."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    holes = x.mask(np.broadcast_to((np.arange(len(x)) % 9 == 0)[:, None], x.shape))
    model = LogisticRegression(max_iter=500).fit(holes.fillna(0), y)
    m = publish(model, "filled", model_dir=tmp_path, sample=holes.head(), holdout=(x, y))
    assert m.columns is not None and not m.columns.missing
    assert m.columns.example == x.iloc[1].to_dict()  # the first complete row
    assert m.runtime == "onnx" and m.compiled is not None
    assert m.compiled.rows == 4 + 150  # the sample's complete rows, and the holdout


def test_a_model_naming_code_of_the_training_script_is_refused(tmp_path: Path):
    """A function defined in the script or notebook that trained the model pickles as
    `__main__.doubled`: publishing wrote it, and every server then crashed unpickling it."""

    def doubled(x: np.ndarray) -> np.ndarray:
        return x * 2

    doubled.__module__ = "__main__"  # as it is in a training script
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(FunctionTransformer(doubled), LogisticRegression(max_iter=500))
    with pytest.raises(InvalidModel, match=r"uses test_a_model_naming_code_of_the_training_"
                       r"script_is_refused.<locals>.doubled, defined in the script"):  # fmt: skip
        publish(model.fit(x, y), "doubled", model_dir=tmp_path)
    lam = make_pipeline(FunctionTransformer(lambda v: v), LogisticRegression(max_iter=500))
    with pytest.raises(InvalidModel, match=r"cannot be pickled .*a lambda cannot be"):
        publish(lam.fit(x, y), "lambda", model_dir=tmp_path)
    assert not any(tmp_path.iterdir())
