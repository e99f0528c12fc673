"""Models trained outside the project, as a new user brings them: a regression pipeline with
imputing, scaling and an integer column, published and queried the way user code sends rows
(`df.to_numpy().tolist()` makes every number a float). Each test here was a defect first."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from mlscale.service import contract
from mlscale.service.artifacts.manifest import Manifest
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.codecs.columns import decode_instances
from mlscale.service.codecs.protocol import decode_infer_request
from mlscale.service.errors import InvalidInput, InvalidModel
from mlscale.service.publish import publish
from mlscale.service.settings import BatchingSettings, ModelSettings, ServerSettings
from tests.conftest import free_port, run_server
from tests.helpers import Doubled, FirstTwo, cli


def diabetes_frame() -> tuple[pd.DataFrame, pd.Series]:
    x, y = load_diabetes(return_X_y=True, as_frame=True, scaled=False)
    x = x[["age", "bmi", "bp"]].assign(age=lambda f: f["age"].astype("int64"))
    x["smoker"] = np.where(x["bmi"] > 27, "yes", "no")
    return x, y


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Pipeline, Path]:
    x, y = diabetes_frame()
    numbers = make_pipeline(SimpleImputer(), StandardScaler())
    pipe = make_pipeline(
        ColumnTransformer(
            [("num", numbers, ["age", "bmi", "bp"]), ("cat", OneHotEncoder(), ["smoker"])]
        ),
        Ridge(),
    ).fit(x, y)
    store = tmp_path_factory.mktemp("own") / "models"
    manifest = publish(pipe, "diabetes", model_dir=store, sample=x.head())
    return manifest, pipe, store


def table(rows: list[list], datatype: Any = "BYTES", name: Any = "input-0") -> bytes:
    tensor = {"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": rows}
    return orjson.dumps({"inputs": [tensor]})


def columns(**data: tuple[Any, list]) -> bytes:
    inputs = [
        {"name": n, "shape": [len(values)], "datatype": datatype, "data": values}
        for n, (datatype, values) in data.items()
    ]
    return orjson.dumps({"inputs": inputs})


def test_the_integer_column_is_declared_int64(regression):
    manifest, _, _ = regression
    assert {s.name: s.datatype for s in manifest.inputs}["age"] == "INT64"


def test_whole_number_floats_fill_an_integer_column(regression):
    """`df.to_numpy().tolist()` sends 59.0 for an int column: exactly integral, accepted."""
    manifest, pipe, _ = regression
    x, _ = diabetes_frame()
    rows = x.head(3)
    body = columns(
        age=("FP64", [float(v) for v in rows["age"]]),
        bmi=("FP64", rows["bmi"].tolist()),
        bp=("FP64", rows["bp"].tolist()),
        smoker=("BYTES", rows["smoker"].tolist()),
    )
    frame = decode_infer_request(body, manifest).x.frame()
    assert isinstance(frame, pd.DataFrame) and frame["age"].dtype == np.int64
    np.testing.assert_array_equal(pipe.predict(frame), pipe.predict(rows))
    as_floats = x.head(3).astype(object).to_numpy().tolist()
    as_floats = [[float(r[0]), *r[1:]] for r in as_floats]
    frame = decode_infer_request(table(as_floats), manifest).x.frame()
    np.testing.assert_array_equal(pipe.predict(frame), pipe.predict(rows))


def test_a_pipeline_with_an_imputer_takes_a_missing_number(regression):
    """Published, the pipeline answered a row of NaN floats: null stays allowed (imputed)."""
    manifest, pipe, _ = regression
    assert manifest.columns is not None and manifest.columns.missing
    body = columns(age=("INT64", [50]), bmi=("FP64", [None]), bp=("FP64", [80.0]),
                   smoker=("BYTES", ["no"]))  # fmt: skip
    frame = decode_infer_request(body, manifest).x.frame()
    assert np.isnan(frame["bmi"][0]) and np.isfinite(pipe.predict(frame)).all()


@pytest.mark.parametrize(
    "age, text",
    [
        (59.5, "column 'age': expects whole numbers (59.5 is not); null is not allowed"),
        (None, "column 'age': expects whole numbers; null is not allowed"),
        (1e300, "column 'age': cannot be read as int64"),
    ],
)
def test_an_integer_column_refuses_fractions_and_nulls(regression, age, text):
    manifest, _, _ = regression
    body = columns(age=("FP64", [age]), bmi=("FP64", [30.1]), bp=("FP64", [80.0]),
                   smoker=("BYTES", ["no"]))  # fmt: skip
    with pytest.raises(InvalidInput) as caught:
        decode_infer_request(body, manifest)
    assert text in str(caught.value)


@pytest.mark.parametrize(
    "body, text",
    [
        (table([[59, 30.1, 80.0, "no"]], "FOO"), "unknown datatype 'FOO'"),
        (table([[59, 30.1, 80.0, "no"]], ["BYTES"]), "unknown datatype"),  # was a 500
        (table([[59, 30.1, 80.0, "no"]], name=["input-0"]), "each input needs a 'name'"),
        (
            columns(
                age=(["INT64"], [50]),
                bmi=("FP64", [30.1]),
                bp=("FP64", [80.0]),
                smoker=("BYTES", ["no"]),
            ),
            "input 'age': datatype ['INT64'] does not fit",
        ),
        (table([[59, 30.1, 80.0, "no"]], name="rows"), "unknown input 'rows'"),
        (table([["a", "b", "c", "d"]], "FP64"), "datatype FP64 holds numbers"),
        (table([[59, 30.1, 80.0, "no"]], "FP64"), "datatype FP64 holds numbers"),
        (table([[59, 30.1, 80.0, 1]], "INT64"), "'smoker' takes strings; send BYTES"),
        (table([[59, 30.1, 80.0, "no"]], "BOOL"), "column 'age' takes numbers"),
    ],
)
def test_one_table_tensor_is_checked_like_columns(regression, body, text):
    """One [N, columns] tensor: its name, its datatype and its values against the columns;
    a name or datatype that is not a string is refused too."""
    manifest, _, _ = regression
    with pytest.raises(InvalidInput) as caught:
        decode_infer_request(body, manifest)
    assert text in str(caught.value)


def test_a_numeric_table_serves_an_all_number_model(tmp_path: Path):
    x, y = diabetes_frame()
    x = x.drop(columns="smoker")
    pipe = make_pipeline(StandardScaler(), Ridge()).fit(x, y)
    manifest = publish(pipe, "numbers", model_dir=tmp_path, sample=x.head())
    rows = x.head(2)
    frame = decode_infer_request(table(rows.to_numpy().tolist(), "FP64"), manifest).x.frame()
    np.testing.assert_array_equal(pipe.predict(frame), pipe.predict(rows))


@pytest.mark.parametrize(
    ("rows", "reason"),
    [("[[1, 2", "not JSON"), ("5", "give a JSON list of rows"), ("[]", "give a JSON list"),
     ('{"age": 59}', "give a JSON list"), ("[[1, 2], [3]]", "of the same length"),
     ('[[1, 2], {"age": 59}]', "all lists or all objects")],
)  # fmt: skip
def test_infer_refuses_rows_it_cannot_send_in_a_sentence(rows: str, reason: str):
    """Each was a Python traceback (JSONDecodeError, TypeError, KeyError)."""
    code, out = cli("infer", "iris", rows, "--url", "http://127.0.0.1:9")
    assert code == 2 and "Invalid value for ROWS" in out and reason in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("args", "variables", "sentence"),
    [(["--port", "99999"], {}, "MLSCALE_PORT=99999: Input should be less than or equal to 65535"),
     ([], {"MLSCALE_LOG_LEVEL": "loud"}, "MLSCALE_LOG_LEVEL='loud': Input should be 'critical'"),
     ([], {"MLSCALE_BATCH_MAX_SIZE": "abc"}, "MLSCALE_BATCH_MAX_SIZE='abc': Input should be a "
      "valid integer")],
)  # fmt: skip
def test_serve_names_an_invalid_setting_in_a_sentence(
    monkeypatch: pytest.MonkeyPatch, args: list[str], variables: dict[str, str], sentence: str
):
    """pydantic's ValidationError, and logging's for an unknown log level (once uvicorn
    configured it), were tracebacks: in a pod, a value the chart passed."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code, out = cli("serve", "--model", "iris", *args)
    assert code == 2 and f"invalid setting {sentence}" in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize("command", [["infer", "iris", "[[1, 2, 3, 4]]"], ["check", "iris"]])
