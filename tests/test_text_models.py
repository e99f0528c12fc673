"""Text models, as users bring them: a pipeline that starts with a text vectorizer takes one
document per row. Published, served over every route and checked like any other model."""

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import orjson
import pandas as pd
import pytest
import tritonclient.http as triton
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mlscale.service.artifacts.manifest import Manifest
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.codecs.protocol import decode_infer_request, decode_instances
from mlscale.service.errors import InvalidInput, InvalidModel
from mlscale.service.publish import plan, publish
from tests.conftest import Server, run_server
from tests.helpers import cli

REVIEWS = ["a good film", "bad acting", "great plot", "awful, dull and long", "nice", "terrible",
           "I loved it", "a waste of time", "wonderful cast", "boring"] * 3  # fmt: skip
SENTIMENT = ["pos", "neg"] * 15
ASKED = ["good acting", "dull", "", "a wonderful, great film", "terrible plot"]


def documents(data: list, shape: list[int] | None = None, datatype: object = "BYTES") -> bytes:
    tensor = {"name": "input-0", "shape": shape or [len(data)], "datatype": datatype, "data": data}
    return orjson.dumps({"inputs": [tensor], "outputs": [{"name": "predict"},
                                                       {"name": "predict_proba"}]})  # fmt: skip


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Pipeline, Path]:
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(REVIEWS, SENTIMENT)
    store = tmp_path_factory.mktemp("text") / "models"
    manifest = publish(pipe, "reviews", model_dir=store, holdout=(REVIEWS, SENTIMENT))
    return manifest, pipe, store


@pytest.fixture(scope="module")
def server(reviews) -> Iterator[Server]:
    with run_server(reviews[2], model_name="reviews", batch_max_wait_ms="5") as running:
        yield running


def test_a_text_pipeline_takes_one_document_per_row(reviews):
    manifest = reviews[0]
    assert [(s.name, s.datatype, s.shape) for s in manifest.inputs] == [("input-0", "BYTES", [-1])]
    assert manifest.labels == ["neg", "pos"] and manifest.metrics["accuracy"] == 1.0
    assert [s.name for s in manifest.outputs] == ["predict", "predict_proba", "decision_function"]
    assert manifest.runtime == "sklearn" and manifest.columns is None and manifest.takes_text


def test_a_text_model_is_not_compiled_and_says_why(tmp_path: Path):
    pipe = make_pipeline(HashingVectorizer(), Ridge()).fit(REVIEWS, np.arange(30.0))
    checked = plan(pipe, "scores", ModelStore(tmp_path))
    assert checked.not_compiled == (
        "not compiled: mlscale compiles models that take numbers or columns, not text"
    )
    assert publish(pipe, "scores", model_dir=tmp_path).runtime == "sklearn"
    with pytest.raises(InvalidModel, match=r"cannot be served compiled: .* not text"):
        publish(pipe, "scores", model_dir=tmp_path, runtime="onnx")
    assert ModelStore(tmp_path).versions("scores") == ["1"]


def test_a_text_column_among_others_is_not_compiled_and_says_why(tmp_path: Path):
    """A TfidfVectorizer on one column of a ColumnTransformer: its graph failed to load here
    (onnxruntime's lowercasing wants the en_US.UTF-8 locale), with a page of onnxruntime's
    message; where that locale exists, it would verify on the training rows and still
    tokenize and lowercase other text otherwise than scikit-learn."""
    frame = pd.DataFrame({"review": REVIEWS, "stars": np.arange(30.0) % 5})
    encode = ColumnTransformer([("text", TfidfVectorizer(), "review"),
                                ("stars", StandardScaler(), ["stars"])])  # fmt: skip
    pipe = make_pipeline(encode, LogisticRegression()).fit(frame, SENTIMENT)
    checked = plan(pipe, "mixed", ModelStore(tmp_path), sample=frame.head())
    assert checked.compilation is None
    assert checked.not_compiled == (
        "not compiled: convert failed: a step reads text, which graphs tokenize and lowercase "
        "otherwise than scikit-learn on text no verification row holds"
    )


def test_a_vectorizer_that_reads_files_is_refused(tmp_path: Path):
    """Its documents would be paths: a request could make the server read any file."""
    files = []
    for i, text in enumerate(REVIEWS):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(text)
    pipe = make_pipeline(TfidfVectorizer(input="filename"), LogisticRegression())
    pipe.fit([str(f) for f in files], SENTIMENT)
    with pytest.raises(InvalidModel, match=r"reads documents from files \(input='filename'\)"):
        publish(pipe, "files", model_dir=tmp_path / "models")
    assert not (tmp_path / "models" / "files").exists()


