#!/bin/sh
# vllm-router 0.1.17 (pip install vllm-router==0.1.17, the Rust router) in front of
# chatstream-gateway replicas, for the OpenAI routes: deploy/README.md, "Which router".
#
#   WORKERS="http://gateway-1:8000 http://gateway-2:8000" deploy/vllm-router/run-router.sh
#
# Start the replicas with --overload-status 503 (this router retries a 429 on the same
# replica, and fails over only after a 5xx or a connection error) and --replica-id.
# Clients name their conversation in X-Session-ID (or the body's `user`): its first turn
# goes to the replica with the fewest sessions, its next turns to the same one.
#
# Environment: WORKERS (required), HOST (0.0.0.0), PORT (8080), METRICS_PORT (29000),
# PYTHON (the interpreter vllm-router is installed for; python3).
set -eu
: "${WORKERS:?set WORKERS to the replicas base URLs, space-separated}"
PYTHON=${PYTHON:-python3}

# Another project installs a `vllm-router` command too: run this package, at this version.
"$PYTHON" - <<'CHECK'
import importlib.metadata
import sys

found = importlib.metadata.version("vllm-router")
if found != "0.1.17":
    sys.exit(f"this configuration is for vllm-router 0.1.17, found {found}")
import vllm_router_rs  # noqa: F401  (the Rust router itself)
CHECK

# shellcheck disable=SC2086  # WORKERS is a space-separated list
exec "$PYTHON" -m vllm_router.launch_router \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8080}" \
    --worker-urls $WORKERS \
    --policy sticky_least_loaded \
    --health-check-endpoint /ready \
    --health-check-interval-secs 5 \
    --health-failure-threshold 1 \
    --health-success-threshold 1 \
    --retry-max-retries 3 \
    --retry-initial-backoff-ms 50 \
    --retry-max-backoff-ms 500 \
    --cb-failure-threshold 1 \
    --cb-success-threshold 1 \
    --cb-timeout-duration-secs 1 \
    --request-timeout-secs 3600 \
    --prometheus-host 127.0.0.1 \
    --prometheus-port "${METRICS_PORT:-29000}" \
    --log-level warning \
    "$@"