def test_a_server_address_that_is_not_a_url_is_refused(command: list[str]):
    code, out = cli(*command, "--url", "localhost:8080")
    assert code == 2 and "'localhost:8080' is not an http:// or https://" in out, out


def test_check_sends_every_column_of_a_multi_column_model(regression):
    """`helm test` runs `mlscale check`: it must pass for a user's multi-column model."""
    _, _, store = regression
    with run_server(store, model_name="diabetes") as server:
        with server.client() as c:
            example = c.get("/v2/models/diabetes").json()["parameters"]["example"]
        assert example == {"age": 59, "bmi": 32.1, "bp": 101.0, "smoker": "yes"}
        code, out = cli("check", "diabetes", "--url", server.url, "--expect-version", "1")
        assert code == 0 and "OK diabetes version 1 answered" in out, out
        # A mixed row travels as BYTES, one [N, columns] tensor in the model's order.
        code, out = cli("infer", "diabetes", '[[59, 32.1, 101.0, "yes"]]', "--url", server.url)
        assert code == 0 and '"model_name": "diabetes"' in out, out
        code, out = cli("check", "colour", "--url", server.url)
    assert code == 1 and "FAIL HTTP 404" in out and "model 'colour'" in out, out


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A store of three versions: 1 healthy, 2 with a truncated manifest, 3 with a changed
    artifact."""
    x, y = diabetes_frame()
    x = x.drop(columns="smoker")
    for alpha in (1.0, 2.0, 3.0):
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, y)
        publish(pipe, "numbers", model_dir=tmp_path, sample=x.head())
    manifest = tmp_path / "numbers" / "2" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    with (tmp_path / "numbers" / "3" / "model.joblib").open("ab") as f:
        f.write(b"changed")
    return tmp_path


def test_a_damaged_version_is_named_and_the_healthy_ones_listed(damaged: Path):
    before = {p: p.read_bytes() for p in damaged.rglob("*") if p.is_file()}
    code, out = cli("models", "--model-dir", str(damaged))
    assert code == 1, out
    assert "numbers │ 1 │ Pipeline" in out and "numbers │ 3 │ Pipeline" in out, out
    assert "numbers │ 2 │ damaged" in out and "1 damaged version (" in out, out
    assert f" {damaged}/numbers/2/manifest.json: Invalid JSON" in out, out
    code, out = cli("models", "--model-dir", str(damaged), "--verify")
    assert code == 1 and "2 damaged versions" in out, out
    assert " numbers/3: model.joblib sha256" in out and "does not match" in out, out
    assert "verified" in out and "numbers │ 3 │ damaged" in out, out
    assert before == {p: p.read_bytes() for p in damaged.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "version, reason", [("2", "Invalid JSON"), ("3", "does not match the manifest")]
)
def test_serving_a_damaged_version_says_why_in_one_sentence(damaged: Path, version, reason):
    env = {**os.environ, "MLSCALE_MODEL_DIR": str(damaged), "MLSCALE_PORT": str(free_port())}
    command = [sys.executable, "-m", "mlscale", "serve", "--model", "numbers",
               "--version", version]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert reason in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_healthy_version_serves_beside_damaged_ones(damaged: Path):
    """The operator's quality gate reads the store's versions: the damaged one is named apart."""
    with run_server(damaged, model_name="numbers", model_version="1") as server:
        body = httpx.get(server.url + contract.STORE_VERSIONS.format(name="numbers")).json()
    assert [v["version"] for v in body["versions"]] == ["1", "3"]
    assert [d["version"] for d in body["damaged"]] == ["2"]
    assert "Invalid JSON" in body["damaged"][0]["error"]


def iris_classifier() -> Pipeline:
    x, y = diabetes_frame()
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        x.drop(columns="smoker"), np.where(y > 140, "high", "low")
    )


def test_a_new_version_that_is_another_model_is_refused(tmp_path: Path):
    """A regressor published as a new version of a classifier's name would answer its
    clients with numbers instead of labels: refused, saying what changed."""
    x, y = diabetes_frame()
    numbers = x.drop(columns="smoker")
    publish(iris_classifier(), "risk", model_dir=tmp_path, sample=numbers.head())
    regressor = make_pipeline(StandardScaler(), Ridge()).fit(numbers, y)
    with pytest.raises(InvalidModel) as caught:
        publish(regressor, "risk", model_dir=tmp_path, sample=numbers.head())
    message = caught.value.message
    assert "risk/2 does not take or answer what risk/1 does" in message
    assert "outputs: removed ['predict_proba', 'decision_function']" in message
    assert "'predict' BYTES [-1] → FP64 [-1]" in message
    assert "task: classifier (labels high, low) → regressor" in message
    assert "--allow-signature-change" in message
    assert ModelStore(tmp_path).versions("risk") == ["1"]
    fewer = numbers.drop(columns="bp")
    with pytest.raises(InvalidModel, match=r"inputs: removed \['bp'\]"):
        publish(
            make_pipeline(StandardScaler(), LogisticRegression()).fit(fewer, y > 140),
            "risk", model_dir=tmp_path, sample=fewer.head(),
        )  # fmt: skip
    written = publish(regressor, "risk", model_dir=tmp_path, sample=numbers.head(),
                      allow_signature_change=True)  # fmt: skip
    assert written.version == "2" and written.labels == []


def test_publishing_an_identical_model_again_says_so(tmp_path: Path):
    model = iris_classifier()
    x, _ = diabetes_frame()
    publish(model, "risk", model_dir=tmp_path, sample=x.drop(columns="smoker").head())
    path, sample = tmp_path / "risk.joblib", tmp_path / "sample.csv"
    joblib.dump(model, path)
    x.drop(columns="smoker").head().to_csv(sample, index=False)
    code, out = cli("publish", str(path), "--name", "risk", "--sample", str(sample),
                    "--model-dir", str(tmp_path))  # fmt: skip
    assert code == 1 and "identical to risk/1 (sha256" in out and "nothing written" in out, out
    assert ModelStore(tmp_path).versions("risk") == ["1"]
    assert not [p for p in (tmp_path / "risk").iterdir() if p.name.startswith(".")]


def test_a_category_column_keeps_its_categories_through_a_csv_sample(tmp_path: Path):
    """A CSV cannot say a column was `category`: the categories come from the pipeline's
    fitted encoders, as Python's publish() takes them from the frame."""
    x, y = diabetes_frame()
    x["band"] = pd.Categorical(np.where(x["bmi"] > 27, "high", "low"), categories=["low", "high"])
    labels = np.where(y > 140, "worse", "better")
    encode = ColumnTransformer(
        [("cat", OrdinalEncoder(), ["smoker", "band"])], remainder="passthrough"
    )
    pipe = make_pipeline(encode, RandomForestClassifier(n_estimators=10, random_state=0))
    pipe.fit(x, labels)
    path, sample = tmp_path / "forest.joblib", tmp_path / "sample.csv"
    joblib.dump(pipe, path)
    x.head().to_csv(sample, index=False)
    store = tmp_path / "models"
    code, out = cli("publish", str(path), "--name", "forest", "--sample", str(sample),
                    "--model-dir", str(store))  # fmt: skip
    assert code == 0, out
    manifest = ModelStore(store).manifest("forest", "1")
    assert manifest.columns is not None
    assert manifest.columns.categories == {"smoker": ["no", "yes"], "band": ["high", "low"]}
    assert manifest.columns.dtypes["age"] == "int64"
    rows = x.head(5)
    body = orjson.dumps({"instances": rows.astype(object).to_dict(orient="records")},
                        option=orjson.OPT_SERIALIZE_NUMPY)  # fmt: skip
    frame = decode_instances(orjson.loads(body)["instances"], manifest).frame()
    assert isinstance(frame["band"].dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(pipe.predict(frame), pipe.predict(rows))


def test_serve_help_lists_every_setting_with_its_variable_and_default():
    code, out = cli("serve", "--help")
    assert code == 0
    for group in (ModelSettings, BatchingSettings, ServerSettings):
        prefix = group.model_config["env_prefix"]
        for name in group.model_fields:
            assert f"{prefix}{name}".upper() + "=" in out, name
    assert "MLSCALE_MAX_BODY_BYTES=8388608" in out and "MLSCALE_BATCH_MAX_SIZE=64" in out


def test_help_texts_keep_their_defaults_and_name_the_command():
    _, out = cli("package", "--help")
    assert "[default: (mlscale-model/NAME:VERSION)]" in out, out
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "mlscale", "loadtest", "--help"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert "Usage: mlscale loadtest [OPTIONS]" in done.stdout, done.stdout


@pytest.mark.parametrize("command", [["publish"], ["rollout", "canary"], ["train"], ["loadtest"]])
def test_help_paragraphs_are_wrapped_by_the_terminal_and_examples_keep_their_lines(command):
    """Typer kept the docstrings' line breaks, so a paragraph wrapped at the source's width
    came out ragged on an 80-column terminal: a short line at every break."""
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "mlscale", *command, "--help"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    description = done.stdout.split("╭")[0].splitlines()
    prose = [line.strip() for line in description if line.strip()][1:]
    examples = next((i for i, line in enumerate(prose) if line.startswith("Example")), len(prose))
    for line in prose[: examples - 1]:
        # a line the terminal broke is nearly full, unless a paragraph or sentence ends there
        assert len(line) > 60 or line.endswith((".", ":")), done.stdout
    if command == ["train"]:
        assert any(line.startswith("mlscale train --ensure 2") for line in prose), done.stdout
    if command == ["loadtest"]:  # an example's continued line keeps its place
        assert any(line.startswith("--canary-steps 1,5,25,50") for line in prose), done.stdout


def test_rejected_requests_are_logged_one_line_each_and_rate_limited(regression):
    _, _, store = regression
    bad = [
        ("POST", "/v2/models/diabetes/infer", b"{not json", 400, "malformed JSON"),
        ("POST", "/v2/models/colour/infer", b"{}", 404, "model 'colour'"),
        ("POST", "/v2/models/diabetes/infer", b"x" * 2000, 413, "MLSCALE_MAX_BODY_BYTES"),
        ("GET", "/v2/nowhere", b"", 404, "no such path"),
    ]
    with (
        run_server(store, model_name="diabetes", max_body_bytes="1000",
                   rejection_log_per_s="20") as server,
        server.client() as c,
    ):  # fmt: skip
        for method, path, body, status, _ in bad:
            assert c.request(method, path, content=body).status_code == status
        c.post("/v2/models/diabetes/infer", content=b"[]", headers={"content-type": "text/csv"})
        for method, path, _body, status, reason in bad:
            line = next(
                (ln for ln in server.log().splitlines() if f'"{method} {path}" {status} ' in ln), ""
            )
            assert reason in line and "127.0.0.1:" in line, server.log()
        assert (
            '"POST /v2/models/diabetes/infer" 415 send the body as application/json' in server.log()
        )
        for _ in range(200):  # far more than 20 a second: most are left out
            c.post("/v2/models/diabetes/infer", content=b"{not json")
        for _ in range(100):  # until a token is back: its line says how many were left out
            c.post("/v2/models/diabetes/infer", content=b"{not json")
            if "more rejections not logged" in server.log():
                break
        logged = server.log().count('"POST /v2/models/diabetes/infer" 400')
    assert "more rejections not logged" in server.log()
    assert logged < 100, logged


def test_python_publish_returns_the_manifest_and_shows_what_it_inferred(tmp_path: Path, capsys):
    x, y = diabetes_frame()
    numbers = x.drop(columns="smoker")
    pipe = make_pipeline(StandardScaler(), Ridge()).fit(numbers, y)
    manifest = publish(pipe, "numbers", model_dir=tmp_path, sample=numbers.head(),
                       holdout=(numbers, y), show=True)  # fmt: skip
    shown = " ".join(capsys.readouterr().out.split())
    assert manifest.version == "1" and set(manifest.metrics) == {"mse", "r2"}
    assert "numbers/1: Pipeline" in shown and "age INT64 [-1]" in shown and "r2=" in shown
    assert f"wrote {tmp_path}/numbers/1 sha256 {manifest.sha256[:12]}" in shown


def test_a_multi_output_classifier_publishes_and_serves(tmp_path: Path):
    """Its classes are one array per output, and scikit-learn's metrics take no two-column
    labels: publishing crashed on both (numpy's ValueError, not a sentence)."""
    x, y = load_iris(return_X_y=True)
    targets = np.c_[y, y % 2]
    model = MultiOutputClassifier(RandomForestClassifier(n_estimators=5, random_state=0))
    model.fit(x, targets)
    with pytest.raises(InvalidModel, match="the holdout's metrics cannot be computed"):
        publish(model, "species", model_dir=tmp_path, holdout=(x, targets))
    manifest = publish(model, "species", model_dir=tmp_path)
    assert manifest.labels == [] and manifest.version == "1"
    assert [(s.name, s.shape) for s in manifest.outputs] == [("predict", [-1, 2])]
    with run_server(tmp_path, model_name="species") as server, server.client() as c:
        answer = c.post("/v2/models/species/infer", json={"inputs": [
            {"name": "input-0", "shape": [2, 4], "datatype": "FP64",
             "data": x[[0, 100]].tolist()}]}).json()  # fmt: skip
    assert answer["outputs"][0]["shape"] == [2, 2]
    assert answer["outputs"][0]["data"] == model.predict(x[[0, 100]]).ravel().tolist()


def test_pandas_nullable_columns_publish_and_serve(tmp_path: Path):
    """Int64, Float64 and boolean columns (what `convert_dtypes()` and
    `dtype_backend="numpy_nullable"` make) crashed publishing with numpy's TypeError. A null
    there is pandas' NA: answered by a model that imputes it, a 400 from one that cannot."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    frame = pd.DataFrame({
        "visits": pd.array([None if i % 9 == 0 else i % 4 for i in range(len(x))], dtype="Int64"),
        "score": pd.array(x.iloc[:, 2], dtype="Float64"),
        "member": pd.array(x.iloc[:, 3] > 1, dtype="boolean"),
    })  # fmt: skip
    imputing = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)).fit(frame, y)
    strict = LogisticRegression(max_iter=500).fit(frame.fillna({"visits": 0}), y)
    published = [
        # A sample whose every row lacks a visit count: its first row is the example.
        publish(imputing, "imputing", model_dir=tmp_path, sample=frame.iloc[::9].head(3)),
        publish(strict, "strict", model_dir=tmp_path, sample=frame.iloc[1:5]),
    ]
    for manifest in published:
        assert [s.datatype for s in manifest.inputs] == ["INT64", "FP64", "BOOL"]
        assert manifest.runtime == "sklearn"  # a graph's input holds no NA
        assert manifest.columns is not None
    assert published[0].columns.missing and not published[1].columns.missing  # type: ignore[union-attr]
    assert published[0].columns.example == {"visits": None, "score": 1.4, "member": False}  # type: ignore[union-attr]
    rows = {"visits": [None, 3], "score": [1.4, None], "member": [None, True]}
    types = {"visits": "INT64", "score": "FP64", "member": "BOOL"}
    body = {"inputs": [{"name": n, "shape": [2], "datatype": t, "data": rows[n]}
                       for n, t in types.items()]}  # fmt: skip
    server = run_server(tmp_path, model_name="imputing", models="strict")
    with server as served, served.client() as c:
        answer = c.post("/v2/models/imputing/infer", json=body)
        refused = c.post("/v2/models/strict/infer", json=body)
        # Rows with booleans travel as BYTES from the CLI (as FP64 they were refused).
        code, out = cli("infer", "imputing", "[[null, 1.4, null], [3, null, true]]", "--url",
                        served.url)  # fmt: skip
        # Or as objects keyed by column: one input per column, each typed by its values.
        by_name = json.dumps([dict(zip(rows, r, strict=True)) for r in zip(*rows.values(),
                                                                        strict=True)])  # fmt: skip
        named_code, named = cli("infer", "imputing", by_name, "--url", served.url)
        whole = c.post("/v2/models/strict/infer", json={**body, "inputs": [
            {**body["inputs"][0], "data": [3.5, 1]}, *body["inputs"][1:]]})  # fmt: skip
    expected = imputing.predict(pd.DataFrame(rows).astype(frame.dtypes.to_dict()))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == expected.tolist()
    assert code == 0 and json.loads(out)["outputs"][0]["data"] == expected.tolist(), out
    assert named_code == 0 and json.loads(named)["outputs"] == json.loads(out)["outputs"], named
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("column 'visits': null is not allowed")
    assert whole.json() == {"error": "column 'visits': expects whole numbers (3.5 is not)"}


def test_an_unknown_category_is_refused_alone_with_a_422(tmp_path: Path):
    """An encoder fitted with handle_unknown="error" raises on a category it never saw: that
    was a 500, and failed every request batched with it. Its graph (onnxruntime's "Unknown
    Category") is refused the same way."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    frame = (
        x.iloc[:, :2]
        .set_axis(["length", "width"], axis=1)
        .assign(size=np.where(x.iloc[:, 0] > 5.5, "large", "small"))
    )
    encode = ColumnTransformer([("size", OneHotEncoder(handle_unknown="error"), ["size"])],
                               remainder="passthrough")  # fmt: skip
    model = make_pipeline(encode, LogisticRegression(max_iter=500)).fit(frame, y)
    assert publish(model, "sized", model_dir=tmp_path, sample=frame.head()).runtime == "onnx"

    def body(size: str) -> dict:
        return {"inputs": [
            {"name": "length", "shape": [1], "datatype": "FP64", "data": [5.1]},
            {"name": "width", "shape": [1], "datatype": "FP64", "data": [3.5]},
            {"name": "size", "shape": [1], "datatype": "BYTES", "data": [size]}]}  # fmt: skip

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url) as client:
            sizes = ["huge" if i % 5 == 0 else "small" for i in range(40)]
            return await asyncio.gather(*[
                client.post("/v2/models/sized/infer", json=body(s)) for s in sizes])  # fmt: skip

    expected = model.predict(frame.head(1).assign(size="small"))[0]
    refusals = {"sklearn": "Found unknown categories ['huge'] in column 0 during transform",
                "auto": "Unknown Category"}  # fmt: skip
    for runtime, refusal in refusals.items():
        with run_server(tmp_path, model_name="sized", runtime=runtime) as server:
            answers = asyncio.run(burst(server.url))
        assert [a.status_code for a in answers] == [422 if i % 5 == 0 else 200 for i in range(40)]
        error = answers[0].json()["error"]
        assert error.startswith("model 'sized' version '1' cannot answer this input: ")
        assert refusal in error, error
        assert {a.json()["outputs"][0]["data"][0] for a in answers[1:5]} == {expected}


@pytest.mark.parametrize("as_frame", [False, True], ids=["array", "frame"])
def test_a_pipeline_starting_with_a_transformer_of_ones_own_takes_what_the_sample_shows(
    tmp_path: Path, as_frame: bool
):
    """A transformer of one's own need not set `n_features_in_`, and a pipeline starting
    with one was refused ("does not say how many features it takes"). The sample's rows say
    it: an array's width, or a frame's columns."""
    x, y = load_iris(return_X_y=True, as_frame=as_frame)
    model = make_pipeline(Doubled(), LogisticRegression(max_iter=500)).fit(x, y)
    with pytest.raises(InvalidModel, match=r"give a few training rows as the sample"):
        publish(model, "own", model_dir=tmp_path)
    m = publish(model, "own", model_dir=tmp_path, sample=x[:5], holdout=(x, y))
    if as_frame:
        assert [spec.name for spec in m.inputs] == list(x.columns)
        body = {"instances": x.head(3).to_dict(orient="records")}
    else:
        assert [(spec.name, spec.shape) for spec in m.inputs] == [("input-0", [-1, 4])]
        body = {"instances": x[:3].tolist()}
    with run_server(tmp_path, model_name="own") as server, server.client() as client:
        answer = client.post("/v1/models/own:predict", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == model.predict(x[:3]).tolist()


def test_an_array_only_pipeline_published_with_a_csv_sample_takes_a_tensor(tmp_path: Path):
    """The CLI reads a CSV sample as columns; a pipeline of one's own that slices arrays by
    position cannot take a frame ("predict failed on a sample row"). A sample of numbers it
    takes only as an array gives the tensor's width instead."""
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(FirstTwo(), LogisticRegression(max_iter=500)).fit(x, y)
    joblib.dump(model, tmp_path / "sliced.joblib")
    pd.DataFrame(x[:5], columns=list("abcd")).to_csv(tmp_path / "sample.csv", index=False)
    code, out = cli("publish", str(tmp_path / "sliced.joblib"), "--name", "sliced",
                    "--sample", str(tmp_path / "sample.csv"), "--model-dir",
                    str(tmp_path / "store"))  # fmt: skip
    assert code == 0 and "input-0 FP64 [-1, 4]" in out, out
    with run_server(tmp_path / "store", model_name="sliced") as server, server.client() as c:
        answer = c.post("/v1/models/sliced:predict", json={"instances": x[:3].tolist()})
    assert (
        answer.status_code == 200 and answer.json()["predictions"] == model.predict(x[:3]).tolist()
    )


def test_a_model_whose_code_the_server_cannot_import_says_which_module(tmp_path: Path):
    """A class from a module of the trainer's that the server's image lacks: the server said
    `ModuleNotFoundError("No module named ...")` after a startup traceback. It now names
    the module and what to do; with the module on its path, it serves."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "house_rules.py").write_text(
        "class Halved:\n"
        "    def fit(self, x, y=None):\n        return self\n"
        "    def transform(self, x):\n        return x / 2\n"
        "    def get_params(self, deep=True):\n        return {}\n"
    )
    sys.path.insert(0, str(code))
    try:
        from house_rules import Halved  # type: ignore[import-not-found]

        x, y = load_iris(return_X_y=True)
        model = make_pipeline(Halved(), LogisticRegression(max_iter=500)).fit(x, y)
        publish(model, "ruled", model_dir=tmp_path / "store", sample=x[:5])
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("house_rules", None)
    with run_server(tmp_path / "store", model_name="ruled", ready=False) as server:
        assert server.process.wait(timeout=30) != 0
        log = server.log()
    assert "ruled/1 uses code from module 'house_rules', which this server cannot import" in log
    assert "Traceback" not in log
    serving = run_server(tmp_path / "store", model_name="ruled", python_path=code)
    with serving as server, server.client() as client:
        answer = client.post("/v1/models/ruled:predict", json={"instances": x[:2].tolist()})
    assert answer.status_code == 200, answer.text
