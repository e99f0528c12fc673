"""The seams between the server, the operator, the load test and the chart, tested with real
outputs: the names in `service/contract.py` are the ones each side really writes and reads."""

import json
from pathlib import Path

import httpx
import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from mlscale.rollout.analysis import Snapshot
from mlscale.rollout.release import Release, model_image_of, version_of
from mlscale.service import contract
from tests.conftest import ROOT
from tests.helpers import VALUE_SETS, render, server_deployment, v2

ROW = [5.1, 3.5, 1.4, 0.2]


def test_the_operator_reads_the_servers_real_metrics_and_headers(iris):
    """What the canary analysis counts from a real server's /metrics is what it served."""
    with iris.client() as c:
        before = Snapshot()
        before.add_scrape(c.get("/metrics").text)
        for _ in range(5):
            r = c.post(contract.INFER.format(name="iris"), json=v2(ROW))
            assert r.headers[contract.VERSION_HEADER] == "2"
            assert r.headers[contract.MODEL_HEADER] == "iris"
        c.post(contract.INFER_VERSION.format(name="iris", version="1"), json=v2(ROW))
        c.post(contract.V1_PREDICT.format(name="iris"), json={"instances": [ROW]})
        for _ in range(2):  # the client's fault: counted, not an error of the server
            assert c.post(contract.INFER.format(name="iris"), json=v2([1.0])).status_code == 400
        c.get(contract.MODEL_METADATA.format(name="iris"))  # not inference: not counted
        after = Snapshot()
        after.add_scrape(c.get("/metrics").text)
        text = c.get("/metrics").text
    served = after - before
    assert (served.requests, served.errors) == (9, 0)
    # Every route in the table labels its requests with the version that answered.
    labels = {
        (s.labels["endpoint"], s.labels["model"], s.labels["version"], s.labels["code"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == contract.REQUESTS + "_total"
    }
    assert (contract.V1_PREDICT, "iris", "2", "200") in labels
    assert (contract.MODEL_METADATA, "iris", "2", "200") in labels
    assert (contract.INFER, "iris", "2", "400") in labels  # an error names the version too
    assert sum(served.buckets.values()) > 0 and served.quantile(0.99) > 0
    # What the model answered, per label: ROW is a setosa (label 0) for both versions.
    assert served.answers() == {"0": 7}


def test_the_chart_writes_the_names_the_operator_reads(helm: str, tmp_path: Path):
    docs = render(helm, tmp_path, VALUE_SETS["model-image"])
    deployment = server_deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels[contract.COMPONENT_LABEL] == contract.SERVER_COMPONENT
    assert labels[contract.TRACK_LABEL] == "stable" and labels[contract.VERSION_LABEL] == "2"
    assert labels[contract.INSTANCE_LABEL] == "demo"
    annotations = deployment["metadata"]["annotations"]
    assert annotations[contract.MODEL_IMAGE_ANNOTATION] == "mlscale-model/flowers:2"
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["name"] == contract.SERVER_CONTAINER
    assert server["ports"][0]["containerPort"] == contract.SERVER_PORT
    assert pod["initContainers"][0]["name"] == contract.MODEL_CONTAINER
    env = {e["name"] for e in server["env"]}
    assert {contract.MODEL_NAME_ENV, contract.MODEL_VERSION_ENV, contract.MODEL_DIR_ENV} <= env
    assert all(name.startswith(contract.ENV_PREFIX) for name in env)
    # The operator's own reading of the rendered Deployment, through the client's models.
    typed = client.ApiClient().deserialize(json.dumps(deployment), "V1Deployment", None)
    assert version_of(typed) == "2" and model_image_of(typed) == "mlscale-model/flowers:2"
    selector = Release(kube=None, name="demo").selector("stable")  # type: ignore[arg-type]
    wanted = dict(pair.split("=") for pair in selector.split(","))
    assert wanted.items() <= labels.items()


def test_the_chart_and_the_crd_default_to_the_servers_body_limit():
    """server.maxBodyBytes and spec.traffic.maxBodyBytes (the gateway's resend buffer) start
    from the server's own default."""
    chart = ROOT / "charts" / "mlscale"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    assert values["server"]["maxBodyBytes"] == contract.MAX_BODY_BYTES
    crd = yaml.safe_load((chart / "crds" / "modelrollouts.mlscale.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    traffic = spec["properties"]["traffic"]["properties"]
    assert traffic["maxBodyBytes"]["default"] == contract.MAX_BODY_BYTES


def test_the_store_versions_extension_is_where_the_operator_asks(iris):
    body = httpx.get(iris.url + contract.STORE_VERSIONS.format(name="iris")).json()
    assert body["name"] == "iris" and {v["version"] for v in body["versions"]} >= {"1", "2"}
