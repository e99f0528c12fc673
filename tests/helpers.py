"""Helpers more than one test module uses: the chart rendered by real helm, request bodies,
and waiting for a condition. (Test modules do not import each other.)"""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tests.conftest import ROOT

# --- the chart ----------------------------------------------------------------------------

CHART = ROOT / "charts" / "mlscale"
K8S_VERSION = "1.35.0"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
VALUE_SETS = {
    "default": {},
    "autoscaling-off": {"autoscaling": {"enabled": False}, "replicaCount": 3},
    "networkpolicy-from": {
        "networkPolicy": {"enabled": True, "from": [{"namespaceSelector": {}}]},
    },
    "networkpolicy-off": {"networkPolicy": {"enabled": False}},
    "gateway": {
        "gateway": {
            "enabled": True,
            "parentRefs": [{"name": "shared", "namespace": "gateways"}],
            "implementation": "Traefik",
        },
    },
    "model-image": {
        "model": {
            "name": "flowers",
            "version": "2",
            "image": {"repository": "mlscale-model/flowers", "tag": "2"},
        },
    },
    "slim": {
        "image": {"slim": True},
        "model": {
            "name": "flowers",
            "version": "2",
            "others": [],
            "image": {"repository": "mlscale-model/flowers", "tag": "2"},
        },
    },
    "model-set": {"model": {"others": [{"name": "linear", "version": "1"}]}},
    "model-set-images": {
        "model": {
            "name": "flowers",
            "version": "2",
            "image": {"repository": "mlscale-model/flowers", "tag": "2"},
            "others": [
                {
                    "name": "wine",
                    "version": "3",
                    "image": {"repository": "mlscale-model/wine", "tag": "3"},
                }
            ],
        },
    },
    "ingress-on": {
        "ingress": {"enabled": True, "className": "nginx", "tlsSecret": "mlscale-tls"},
    },
    "servicemonitor-on": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "memory-and-pods-metrics": {
        "autoscaling": {
            "targetMemoryUtilizationPercentage": 80,
            "podsMetrics": [{"name": "mlscale_requests_per_second", "averageValue": "50"}],
        },
        "model": {"name": "multilinear", "version": "2", "extraVersions": ["1"]},
    },
}


def run_helm(helm: str, *args: str, values: dict | None = None, tmp_path: Path | None = None):
    cmd = [helm, *args]
    if values:
        assert tmp_path is not None
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def render(helm: str, tmp_path: Path, values: dict, *extra: str) -> list[dict]:
    result = run_helm(helm, "template", "demo", str(CHART), "--namespace", "ml", *extra,
                      values=values, tmp_path=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kubernetes_kinds(docs: list[dict]) -> list[dict]:
    """The objects Kubernetes' own schemas know: not those of CRDs (ServiceMonitor, the
    HTTPRoute, Traefik's Middleware, and our ModelRollout, which the real API server validates
    in test_rollout.py)."""
    crds = ("monitoring.coreos.com/", "mlscale.dev/", "gateway.networking.k8s.io/", "traefik.io/")
    return [d for d in docs if not d["apiVersion"].startswith(crds)]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def server_deployment(docs: list[dict]) -> dict:
    """The model server's Deployment (the other one is the rollout operator's)."""
    component = "app.kubernetes.io/component"
    (found,) = [d for d in by_kind(docs, "Deployment")
                if d["metadata"]["labels"][component] == "model-server"]  # fmt: skip
    return found


def pod_specs(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment")] + [
        d["spec"] for d in by_kind(docs, "Pod")
    ]


# --- request bodies -----------------------------------------------------------------------


def v2(data: list, shape: list[int] | None = None, name: str = "input-0", datatype: str = "FP64",
       **extra: object) -> dict:  # fmt: skip
    """A V2 infer body of one tensor; the shape defaults to rows of four features."""
    shape = shape or [len(data) // 4, 4]
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


def by_column(rows: pd.DataFrame, outputs: list[str]) -> dict:
    """A V2 infer body for the flowers example: one input per column."""

    def datatype(name: str) -> str:
        return "BYTES" if name == "sepal_size" else "FP64"

    inputs = [
        {"name": n, "shape": [len(rows)], "datatype": datatype(n), "data": rows[n].tolist()}
        for n in rows.columns
    ]
    return {"inputs": inputs, "outputs": [{"name": n} for n in outputs]}


# --- waiting ----------------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, every: float = 0.05
) -> None:
    """Poll `condition` until it is true, or fail saying what did not happen in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def cli(*args: str) -> tuple[int, str]:
    """`mlscale ARGS` in-process: its exit code and its output on one line (rich wraps at the
    terminal width)."""
    from typer.testing import CliRunner

    from mlscale.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def breaks_above_two(x: Any) -> Any:
    """A step of a model that is broken for some rows (a bug, not a refusal of the input): a
    FunctionTransformer's function, pickled by this name so a server process can load it."""
    if (x > 2).any():
        raise RuntimeError("a bug in the model's own code")
    return x


class Doubled:
    """A transformer of one's own, as people write them: fit and transform, without
    scikit-learn's input validation, so it sets no `n_features_in_`. Pickled by this name, so
    a server process can load it."""

    def fit(self, x: Any, y: Any = None) -> "Doubled":
        return self

    def transform(self, x: Any) -> Any:
        return x * 2

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {}


class FirstTwo:
    """A transformer of one's own that takes arrays only (it slices columns by position)."""

    def fit(self, x: Any, y: Any = None) -> "FirstTwo":
        return self

    def transform(self, x: Any) -> Any:
        return x[:, :2]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {}
