"""The one route table: each path once, twins sharing a handler, and the router's matching."""

import pytest

from mlscale.service import contract
from mlscale.service.metrics import Metrics
from mlscale.service.rest.endpoints import Endpoints
from mlscale.service.rest.routes import METRICS, SERVER_METADATA, Router, table
from mlscale.service.runtime.dataplane import DataPlane
from mlscale.service.settings import Settings


@pytest.fixture(scope="module")
def router() -> Router:
    settings = Settings()
    metrics = Metrics()
    plane = DataPlane(settings.model, settings.batching, metrics)
    return Router(table(Endpoints(plane, metrics, settings.server.max_body_bytes)))


def test_every_path_is_in_the_table_once(router: Router):
    templates = [t for r in router.routes for t in (r.path, r.twin) if t is not None]
    assert len(templates) == len(set(templates))
    paths = {contract.LIVE, contract.READY, contract.MODEL_METADATA, contract.VERSION_METADATA,
             contract.MODEL_READY, contract.VERSION_READY, contract.INFER, contract.INFER_VERSION,
             contract.V1_PREDICT, contract.V1_MODELS, contract.V1_MODEL_READY,
             contract.SIMPLE_PREDICT, contract.STORE_VERSIONS,
             SERVER_METADATA, METRICS}  # fmt: skip
    assert set(templates) == paths


@pytest.mark.parametrize(
    ("path", "template", "name", "version"),
    [
        ("/v2/models/iris/infer", contract.INFER, "iris", None),
        ("/v2/models/iris/versions/3/infer", contract.INFER_VERSION, "iris", "3"),
        ("/v2/models/iris", contract.MODEL_METADATA, "iris", None),
        ("/v2/models/iris/versions/3", contract.VERSION_METADATA, "iris", "3"),
        ("/v2/models/iris/versions/3/ready", contract.VERSION_READY, "iris", "3"),
        ("/v1/models/iris:predict", contract.V1_PREDICT, "iris", None),
        ("/v1/models/iris", contract.V1_MODEL_READY, "iris", None),
        ("/v1/models", contract.V1_MODELS, "", None),
        ("/mlscale/v1/models/iris/versions", contract.STORE_VERSIONS, "iris", None),
        ("/v2/health/ready", contract.READY, "", None),
        ("/metrics", METRICS, "", None),
    ],
)
def test_a_path_finds_its_template_and_parameters(router, path, template, name, version):
    found = router.match(path)
    assert found is not None and (found[0], found[2], found[3]) == (template, name, version)


def test_a_versioned_path_shares_its_twins_handler(router: Router):
    pairs = [("/v2/models/m/infer", "/v2/models/m/versions/1/infer"),
             ("/v2/models/m", "/v2/models/m/versions/1"),
             ("/v2/models/m/ready", "/v2/models/m/versions/1/ready")]  # fmt: skip
    for plain, versioned in pairs:
        a, b = router.match(plain), router.match(versioned)
        assert a is not None and b is not None and a[1] is b[1]


@pytest.mark.parametrize(
    "path",
    ["/v2/models//infer", "/v2/models/iris/infer/", "/v2/models/iris/versions//infer",
     "/v1/models/iris/x", "/v1/models/iris:predict/x", "/v2/models/iris/versions", "/v3", "/", "",
     "/v2/models/iris/versions/1/infer/x", "/docs"],
)  # fmt: skip
def test_near_misses_find_no_route(router: Router, path: str):
    assert router.match(path) is None
