"""Compiled inference: pipelines published as verified ONNX graphs and served by onnxruntime.

The same store is served twice, by its compiled graphs (the default) and by scikit-learn
(MLSCALE_RUNTIME=sklearn), and every route is asked the same question on both: the labels
must be equal, the numbers within the manifest's tolerance, a refusal the same refusal."""

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import (
    AdaBoostRegressor,
    BaggingRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
    VotingClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, SGDClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    KBinsDiscretizer,
    OneHotEncoder,
    PolynomialFeatures,
    StandardScaler,
)
from sklearn.svm import LinearSVC
from typer.testing import CliRunner

from examples import flowers
from mlscale.cli import app
from mlscale.service.artifacts.manifest import COMPILED, SCORES
from mlscale.service.artifacts.store import ModelStore, sha256_of
from mlscale.service.errors import InvalidModel
from mlscale.service.publish import plan, publish
from tests.conftest import Server, run_server
from tests.helpers import by_column, v2


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flowers (a pipeline over a DataFrame, string labels), a scaled random forest over one
    tensor (integer labels) and a regression pipeline (scaler, nearest neighbours), all
    published with the default runtime."""
    root = tmp_path_factory.mktemp("compiled") / "models"
    pipe, x_train, x_test, y_test = flowers.train()
    publish(pipe, "flowers", model_dir=root, sample=x_train.head(), holdout=(x_test, y_test))
    x, y = load_iris(return_X_y=True)
    forest = make_pipeline(StandardScaler(), RandomForestClassifier(20, random_state=0))
    publish(forest.fit(x, y), "forest", model_dir=root, holdout=(x, y))
    x, y = load_diabetes(return_X_y=True)
    nearest = make_pipeline(StandardScaler(), KNeighborsRegressor()).fit(x[:300], y[:300])
    publish(nearest, "nearest", model_dir=root, holdout=(x[300:], y[300:]))
    return root


@pytest.fixture(scope="module")
def both(store: Path) -> Iterator[tuple[Server, Server]]:
    """The store served compiled, and by scikit-learn."""
    models = {"model_name": "flowers", "models": "forest,nearest"}
    with run_server(store, **models) as onnx, run_server(store, runtime="sklearn", **models) as sk:
        yield onnx, sk


def test_publishing_compiles_verifies_and_records_the_graphs(store: Path):
    m = ModelStore(store).manifest("flowers", "1")
    assert m.runtime == "onnx" and m.compiled is not None
    assert set(m.compiled.files) == {COMPILED, SCORES}  # decision_function has its own graph
    folder = store / "flowers" / "1"
    assert {f: sha256_of(folder / f) for f in m.compiled.files} == m.compiled.files
    assert 0 <= m.compiled.max_difference <= m.compiled.tolerance == 1e-3
    assert m.compiled.rows == 5 + 38  # the sample and the holdout


def same_answers(onnx: dict, sklearn: dict, tolerance: float = 1e-3) -> None:
    """Two V2 answers: equal labels and shapes, numbers within the tolerance."""
    assert [o["name"] for o in onnx["outputs"]] == [o["name"] for o in sklearn["outputs"]]
    for a, b in zip(onnx["outputs"], sklearn["outputs"], strict=True):
        assert (a["datatype"], a["shape"]) == (b["datatype"], b["shape"]), a["name"]
        if a["datatype"] in ("BYTES", "INT64"):
            assert a["data"] == b["data"], a["name"]
        else:
            np.testing.assert_allclose(a["data"], b["data"], atol=tolerance, rtol=tolerance)


def ask(servers: tuple[Server, Server], method: str, path: str, **kwargs) -> tuple:
    """The same request to both servers: their two answers."""
    answers = []
    for server in servers:
        with server.client() as c:
            answers.append(c.request(method, path, **kwargs))
    return tuple(answers)


def test_every_route_answers_what_scikit_learn_answers(both):
    rows = flowers.train()[2].head(8).reset_index(drop=True)
    onnx, sk = ask(both, "POST", "/v2/models/flowers/infer", json=by_column(rows, []))
    assert onnx.status_code == sk.status_code == 200
    same_answers(onnx.json(), sk.json())
    table = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "BYTES",
                         "data": rows.to_numpy().flatten().tolist()}]}  # fmt: skip
    onnx, sk = ask(both, "POST", "/v2/models/flowers/infer", json=table)
    assert onnx.status_code == sk.status_code == 200, onnx.text
    same_answers(onnx.json(), sk.json())
    instances = {"instances": rows.to_dict(orient="records")}
    for path in ("/v1/models/flowers:predict", "/predict"):
        onnx, sk = ask(both, "POST", path, json=instances)
        assert onnx.status_code == sk.status_code == 200
        assert onnx.json() == sk.json()
    x = load_iris().data[::15].tolist()
    onnx, sk = ask(both, "POST", "/v2/models/forest/infer", json=v2(x, [len(x), 4]))
    assert onnx.status_code == sk.status_code == 200
    same_answers(onnx.json(), sk.json())


def test_a_regression_pipeline_answers_what_scikit_learn_answers(store: Path, both):
    assert ModelStore(store).manifest("nearest", "1").runtime == "onnx"
    rows = load_diabetes().data[300:340].tolist()
    onnx, sk = ask(both, "POST", "/v2/models/nearest/infer", json=v2(rows, [len(rows), 10]))
    assert onnx.status_code == sk.status_code == 200, onnx.text
    same_answers(onnx.json(), sk.json())
    onnx, sk = ask(both, "POST", "/v1/models/nearest:predict", json={"instances": rows})
    assert onnx.status_code == sk.status_code == 200
    np.testing.assert_allclose(onnx.json()["predictions"], sk.json()["predictions"],
                               rtol=1e-3, atol=1e-3)  # fmt: skip


def test_metadata_says_which_runtime_answers(both):
    onnx, sk = ask(both, "GET", "/v2/models/flowers")
    assert onnx.json()["platform"].startswith("onnxruntime_")
    assert onnx.json()["parameters"]["runtime"] == "onnx"
    assert sk.json()["platform"].startswith("sklearn_")
    assert {k: v for k, v in onnx.json().items() if k != "platform"} == {
        k: v for k, v in sk.json().items() if k != "platform"
    }


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"petal_length": [2]}, id="an integer in a float column"),
        pytest.param({"sepal_size": ["enormous"]}, id="an unseen category"),
        pytest.param({"sepal_size": [None]}, id="a missing string"),
        pytest.param({"petal_width": [None]}, id="a missing number"),
        pytest.param({"petal_width": ["wide"]}, id="a string in a float column"),
        pytest.param({"sepal_size": [3.5]}, id="a number in a string column"),
    ],
)
def test_awkward_inputs_get_the_same_answer_or_the_same_refusal(both, change):
    row = {"sepal_width": [3.1], "petal_length": [4.4], "petal_width": [1.4],
           "sepal_size": ["medium"], **change}  # fmt: skip
    onnx, sk = ask(both, "POST", "/v1/models/flowers:predict",
                   json={"instances": [{k: v[0] for k, v in row.items()}]})  # fmt: skip
    assert onnx.status_code == sk.status_code, (onnx.text, sk.text)
    assert onnx.json() == sk.json()


def test_a_missing_column_is_the_same_400(both):
    onnx, sk = ask(both, "POST", "/v1/models/flowers:predict",
                   json={"instances": [{"sepal_width": 3.1, "petal_length": 4.4}]})  # fmt: skip
    assert onnx.status_code == sk.status_code == 400
    assert onnx.json() == sk.json()


def test_a_changed_graph_is_refused_before_loading(store: Path, tmp_path: Path):
    root = tmp_path / "models"
    shutil.copytree(store, root)
    graph = root / "flowers" / "1" / COMPILED
    graph.write_bytes(graph.read_bytes() + b"\0")
    with run_server(root, model_name="forest", models="flowers") as server, server.client() as c:
        answer = c.get("/v2/models/flowers/ready")
        assert c.get("/v2/models/forest/ready").status_code == 200  # the others serve
    assert answer.status_code == 503
    assert "model.onnx sha256" in answer.json()["error"]
    assert "does not match the manifest" in answer.json()["error"]


def double(x: np.ndarray) -> np.ndarray:
    return x * 2


def test_a_pipeline_that_does_not_convert_is_published_with_scikit_learn(tmp_path: Path):
    x, y = load_iris(return_X_y=True)
    pipe = make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=500)).fit(x, y)
    m = publish(pipe, "doubled", model_dir=tmp_path)
    assert (m.runtime, m.compiled) == ("sklearn", None)
    assert sorted(p.name for p in (tmp_path / "doubled" / "1").iterdir()) == [
        "manifest.json", "model.joblib"
    ]  # fmt: skip
    with pytest.raises(InvalidModel, match=r"cannot be served compiled: convert failed: "
                       r"skl2onnx cannot convert it .*FunctionTransformer"):  # fmt: skip
        publish(pipe, "doubled", model_dir=tmp_path, runtime="onnx")
    assert ModelStore(tmp_path).versions("doubled") == ["1"]  # nothing half-written


def test_the_cli_says_which_runtime_and_why(tmp_path: Path):
    x, y = load_iris(return_X_y=True)
    path = tmp_path / "doubled.joblib"
    joblib.dump(make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=500))
                .fit(x, y), path)  # fmt: skip
    result = CliRunner().invoke(app, ["publish", str(path), "--name", "doubled",
                                      "--model-dir", str(tmp_path / "models")])  # fmt: skip
    said = " ".join(result.output.split())
    assert result.exit_code == 0, said
    assert "sklearn (not compiled: convert failed: skl2onnx cannot convert it" in said
    pipe, x_train, x_test, y_test = flowers.train()
    joblib.dump(pipe, tmp_path / "flowers.joblib")
    x_train.head().to_csv(tmp_path / "sample.csv", index=False)
    x_test.assign(species=y_test).to_csv(tmp_path / "holdout.csv", index=False)
    result = CliRunner().invoke(app, [
        "publish", str(tmp_path / "flowers.joblib"), "--name", "flowers", "--sample",
        str(tmp_path / "sample.csv"), "--holdout", str(tmp_path / "holdout.csv"), "--target",
        "species", "--model-dir", str(tmp_path / "models")])  # fmt: skip
    said = " ".join(result.output.split())
    assert result.exit_code == 0, said
    assert "onnx: verified on 43 rows, largest difference" in said
    manifest = json.loads((tmp_path / "models" / "flowers" / "1" / "manifest.json").read_text())
    assert manifest["runtime"] == "onnx"


def test_a_linear_model_keeps_its_exact_formula(tmp_path: Path):
    x, y = load_iris(return_X_y=True)
    m = publish(LogisticRegression(max_iter=500).fit(x, y), "iris", model_dir=tmp_path)
    assert m.runtime == "sklearn"  # the server's formula: faster, and bit for bit
    compiled = publish(LogisticRegression(max_iter=500).fit(x[::2], y[::2]), "iris",
                       model_dir=tmp_path, runtime="onnx")  # fmt: skip
    assert compiled.runtime == "onnx"


def test_binary_tensors_from_a_stock_triton_client_get_the_same_answers(both):
    rows = flowers.train()[2].head(16)
    answers = []
    for server in both:
        inputs = []
        for name in rows.columns:
            datatype = "BYTES" if name == "sepal_size" else "FP64"
            tensor = triton.InferInput(name, [len(rows)], datatype)
            tensor.set_data_from_numpy(
                rows[name].to_numpy().astype(object if datatype == "BYTES" else np.float64)
            )
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(n) for n in ("predict", "predict_proba")]
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        answers.append(client.infer("flowers", inputs, outputs=outputs))
    onnx, sk = answers
    assert onnx.as_numpy("predict").tolist() == sk.as_numpy("predict").tolist()
    np.testing.assert_allclose(onnx.as_numpy("predict_proba"), sk.as_numpy("predict_proba"),
                               atol=1e-3)  # fmt: skip


def test_an_estimator_over_a_frame_of_numbers_takes_them_as_one_tensor(tmp_path: Path):
    x, y = load_iris(return_X_y=True, as_frame=True)
    m = publish(GaussianNB().fit(x, y), "bayes", model_dir=tmp_path, sample=x.head(),
                holdout=(x, y))  # fmt: skip
    assert m.runtime == "onnx" and m.compiled is not None and m.compiled.stacked
    rows = x.iloc[::10].to_dict(orient="records")
    servers = [run_server(tmp_path, model_name="bayes", runtime=r) for r in ("auto", "sklearn")]
    with servers[0] as onnx, servers[1] as sk:
        a, b = ask((onnx, sk), "POST", "/v1/models/bayes:predict", json={"instances": rows})
    assert a.status_code == b.status_code == 200 and a.json() == b.json()


@pytest.mark.parametrize(
    "model",
    [
        make_pipeline(StandardScaler(), HistGradientBoostingRegressor(max_iter=30)),
        GradientBoostingRegressor(n_estimators=30),
        RandomForestRegressor(20, random_state=0),
        AdaBoostRegressor(n_estimators=10, random_state=0),
        BaggingRegressor(n_estimators=5, random_state=0),
    ],
    ids=["histogram-boosting", "gradient-boosting", "forest", "adaboost", "bagging"],
)
def test_tree_regressors_compile(tmp_path: Path, model):
    """onnxruntime's tree ensembles answer float32: the features are cast to float32 just
    before the trees, and the graph's answers checked as any other's. Boosting and bagging
    of trees were not cast, and onnxruntime refused their graphs."""
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    m = publish(model.fit(x[:300], y[:300]), "trees", model_dir=tmp_path, sample=x.head(),
                holdout=(x[300:], y[300:]))  # fmt: skip
    assert m.runtime == "onnx" and m.compiled is not None
    assert m.compiled.max_difference <= m.compiled.tolerance


def test_histogram_boosting_over_columns_named_as_people_name_them(tmp_path: Path):
    """Columns such as "petal length (cm)" are graph inputs skl2onnx renames: the server feeds
    them by position, and answers as scikit-learn does."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    model = make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=30))
    m = publish(model.fit(x, y), "hgb", model_dir=tmp_path, sample=x.head(), holdout=(x, y))
    assert m.runtime == "onnx" and m.compiled is not None and not m.compiled.stacked
    rows = {"instances": x.iloc[::10].to_dict(orient="records")}
    servers = [run_server(tmp_path, model_name="hgb", runtime=r) for r in ("auto", "sklearn")]
    with servers[0] as onnx, servers[1] as sk:
        a, b = ask((onnx, sk), "POST", "/v1/models/hgb:predict", json=rows)
        assert a.status_code == b.status_code == 200 and a.json() == b.json()
        a, b = ask((onnx, sk), "POST", "/v2/models/hgb/infer", json=by_column(x.iloc[::10], []))
        assert a.status_code == b.status_code == 200, a.text
        same_answers(a.json(), b.json())


