# mlscale model server, its slim variant (target `slim`: compiled models only), and (target
# `operator`) the rollout controller. Build both with
# `make image` (scripts/build-image.sh), or:
#   DOCKER_BUILDKIT=1 docker build -t mlscale:0.1.0 .
#   DOCKER_BUILDKIT=1 docker build --target operator -t mlscale-operator:0.1.0 .
#   DOCKER_BUILDKIT=1 docker build --target slim -t mlscale:0.1.0-slim .
# BASE_IMAGE may be any Debian-like image with python3 (>= 3.11) and its venv module.
ARG BASE_IMAGE=python:3.12-slim

# The packages' source, copied once for the three builders below (installed by
# scripts/install-code.sh).
FROM scratch AS source
COPY README.md pyproject.toml /src/
COPY scripts/install-code.sh /src/scripts/
COPY mlscale /src/mlscale
COPY service /src/service
COPY rollout /src/rollout
COPY loadtest /src/loadtest

# The slim image's dependencies (the `slim` extra: onnxruntime and numpy, no scikit-learn), a
# layer both server images start from, rebuilt only when the pins change. Left out of
# onnxruntime: its C library for other languages (the Python module links its own copy, 34 MB)
# and its offline tools (quantization, transformer optimizers).
# The CA bundle, where one is passed as a build secret, is used by pip and never stored.
FROM ${BASE_IMAGE} AS slim-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml scripts/requirements.py ./
RUN --mount=type=secret,id=pipcert \
    python3 -m venv /opt/venv \
 && if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python3 requirements.py slim > /tmp/slim.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/slim.txt \
 && ort=$(echo /opt/venv/lib/python3*/site-packages/onnxruntime) \
 && rm -r "$ort"/capi/libonnxruntime.so* "$ort"/transformers "$ort"/quantization "$ort"/tools \
          "$ort"/datasets

# The full server's: the `serve` extra adds scikit-learn, scipy, pandas and joblib.
FROM slim-deps AS builder
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python3 requirements.py serve > /tmp/serve.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/serve.txt
# The installed `mlscale.*` packages; the image installs only the `serve` extra's dependencies,
# and `mlscale rollout` / `mlscale loadtest` there say which extra they need.
COPY --from=source /src/ ./
RUN --mount=type=secret,id=pipcert sh scripts/install-code.sh server
# Two versions of every example model, so rollouts can be shown without a rebuild.
RUN /opt/venv/bin/mlscale train --ensure 2 --model-dir /opt/models \
 && /opt/venv/bin/mlscale models --model-dir /opt/models

# The rollout controller: the `operator` extra only (the Kubernetes client, no scikit-learn).
FROM ${BASE_IMAGE} AS operator-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml scripts/requirements.py ./
RUN --mount=type=secret,id=pipcert \
    python3 -m venv /opt/venv \
 && if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python3 requirements.py operator > /tmp/operator.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/operator.txt
COPY --from=source /src/ ./
RUN --mount=type=secret,id=pipcert sh scripts/install-code.sh operator

FROM ${BASE_IMAGE} AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mlscale-operator" \
      org.opencontainers.image.description="The mlscale rollout controller: reconciles ModelRollouts" \
      org.opencontainers.image.source="https://github.com/mlscale/mlscale" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=operator-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8081
ENTRYPOINT ["python", "-m", "mlscale.rollout.operator"]

# The slim server: compiled versions only (MLSCALE_RUNTIME=onnx), from model images or a
# mounted store; it holds no models and cannot run a joblib file.
FROM slim-deps AS slim-builder
COPY --from=source /src/ ./
RUN --mount=type=secret,id=pipcert sh scripts/install-code.sh server

FROM ${BASE_IMAGE} AS slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mlscale-slim" \
      org.opencontainers.image.description="Open Inference Protocol server for compiled (ONNX) scikit-learn models" \
      org.opencontainers.image.source="https://github.com/mlscale/mlscale" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=slim-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLSCALE_RUNTIME=onnx \
    MLSCALE_MODEL_DIR=/models
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)"]
CMD ["python", "-m", "mlscale.service"]

# The model server (the default target).
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mlscale" \
      org.opencontainers.image.description="Open Inference Protocol server for scikit-learn models" \
      org.opencontainers.image.source="https://github.com/mlscale/mlscale" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      dev.mlscale.models="linear:1,2 multilinear:1,2 iris:1,2"
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/models /opt/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLSCALE_MODEL_DIR=/opt/models \
    MLSCALE_MODEL_NAME=iris \
    MLSCALE_MODEL_VERSION=1
# A fixed non-root user (the chart runs as the same IDs); only /tmp needs to be writable.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)"]
# Exec form: the server is PID 1 and receives SIGTERM itself (it drains, then exits 0).
CMD ["python", "-m", "mlscale.service"]
