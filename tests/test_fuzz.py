"""Property-based fuzzing from the server's own OpenAPI spec: no input may cause a 5xx.

Driven through schemathesis' Python API (its pytest plugin does not support pytest 9).
"""

from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.conftest import run_server
from tests.test_server import metric


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
                      database=None)  # fmt: skip
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=[not_a_server_error])

            check()

        # The fuzzer really reached the hot path, with answers both good and refused.
        text = httpx.get(server.url + "/metrics").text
        infer = {"endpoint": "/v2/models/{name}/infer"}
        assert metric(text, "mlscale_requests_total", **infer, code="400") > 10
        assert (
            sum(metric(text, "mlscale_requests_total", **infer, code=c) for c in ("200", "404")) > 0
        )