def test_graphs_that_answer_otherwise_are_not_kept(tmp_path: Path):
    """skl2onnx converts this classifier, but its graph picks another class on some rows:
    verification catches it, and the version is published with scikit-learn."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    model = SGDClassifier(loss="log_loss", random_state=0).fit(x, y)
    plan_ = plan(model, "sgd", ModelStore(tmp_path), sample=x.head(), holdout=(x, y))
    assert plan_.compilation is None
    said = r"not compiled: verify failed: predict differs on \d+ of 155 rows \(e\.g\. row \d+: "
    assert re.match(said + r".* compiled, .* from the estimator\)", plan_.not_compiled)


SLIM = Path(__file__).parent / "slim"  # scikit-learn, scipy, pandas and joblib cannot import


@pytest.fixture(scope="module")
def slim(store: Path) -> Iterator[Server]:
    """The store served as the slim image serves it: compiled versions only, by a Python that
    has no scikit-learn, scipy, pandas or joblib."""
    with run_server(store, python_path=SLIM, runtime="onnx", model_name="flowers") as server:
        yield server


def test_the_slim_server_answers_every_route_as_the_full_one(both, slim):
    full = both[0]  # the same graphs, on the image that has scikit-learn too
    rows = flowers.train()[2].head(8).reset_index(drop=True)
    for method, path, body in [
        ("POST", "/v2/models/flowers/infer", by_column(rows, [])),
        ("POST", "/v1/models/flowers:predict", {"instances": rows.to_dict(orient="records")}),
        ("POST", "/predict", {"instances": rows.to_dict(orient="records")}),
        ("GET", "/v2/models/flowers", None),
        ("POST", "/v1/models/flowers:predict", {"instances": [{"sepal_width": 3.1}]}),
        ("POST", "/v1/models/flowers:predict", {"instances": [{
            "sepal_width": 3.1, "petal_length": 4.4, "petal_width": "wide",
            "sepal_size": "medium"}]}),
    ]:  # fmt: skip
        ours, theirs = ask((slim, full), method, path, json=body)
        assert ours.status_code == theirs.status_code, (path, ours.text)
        assert ours.json() == theirs.json(), path
    assert "ModuleNotFoundError" not in slim.log()


def test_the_slim_server_refuses_a_version_that_runs_on_scikit_learn(store: Path, tmp_path: Path):
    root = tmp_path / "models"
    shutil.copytree(store, root)
    x, y = load_iris(return_X_y=True)
    publish(GaussianNB().fit(x, y), "bayes", model_dir=root, runtime="sklearn", holdout=(x, y))
    with run_server(root, python_path=SLIM, runtime="onnx", model_name="flowers",
                    models="bayes") as server, server.client() as c:  # fmt: skip
        refused = c.get("/v2/models/bayes/ready")
        assert c.get("/v2/models/flowers/ready").status_code == 200  # the others serve
    assert refused.status_code == 503
    assert "bayes/1 runs on scikit-learn" in refused.json()["error"]
    assert "serves compiled versions only" in refused.json()["error"]
    with run_server(root, ready=False, python_path=SLIM, runtime="onnx",
                    model_name="bayes") as alone:  # fmt: skip
        assert alone.process.wait(timeout=30) != 0
    assert "publish it again with --runtime onnx" in alone.log()


def test_a_column_only_pandas_can_check_is_a_sentence_on_the_slim_server(tmp_path: Path):
    """A column of a pandas extension dtype ("string") is checked by pandas: the slim image,
    which has none, does not serve that version, says why, and serves the others."""
    pipe, x_train, _, _ = flowers.train()
    typed = x_train.astype({"sepal_size": "string"})
    pipe.fit(typed, pipe.predict(x_train))
    publish(pipe, "typed", model_dir=tmp_path / "models", sample=typed.head())
    publish(flowers.train()[0], "flowers", model_dir=tmp_path / "models", sample=x_train.head())
    assert ModelStore(tmp_path / "models").manifest("typed", "1").runtime == "onnx"
    served = run_server(tmp_path / "models", python_path=SLIM, runtime="onnx",
                        model_name="flowers", models="typed")  # fmt: skip
    with served as server, server.client() as c:
        refused = c.get("/v2/models/typed/ready")
        assert c.get("/v2/models/flowers/ready").status_code == 200
    assert refused.status_code == 503
    assert "the pandas dtype 'string', which only an image with pandas" in refused.json()["error"]


def test_a_linear_model_without_a_formula_on_the_server_is_compiled(tmp_path: Path):
    """Publishing kept every LinearRegression, Ridge and LogisticRegression on scikit-learn,
    saying the server evaluates its formula; it has none for a binary logistic regression
    or a model fitted on a DataFrame, which then ran through scikit-learn's `predict`."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    binary = publish(LogisticRegression(max_iter=500).fit(x.to_numpy(), y % 2), "binary",
                     model_dir=tmp_path)  # fmt: skip
    by_column = publish(LogisticRegression(max_iter=500).fit(x, y), "by-column",
                        model_dir=tmp_path, sample=x.head())  # fmt: skip
    assert binary.runtime == "onnx" and by_column.runtime == "onnx"