@pytest.mark.parametrize(
    "body",
    [documents(ASKED), documents([[d] for d in ASKED], [len(ASKED), 1])],
    ids=["flat", "nested"],
)
def test_documents_decode_as_the_vectorizer_takes_them(reviews, body: bytes):
    manifest, pipe, _ = reviews
    x = decode_infer_request(body, manifest).x
    assert isinstance(x, np.ndarray) and x.dtype == object and x.tolist() == ASKED
    np.testing.assert_array_equal(pipe.predict(x), pipe.predict(ASKED))
    instances = decode_instances(orjson.dumps({"instances": ASKED}), manifest)
    assert isinstance(instances, np.ndarray) and instances.tolist() == ASKED


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (documents([1.5]), "each document must be a string"),
        (documents(["ok", None]), "each document must be a string"),
        (documents(["a"], datatype="FP64"), "this model takes text: send datatype BYTES"),
        (documents(["a"], datatype=["BYTES"]), "this model takes text: send datatype BYTES"),
        (documents(["a", "b"], [1, 2]), "one document per row, shape [N], not [1, 2]"),
        (documents(["a", "b"], [3]), "shape [3] needs 3 documents, got 2"),
        (documents([], [0]), "empty batch"),
        (documents({"a": 1}), "data must be a list of strings"),  # type: ignore[arg-type]
        (documents([["a", "b"]], [1, 1]), "each document must be a string"),
    ],
)
def test_what_is_not_a_document_gets_400(reviews, body: bytes, text: str):
    with pytest.raises(InvalidInput, match=re.escape(text)):
        decode_infer_request(body, reviews[0])


def test_every_route_answers_what_the_pipeline_predicts(reviews, server: Server):
    _, pipe, _ = reviews
    expected, proba = pipe.predict(ASKED).tolist(), pipe.predict_proba(ASKED)
    v2 = httpx.post(server.url + "/v2/models/reviews/infer", content=documents(ASKED),
                    headers={"content-type": "application/json"}).json()  # fmt: skip
    assert v2["outputs"][0] == {"name": "predict", "datatype": "BYTES", "shape": [len(ASKED)],
                                "data": expected}  # fmt: skip
    np.testing.assert_allclose(np.reshape(v2["outputs"][1]["data"], proba.shape), proba)
    for path in ("/v1/models/reviews:predict", "/predict"):
        v1 = httpx.post(server.url + path, json={"instances": ASKED}).json()
        assert v1["predictions"] == expected, path
    # A stock Triton client sends BYTES as binary data, and asks for binary outputs.
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("input-0", [len(ASKED)], "BYTES")
    tensor.set_data_from_numpy(np.array(ASKED, dtype=object))
    answer = client.infer("reviews", [tensor]).as_numpy("predict")
    assert [b.decode() for b in answer] == expected


def test_concurrent_requests_batched_get_their_own_answers(reviews, server: Server):
    _, pipe, _ = reviews
    rng = np.random.default_rng(4)
    asked = [[str(w) for w in rng.choice(REVIEWS + ASKED, size=rng.integers(1, 6))]
             for _ in range(40)]  # fmt: skip

    async def send_all() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=server.url) as http:
            answers = await asyncio.gather(*[
                http.post("/v2/models/reviews/infer", content=documents(a),
                          headers={"content-type": "application/json"})
                for a in asked])  # fmt: skip
        return [a.json()["outputs"][0]["data"] for a in answers]

    assert asyncio.run(send_all()) == [pipe.predict(a).tolist() for a in asked]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'mlscale_predictions_total{label="pos",model="reviews",version="1"}' in metrics


def test_the_cli_publishes_from_csv_and_asks_in_text(reviews, server: Server, tmp_path: Path):
    _, pipe, _ = reviews
    joblib.dump(pipe, tmp_path / "reviews.joblib")
    holdout = pd.DataFrame({"review": REVIEWS, "sentiment": SENTIMENT})
    holdout.to_csv(tmp_path / "test.csv", index=False)
    code, out = cli("publish", str(tmp_path / "reviews.joblib"), "--name", "reviews",
                    "--holdout", str(tmp_path / "test.csv"), "--target", "sentiment",
                    "--model-dir", str(tmp_path / "models"))  # fmt: skip
    assert code == 0 and "accuracy=1" in out and "BYTES [-1]" in out, out
    code, out = cli("infer", "reviews", '["a great film", "dull"]', "--url", server.url)
    assert code == 0 and '"data": ["pos", "neg"]' in out, out
    code, out = cli("check", "reviews", "--url", server.url)
    assert code == 0 and "OK reviews version 1" in out, out
