"""The names the server, the rollout operator, the load test and the chart agree on, defined once.

Dependency-free: `rollout/` and `loadtest/` import this module without the server's runtime.
The chart (YAML) cannot import it; `tests/test_contract.py` checks the chart against it.
"""

import math
from typing import Any

# --- HTTP routes (templates, as the request metrics label them) ------------------------------
LIVE = "/v2/health/live"
READY = "/v2/health/ready"
MODEL_METADATA = "/v2/models/{name}"
VERSION_METADATA = "/v2/models/{name}/versions/{version}"
MODEL_READY = "/v2/models/{name}/ready"
VERSION_READY = "/v2/models/{name}/versions/{version}/ready"
INFER = "/v2/models/{name}/infer"
INFER_VERSION = "/v2/models/{name}/versions/{version}/infer"
V1_PREDICT = "/v1/models/{name}:predict"
V1_MODELS = "/v1/models"
V1_MODEL_READY = "/v1/models/{name}"
SIMPLE_PREDICT = "/predict"
# mlscale extension: every version in a server's store, with offline metrics (the quality gate).
STORE_VERSIONS = "/mlscale/v1/models/{name}/versions"
INFER_ENDPOINTS = (INFER, INFER_VERSION, V1_PREDICT, SIMPLE_PREDICT)

# The largest request body a server takes by default (MLSCALE_MAX_BODY_BYTES); the gateway's
# resend buffer is sized from it (spec.traffic.maxBodyBytes).
MAX_BODY_BYTES = 8 * 1024 * 1024

# The Open Inference Protocol's tensor datatypes.
INTEGER_TYPES = frozenset(f"{p}{b}" for p in ("INT", "UINT") for b in (8, 16, 32, 64))
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
NUMERIC_TYPES = INTEGER_TYPES | FLOAT_TYPES  # the ones that can carry numbers
DATATYPES = NUMERIC_TYPES | {"BOOL", "BYTES"}

# Response headers naming the version that answered (lower case, as HTTP/1.1 servers send).
MODEL_HEADER = "x-model-name"
VERSION_HEADER = "x-model-version"

# --- Prometheus metrics ------------------------------------------------------------------------
REQUESTS = "mlscale_requests"  # a counter: exposed as mlscale_requests_total
LATENCY = "mlscale_request_duration_seconds"  # a histogram
REQUEST_LABELS = ("endpoint", "model", "version", "code")
# A gauge: inference requests being handled now.
IN_FLIGHT = "mlscale_requests_in_flight"
# The HPA's request metric, served by prometheus-adapter (k8s/prometheus.yaml): inference
# requests answered per second per pod, over 15 s.
REQUEST_RATE = "mlscale_requests_per_second"
# What the models answered (their `predict` output), for comparing a canary's answers with
# stable's: class counts for classifiers, a histogram of values for regressors.
PREDICTIONS = "mlscale_predictions"  # a counter by model, version and label
PREDICTION_VALUES = "mlscale_prediction_value"  # a histogram by model and version
PREDICTION_BUCKETS_ENV = "MLSCALE_PREDICTION_BUCKETS"
# The status of a request whose input the model refused (errors.ModelRefused). The rollout's
# analysis counts it against the version, with the server's failures: a canary that refuses
# what clients send is as broken for them as one that fails.
MODEL_REFUSED = 422


def failed(code: str) -> bool:
    """Whether a request's status code (a metric label) counts against the version."""
    return code.startswith("5") or code == str(MODEL_REFUSED)


# --- Kubernetes labels and annotations (the chart writes them; the operator reads them) -------
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
SERVER_COMPONENT = "model-server"
TRACK_LABEL = "mlscale.dev/track"  # stable | canary
VERSION_LABEL = "mlscale.dev/model-version"  # label and annotation
MODEL_IMAGE_ANNOTATION = "mlscale.dev/model-image"
# On a pod template: the other models of the set and their versions, as in MODELS_ENV.
MODELS_ANNOTATION = "mlscale.dev/models"
SERVER_CONTAINER = "server"
MODEL_CONTAINER = "model"  # the init container that copies a model image's version
SERVER_PORT = 8080

# --- Environment -------------------------------------------------------------------------------
ENV_PREFIX = "MLSCALE_"
MODEL_NAME_ENV = "MLSCALE_MODEL_NAME"
MODEL_VERSION_ENV = "MLSCALE_MODEL_VERSION"
MODEL_DIR_ENV = "MLSCALE_MODEL_DIR"
# More models one server serves beside MODEL_NAME_ENV's: `name:version,name:version`.
MODELS_ENV = "MLSCALE_MODELS"
# Which runtime runs a version: `onnx` (the slim image) serves compiled versions only.
RUNTIME_ENV = "MLSCALE_RUNTIME"
SETTINGS_ENV = "MLSCALE_SETTINGS_JSON"  # the serialized settings uvicorn's workers start from
DOCKER_ENV = "MLSCALE_DOCKER"  # the container engine's CLI, for model images
# Set by `mlscale loadtest` and `mlscale operator` for the program each starts, so that its
# help names the command that was typed.
PROG_ENV = "MLSCALE_PROG"

# --- Model images --------------------------------------------------------------------------------
MANIFEST_LABEL = "dev.mlscale.manifest"  # the version's manifest, as JSON


def parse_models(text: str) -> dict[str, str]:
    """MODELS_ENV's value as {name: version}; a name alone means its latest version."""
    models: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, version = entry.partition(":")
        models[name.strip()] = version.strip() or "latest"
    return models


def format_models(models: dict[str, str]) -> str:
    """{name: version} as MODELS_ENV's value, in the order given."""
    return ",".join(f"{name}:{version}" for name, version in models.items())


# --- What a client sends a model it knows only from its metadata -------------------------------


def example_request(meta: dict[str, Any], rows: int = 1) -> dict[str, Any]:
    """A V2 infer body of `rows` rows built from a model's metadata (GET /v2/models/{name}):
    every input, each row the training row recorded at publish where there is one, else zeros
    (empty strings for BYTES: a text model's empty document). What `mlscale check` and the
    load test send."""
    example = meta.get("parameters", {}).get("example") or {}
    inputs = []
    for spec in meta["inputs"]:
        shape = [rows, *spec["shape"][1:]]
        if spec["name"] in example:
            data = [example[spec["name"]]] * rows
        else:
            data = ["" if spec["datatype"] == "BYTES" else 0] * math.prod(shape)
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"],
                       "data": data})  # fmt: skip
    return {"inputs": inputs}
