#!/usr/bin/env bash
# The local demo: train the example models, serve iris (versions 2 and 1), send real
# predictions over HTTP, print them, stop the server gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PORT=${PORT:-8080}
URL="http://127.0.0.1:$PORT"

"$BIN/mlscale" train --ensure 2
"$BIN/mlscale" models

MLSCALE_PORT=$PORT MLSCALE_MODEL_NAME=iris MLSCALE_MODEL_VERSION=2 MLSCALE_EXTRA_VERSIONS=1 \
  MLSCALE_LOG_LEVEL=warning "$BIN/python" -m mlscale.service &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT

echo
echo "== iris v2 (default version): two flowers, labels and probabilities"
"$BIN/mlscale" infer iris "[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]" \
  --output predict --output predict_proba --url "$URL" --wait 30
echo "== iris v1, by its versioned path"
"$BIN/mlscale" infer iris "[[6.0, 2.7, 5.1, 1.6]]" --version 1 --url "$URL"
echo "== KServe v1 style"
"$BIN/python" - "$URL" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v1/models/iris:predict",
                             json.dumps({"instances": [[5.9, 3.0, 4.2, 1.5]]}).encode(),
                             {"Content-Type": "application/json"})
with urllib.request.urlopen(req) as r:
    print(r.headers["x-model-version"], r.read().decode())
PY
if [ -n "${WITH_LOADTEST:-}" ]; then
  echo
  echo "== a stepped load test against it (about 45 s), with a report"
  "$BIN/python" -m mlscale.loadtest --url "$URL" --model iris --users 20 --steps 4 --step-seconds 6 \
    --hold-seconds 15 --down-seconds 5 --sample-seconds 1
fi
echo
echo "Server was at $URL (docs: $URL/docs, metrics: $URL/metrics); stopping it now."