def test_one_hot_and_scaling_then_a_logistic_regression_compiles(tmp_path: Path):
    """The most common tabular classifier: skl2onnx typed the encoded columns float32 while
    computing float64, and onnxruntime refused the graph; the features are now cast to
    float64 before the model, and every output is checked as any other's."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    frame = x.assign(size=np.where(x.iloc[:, 0] > 5.5, "large", "small"))
    encode = ColumnTransformer([("size", OneHotEncoder(), ["size"]),
                                ("numbers", StandardScaler(), list(x.columns))])  # fmt: skip
    model = make_pipeline(encode, LogisticRegression(max_iter=500)).fit(frame, y)
    m = publish(model, "sized", model_dir=tmp_path, sample=frame.head(), holdout=(frame, y))
    assert m.runtime == "onnx" and m.compiled is not None, m
    assert m.compiled.rows == 155 and m.compiled.max_difference < 1e-9
    assert [o.name for o in m.outputs] == ["predict", "predict_proba", "decision_function"]


def test_a_classifier_of_booleans_compiles_and_answers_booleans(tmp_path: Path):
    """A pandas target column of booleans: the graph answers its labels as 0 and 1, so
    verification refused every such graph ("0 compiled, False from the estimator")."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y == 2)
    m = publish(model, "virginica", model_dir=tmp_path, sample=x.head(), holdout=(x, y == 2))
    assert m.runtime == "onnx" and m.outputs[0].datatype == "BOOL"
    rows = x.iloc[::15]
    servers = [run_server(tmp_path, model_name="virginica", runtime=r) for r in ("auto", "sklearn")]
    with servers[0] as onnx, servers[1] as sk:
        body = by_column(rows, ["predict", "predict_proba"])
        a, b = ask((onnx, sk), "POST", "/v2/models/virginica/infer", json=body)
    assert a.status_code == b.status_code == 200, a.text
    assert a.json()["outputs"][0]["data"] == model.predict(rows).tolist()
    same_answers(a.json(), b.json())


