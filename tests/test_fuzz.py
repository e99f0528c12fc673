"""Property-based fuzzing from the server's own OpenAPI spec: no input may cause a 5xx.

Driven through schemathesis' Python API (its pytest plugin does not support pytest 9).
"""

import contextlib
import json
from pathlib import Path

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from examples import flowers
from mlscale.service.artifacts.manifest import Manifest
from mlscale.service.artifacts.store import ModelStore
from mlscale.service.codecs.protocol import decode_infer_request
from mlscale.service.errors import InvalidInput
from mlscale.service.publish import publish
from tests.conftest import run_server


def served(case: schemathesis.Case) -> schemathesis.Case:
    """Point a generated case at the served model, so bodies reach the decoders."""
    if case.path_parameters:
        case.path_parameters["name"] = "iris"
        if "version" in case.path_parameters:
            case.path_parameters["version"] = "1"
    return case


def test_no_generated_request_causes_a_server_error(model_dir: Path):
    # A small body limit so that oversized bodies are among the generated cases.
    with run_server(model_dir, model_name="iris", extra_versions="1",
                    max_body_bytes="4096") as server:  # fmt: skip
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12
        for operation in operations:

            @given(case=st.one_of(strategy := operation.as_strategy(), strategy.map(served)))
            @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
                      database=None, derandomize=True)  # fmt: skip
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=[not_a_server_error])

            check()

        # The fuzzer really reached the hot path (valid bodies are the conformance tests' job).
        text = httpx.get(server.url + "/metrics").text
        for code in ("400", "404"):  # bodies reached the decoders; unknown names were tried
            answered = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("mlscale_requests_total{")
                and 'endpoint="/v2/models/{name}/infer"' in line
                and f'code="{code}"' in line
            )
            assert answered > 0, f"no infer request was answered {code}"


# Any JSON value, small: what a client may put in any field of a body.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["name", "shape", "datatype", "data", "parameters"]


def mutated(body: dict, data: st.DataObject) -> dict:
    """`body` with one to three fields of its inputs, or the body's own, set to any JSON."""
    body = json.loads(json.dumps(body))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from([body, *body["inputs"]]))
        if where is body:
            key = data.draw(st.sampled_from(["inputs", "outputs", "parameters", "id"]))
            body[key] = data.draw(JSON)
            inputs = body.get("inputs")
            if type(inputs) is not list or not all(type(t) is dict for t in inputs):
                break  # no tensors left to change
        else:
            where[data.draw(st.sampled_from(FIELDS))] = data.draw(JSON)
    return body


@pytest.fixture(scope="module")
def manifests(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Manifest]:
    """A one-tensor model, a pipeline of typed columns (strings among them) and a text model."""
    pipe, x_train, _, _ = flowers.train()
    store = tmp_path_factory.mktemp("fuzz")
    columns = publish(pipe, "flowers", model_dir=store, sample=x_train.head(), runtime="sklearn")
    text = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(["good", "bad"], [1, 0])
    return {"iris": ModelStore(model_dir).manifest("iris", "1"), "flowers": columns,
            "reviews": publish(text, "reviews", model_dir=store)}  # fmt: skip


VALID = {
    "iris": {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                         "data": [5.1, 3.5, 1.4, 0.2]}]},
    "flowers": {"inputs": [
        {"name": "sepal_width", "shape": [1], "datatype": "FP64", "data": [3.4]},
        {"name": "petal_length", "shape": [1], "datatype": "FP64", "data": [1.5]},
        {"name": "petal_width", "shape": [1], "datatype": "FP64", "data": [0.2]},
        {"name": "sepal_size", "shape": [1], "datatype": "BYTES", "data": ["small"]}]},
    "reviews": {"inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES",
                            "data": ["a good film", "bad"]}]},
}  # fmt: skip


@pytest.mark.parametrize("model", ["iris", "flowers", "reviews"])
def test_any_json_in_any_field_is_decoded_or_refused_with_a_400(manifests, model: str):
    """The codecs, fed values of every JSON type where the protocol expects one (a list for a
    datatype, an object for a name): each body decodes or raises InvalidInput, the 400, and
    nothing else. The OpenAPI-driven fuzzing above sends only values of the documented type."""
    manifest = manifests[model]
    decode_infer_request(orjson.dumps(VALID[model]), manifest)  # the unmutated body decodes

    @given(data=st.data())
    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(data: st.DataObject) -> None:
        with contextlib.suppress(InvalidInput):
            decode_infer_request(orjson.dumps(mutated(VALID[model], data)), manifest)

    check()
