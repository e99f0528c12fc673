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