def test_a_frame_of_numbers_whose_graph_fails_per_column_is_compiled_as_one_tensor(
    tmp_path: Path,
):
    """KBinsDiscretizer converts with one input per column, then indexes its features in the
    first: onnxruntime failed at run and the version fell back to scikit-learn."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    binned = make_pipeline(KBinsDiscretizer(n_bins=3, encode="ordinal"), LogisticRegression())
    m = publish(binned.fit(x, y), "binned", model_dir=tmp_path, sample=x.head(), holdout=(x, y))
    assert m.runtime == "onnx" and m.compiled is not None and m.compiled.stacked


def test_a_graph_that_fails_to_run_raises_without_onnxruntime_printing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    """The failure is raised (verification prints its reason in the table); onnxruntime also
    printed its own red error line to the terminal of whoever published."""
    from onnx import TensorProto, helper

    from mlscale.service.runtime.compiled import session

    rows = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    third = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    extract = helper.make_node("ArrayFeatureExtractor", ["x", "index"], ["y"], domain="ai.onnx.ml")
    index = helper.make_tensor("index", TensorProto.INT64, [1], [2])  # out of range for [N, 1]
    graph = helper.make_graph([extract], "third", [rows], [third], initializer=[index])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets)
    (tmp_path / "third.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(Exception, match="index is out of range"):
        session(tmp_path / "third.onnx").run(None, {"x": np.zeros((1, 1), dtype=np.float32)})
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "model",
    [
        make_pipeline(StandardScaler(), LinearSVC()),
        RidgeClassifier(),
        make_pipeline(StandardScaler(), PolynomialFeatures(2), LogisticRegression(max_iter=500)),
        make_pipeline(PolynomialFeatures(2), Ridge()),
        VotingClassifier([("linear", LogisticRegression(max_iter=500)), ("bayes", GaussianNB())]),
        VotingClassifier(
            [("linear", LogisticRegression(max_iter=500)), ("bayes", GaussianNB())],
            voting="soft",
            weights=[2, 1],
        ),
    ],
    ids=[
        "linear-svc",
        "ridge-classifier",
        "polynomial-logistic",
        "polynomial-ridge",
        "hard-vote",
        "weighted-soft-vote",
    ],
)
def test_common_pipelines_compile_and_answer_as_scikit_learn(tmp_path: Path, model):
    """skl2onnx refused `zipmap` for a LinearSVC, and converts it and a RidgeClassifier to
    float64 graphs only answering raw scores; it typed PolynomialFeatures' bias column float32
    beside float64 products, a graph onnxruntime refused; it refused a soft vote's default
    `flatten_transform`, and took its weights, a list, for an array; and a hard vote has no
    raw scores to ask for. All fell back to scikit-learn."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    target = x.iloc[:, 0] if isinstance(model[-1] if hasattr(model, "steps") else model,
                                        Ridge) else y  # fmt: skip
    m = publish(model.fit(x, target), "linear", model_dir=tmp_path, sample=x.head(),
                holdout=(x, target))  # fmt: skip
    assert m.runtime == "onnx" and m.compiled is not None, m
    outputs = [o.name for o in m.outputs]
    servers = [run_server(tmp_path, model_name="linear", runtime=r) for r in ("auto", "sklearn")]
    with servers[0] as onnx, servers[1] as sk:
        body = by_column(x.iloc[::7], outputs)
        a, b = ask((onnx, sk), "POST", "/v2/models/linear/infer", json=body)
    assert a.status_code == b.status_code == 200, a.text
    assert a.json()["outputs"][0]["data"] == pytest.approx(model.predict(x.iloc[::7]).tolist())
    same_answers(a.json(), b.json())


