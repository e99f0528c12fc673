#!/bin/sh
# Inside an image build: install the mlscale packages from /src into /opt/venv, whose stage
# installed their dependencies already, then drop what a running image never needs.
#   install-code.sh server     the model servers: also drops model-image building (a container
#                              engine's work, not serving) and the dependencies' test suites
#   install-code.sh operator   the rollout controller
set -eu
if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi
/opt/venv/bin/pip install --no-cache-dir --no-deps .
/opt/venv/bin/pip uninstall --yes pip setuptools
if [ "$1" = server ]; then
  find /opt/venv -depth -type d -name tests -path '*site-packages/*' -exec rm -rf {} +
  rm /opt/venv/lib/python3*/site-packages/mlscale/service/artifacts/package.py \
     /opt/venv/lib/python3*/site-packages/mlscale/service/artifacts/engine.py
fi
/opt/venv/bin/python -m compileall -q /opt/venv