@pytest.mark.parametrize("final", [LogisticRegression(max_iter=500),
                                   RandomForestClassifier(20, random_state=0)],
                         ids=["logistic", "forest"])  # fmt: skip
def test_imputed_numbers_and_strings_compile_and_answer_nulls_as_scikit_learn(
    tmp_path: Path, final
):
    """The usual pipeline of a table with holes: median-imputed, scaled numbers and
    most-frequent-imputed, one-hot strings. skl2onnx took the string imputer's NaN marker
    for a number ("could not convert string to float"), and its number imputer runs on
    float32 only in onnxruntime: every such pipeline fell back to scikit-learn. A missing
    string is imputed; an empty one is a string, on either runtime."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    x = x.assign(size=np.where(x.iloc[:, 0] > 5.8, "big", "small"))
    x.iloc[::7, 1] = np.nan
    x.loc[3::11, "size"] = None
    numbers = list(x.columns[:4])
    encode = ColumnTransformer([
        ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
        ("size", make_pipeline(SimpleImputer(strategy="most_frequent"),
                               OneHotEncoder(handle_unknown="ignore")), ["size"]),
    ])  # fmt: skip
    model = make_pipeline(encode, final).fit(x, y)
    m = publish(model, "holes", model_dir=tmp_path, sample=x.head(), holdout=(x, y))
    assert m.runtime == "onnx" and m.compiled is not None, m
    rows = x.iloc[[0, 50, 100]].copy()
    rows.iloc[0, 1], rows.iloc[1, 4], rows.iloc[2, 4] = np.nan, None, ""
    body = {
        "inputs": [{"name": n, "shape": [3], "datatype": "BYTES" if n == "size" else "FP64",
                    "data": [None if v is None or v != v else v for v in rows[n]]}
                   for n in rows.columns],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }  # fmt: skip
    servers = [run_server(tmp_path, model_name="holes", runtime=r) for r in ("auto", "sklearn")]
    with servers[0] as onnx, servers[1] as sk:
        a, b = ask((onnx, sk), "POST", "/v2/models/holes/infer", json=body)
    assert a.status_code == b.status_code == 200, a.text
    proba = a.json()["outputs"][1]["data"]
    assert proba == pytest.approx(model.predict_proba(rows).ravel().tolist(), abs=1e-6)
    assert max(proba) <= 1.0  # a forest's float32 shares summed to 1.0000001
    same_answers(a.json(), b.json())
